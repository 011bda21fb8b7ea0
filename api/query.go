package api

import (
	"bytes"
	"cmp"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Paging limits of GET /api/v1/flows/page: the page is chosen in one pass
// over the table keeping at most offset+limit flows.
const (
	MaxPageLimit  = 1000
	MaxPageOffset = 100000
	defaultLimit  = 50
)

// SortKeys are the columns a page can be sorted by.
var SortKeys = []string{"family", "proto", "src", "dst", "sport", "dport", "state", "mark", "zone", "timeout", "origin", "idle"}

// Query is what the API itself reads from a flow query; the rest is the
// filter, parsed by Flows.ParseFilter.
type Query struct {
	Source Source
	Sort   string
	Desc   bool
	Offset int
	Limit  int // 0: no limit (listings)
	Filter url.Values
}

// apiParams are the parameters Query takes out of a query.
var apiParams = []string{"source", "sort", "order", "offset", "limit"}

// ParseQuery splits q into the API's parameters and the filter's. paged is
// true for /flows/page (sort, order, offset, limit) and false for the
// NDJSON listing (limit only). Every problem is a *ParamError.
func ParseQuery(q url.Values, paged bool) (Query, error) {
	out := Query{Source: SourceKernel, Filter: url.Values{}}
	if paged {
		out.Limit = defaultLimit
		out.Sort = "src"
	}
	for k, vs := range q {
		if !slices.Contains(apiParams, k) {
			out.Filter[k] = vs
		}
	}
	one := func(k string) (string, bool, error) {
		vs, ok := q[k]
		if !ok {
			return "", false, nil
		}
		if len(vs) != 1 {
			return "", false, &ParamError{Param: k, Problem: fmt.Sprintf("given %d times; give it once", len(vs))}
		}
		return vs[0], true, nil
	}
	num := func(k string, lo, hi int) (int, bool, error) {
		s, ok, err := one(k)
		if err != nil || !ok {
			return 0, ok, err
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < lo || n > hi {
			return 0, false, &ParamError{Param: k, Problem: fmt.Sprintf("%.40q is not a number %d..%d", s, lo, hi)}
		}
		return n, true, nil
	}
	if s, ok, err := one("source"); err != nil {
		return out, err
	} else if ok {
		if !slices.Contains(Sources, Source(s)) {
			return out, &ParamError{Param: "source", Problem: fmt.Sprintf("%.40q is not one of kernel, internal, external", s)}
		}
		out.Source = Source(s)
	}
	if !paged {
		for _, k := range []string{"sort", "order", "offset"} {
			if _, ok := q[k]; ok {
				return out, &ParamError{Param: k, Problem: "only GET /api/v1/flows/page sorts and pages; the NDJSON listing streams the table in its order"}
			}
		}
		if n, ok, err := num("limit", 1, 1<<31-1); err != nil {
			return out, err
		} else if ok {
			out.Limit = n
		}
		return out, nil
	}
	if s, ok, err := one("sort"); err != nil {
		return out, err
	} else if ok {
		if !slices.Contains(SortKeys, s) {
			return out, &ParamError{Param: "sort", Problem: fmt.Sprintf("%.40q is not one of %s", s, strings.Join(SortKeys, ", "))}
		}
		out.Sort = s
	}
	if s, ok, err := one("order"); err != nil {
		return out, err
	} else if ok {
		switch s {
		case "asc":
		case "desc":
			out.Desc = true
		default:
			return out, &ParamError{Param: "order", Problem: fmt.Sprintf("%.40q is not asc or desc", s)}
		}
	}
	if n, ok, err := num("offset", 0, MaxPageOffset); err != nil {
		return out, err
	} else if ok {
		out.Offset = n
	}
	if n, ok, err := num("limit", 1, MaxPageLimit); err != nil {
		return out, err
	} else if ok {
		out.Limit = n
	}
	return out, nil
}

// row is a flow kept for a page.
type row struct {
	f      flow.Flow
	origin string
	idle   int64
}

func copyItem(it *Item) row {
	r := row{f: *it.Flow, origin: it.Origin, idle: int64(it.Idle)}
	if it.Flow.Extra != nil {
		x := *it.Flow.Extra
		r.f.Extra = &x
	}
	return r
}

// cmpKey orders flows by their identity, the tie-breaker of every sort.
func cmpKey(a, b *flow.Flow) int {
	return cmp.Or(
		cmp.Compare(a.Family, b.Family),
		cmp.Compare(a.Proto, b.Proto),
		bytes.Compare(a.Orig.Src[:], b.Orig.Src[:]),
		bytes.Compare(a.Orig.Dst[:], b.Orig.Dst[:]),
		cmp.Compare(a.Orig.SrcPort, b.Orig.SrcPort),
		cmp.Compare(a.Orig.DstPort, b.Orig.DstPort),
		cmp.Compare(a.Zone, b.Zone),
	)
}

// rowCompare returns the comparison for a sort key and order.
func rowCompare(key string, desc bool) func(a, b *row) int {
	var primary func(a, b *row) int
	switch key {
	case "family":
		primary = func(a, b *row) int { return cmp.Compare(a.f.Family, b.f.Family) }
	case "proto":
		primary = func(a, b *row) int { return cmp.Compare(a.f.Proto, b.f.Proto) }
	case "src":
		primary = func(a, b *row) int {
			return cmp.Or(cmp.Compare(a.f.Family, b.f.Family), bytes.Compare(a.f.Orig.Src[:], b.f.Orig.Src[:]))
		}
	case "dst":
		primary = func(a, b *row) int {
			return cmp.Or(cmp.Compare(a.f.Family, b.f.Family), bytes.Compare(a.f.Orig.Dst[:], b.f.Orig.Dst[:]))
		}
	case "sport":
		primary = func(a, b *row) int { return cmp.Compare(a.f.Orig.SrcPort, b.f.Orig.SrcPort) }
	case "dport":
		primary = func(a, b *row) int { return cmp.Compare(a.f.Orig.DstPort, b.f.Orig.DstPort) }
	case "state":
		primary = func(a, b *row) int { return cmp.Compare(a.f.TCP.State, b.f.TCP.State) }
	case "mark":
		primary = func(a, b *row) int { return cmp.Compare(a.f.Mark, b.f.Mark) }
	case "zone":
		primary = func(a, b *row) int { return cmp.Compare(a.f.Zone, b.f.Zone) }
	case "timeout":
		primary = func(a, b *row) int { return cmp.Compare(a.f.Timeout, b.f.Timeout) }
	case "origin":
		primary = func(a, b *row) int { return strings.Compare(a.origin, b.origin) }
	case "idle":
		primary = func(a, b *row) int { return cmp.Compare(a.idle, b.idle) }
	default:
		primary = func(a, b *row) int { return 0 }
	}
	return func(a, b *row) int {
		c := cmp.Or(primary(a, b), cmpKey(&a.f, &b.f))
		if desc {
			return -c
		}
		return c
	}
}

// topK keeps the k smallest rows by less, in a max-heap, so that a page
// deep into a million flows costs one pass and k rows of memory.
type topK struct {
	k     int
	cmp   func(a, b *row) int
	h     []row
	total int
}

func (t *topK) add(it *Item) {
	t.total++
	if t.k == 0 {
		return
	}
	if len(t.h) < t.k {
		t.h = append(t.h, copyItem(it))
		t.up(len(t.h) - 1)
		return
	}
	cand := row{f: *it.Flow, origin: it.Origin, idle: int64(it.Idle)}
	if t.cmp(&cand, &t.h[0]) >= 0 {
		return
	}
	t.h[0] = copyItem(it)
	t.down(0)
}

func (t *topK) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if t.cmp(&t.h[i], &t.h[p]) <= 0 {
			return
		}
		t.h[i], t.h[p] = t.h[p], t.h[i]
		i = p
	}
}

func (t *topK) down(i int) {
	n := len(t.h)
	for {
		l, big := 2*i+1, i
		if l < n && t.cmp(&t.h[l], &t.h[big]) > 0 {
			big = l
		}
		if r := l + 1; r < n && t.cmp(&t.h[r], &t.h[big]) > 0 {
			big = r
		}
		if big == i {
			return
		}
		t.h[i], t.h[big] = t.h[big], t.h[i]
		i = big
	}
}

// sorted returns the kept rows in order.
func (t *topK) sorted() []row {
	slices.SortFunc(t.h, func(a, b row) int { return t.cmp(&a, &b) })
	return t.h
}
