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
