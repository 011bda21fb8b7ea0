package api

import (
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzParseQuery: any query string parses or fails with a *ParamError
// naming a parameter of the query; a parsed page stays within its limits.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{"", "source=external&proto=tcp", "sort=dport&order=desc&offset=10&limit=5",
		"limit=0", "offset=100001", "source=kernel&source=kernel", "sort=%zz", "limit=99999999999999999999"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, raw string, paged bool) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		got, err := ParseQuery(q, paged)
		if err != nil {
			var pe *ParamError
			if !errors.As(err, &pe) {
				t.Fatalf("%q: error %v is not a ParamError", raw, err)
			}
			if _, ok := q[pe.Param]; !ok {
				t.Fatalf("%q: error names %q, not in the query", raw, pe.Param)
			}
			return
		}
		if !slices.Contains(Sources, got.Source) {
			t.Fatalf("%q: source %q", raw, got.Source)
		}
		if paged && (got.Limit < 1 || got.Limit > MaxPageLimit || got.Offset < 0 || got.Offset > MaxPageOffset || !slices.Contains(SortKeys, got.Sort)) {
			t.Fatalf("%q: page out of limits: %+v", raw, got)
		}
		for k := range got.Filter {
			if slices.Contains(apiParams, k) {
				t.Fatalf("%q: API parameter %q left in the filter", raw, k)
			}
		}
	})
}

// FuzzParseTokens: any tokens file parses or fails with errors that name
// the file; parsed tokens are unique and have a role.
func FuzzParseTokens(f *testing.F) {
	f.Add("ops admin " + adminSecret + "\nviewer read " + readSecret + "\n")
	f.Add("# comment\n\n a  read   0123456789abcdef0\n")
	f.Add("x admin y\n")
	f.Fuzz(func(t *testing.T, text string) {
		toks, err := ParseTokens("tokens", []byte(text))
		if err != nil {
			if !errors.Is(err, ErrTokens) || !strings.Contains(err.Error(), "tokens") {
				t.Fatalf("error %v", err)
			}
			return
		}
		names := map[string]bool{}
		for _, tk := range toks {
			if tk.Role != RoleRead && tk.Role != RoleAdmin || names[tk.Name] || tk.Name == "" {
				t.Fatalf("token %+v", tk)
			}
			names[tk.Name] = true
		}
	})
}

// FuzzParseFlowFilter: any query parses into a filter or fails with a
// *ParamError naming one of its parameters; a parsed filter prints and
// matches without panicking, and an empty query is an empty filter.
func FuzzParseFlowFilter(f *testing.F) {
	for _, s := range []string{"", "proto=tcp&dport=22", "src=10.0.0.0/8&origin=fw-b", "state=ESTABLISHED,TIME_WAIT",
		"mark=0x10/0xff&zone=3", "proto=icmp&dport=1", "src=10.0.0.1&dst=::1", "origin=a&origin=b", "reply_src=1.2.3.4"} {
		f.Add(s)
	}
	flows := testFlows(20)
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		ff, err := ParseFlowFilter(q)
		if err != nil {
			var pe *ParamError
			if !errors.As(err, &pe) {
				t.Fatalf("%q: %v is not a ParamError", raw, err)
			}
			if _, ok := q[pe.Param]; !ok && pe.Param != "filter" {
				t.Fatalf("%q: error %v names %q, not in the query", raw, err, pe.Param)
			}
			return
		}
		if len(q) == 0 && !ff.Empty() {
			t.Fatalf("empty query, filter %s", ff)
		}
		_ = ff.String()
		for i := range flows {
			ff.Match(&flows[i], "fw-b")
		}
	})
}
