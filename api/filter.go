package api

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"

	"github.com/ctsyncd/ctsyncd/conntrack"
	"github.com/ctsyncd/ctsyncd/flow"
)

// FlowFilter is the filter of a flow query: the conntrack package's Filter,
// plus the origin of a replicated flow (the node it came from), which only
// the external cache knows.
type FlowFilter struct {
	CT     conntrack.Filter
	Origin string
}

// Empty reports whether f selects every flow.
func (f *FlowFilter) Empty() bool { return f.CT.IsZero() && f.Origin == "" }

// String renders f as conntrack(8) options, for logs.
func (f *FlowFilter) String() string {
	s := strings.Join(f.CT.Args(), " ")
	if f.Origin != "" {
		s = strings.TrimSpace(s + " origin=" + f.Origin)
	}
	return s
}

// Match reports whether fl, replicated from origin ("" for local flows),
// is selected.
func (f *FlowFilter) Match(fl *flow.Flow, origin string) bool {
	if f.Origin != "" && origin != f.Origin {
		return false
	}
	return f.CT.Match(fl)
}

// ParseFlowFilter parses the filter parameters of a query with the
// conntrack package's key=value parser (proto, src, dst, sport, dport,
// state, mark, zone, status, reply-src, ...), plus origin. Errors are
// *ParamError naming the parameter as the query spelled it.
func ParseFlowFilter(q url.Values) (*FlowFilter, error) {
	var f FlowFilter
	rest := url.Values{}
	for k, vs := range q {
		if k != "origin" {
			rest[k] = vs
			continue
		}
		if len(vs) != 1 {
			return nil, &ParamError{Param: k, Problem: "given twice"}
		}
		o := vs[0]
		if o == "" || len(o) > 64 || strings.IndexFunc(o, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0 {
			return nil, &ParamError{Param: k, Problem: fmt.Sprintf("%.70q is not a node name", o)}
		}
		f.Origin = o
	}
	ct, err := conntrack.ParseFilterValues(rest)
	if err != nil {
		var oe *conntrack.OptionError
		if !errors.As(err, &oe) {
			return nil, &ParamError{Param: "filter", Problem: err.Error()}
		}
		param := oe.Option
		if canon, ok := conntrack.FilterOptionName(param); ok {
			for k := range rest { // name it as the query did (src, not --orig-src)
				if c, _ := conntrack.FilterOptionName(k); c == canon {
					param = k
				}
			}
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, param) {
			msg = param + ": " + msg
		}
		return nil, &ParamError{Param: param, Problem: strings.TrimPrefix(strings.TrimPrefix(msg, param), ": ")}
	}
	f.CT = ct
	return &f, nil
}
