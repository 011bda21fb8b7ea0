package api

import (
	"context"
	"net/http/httptest"
	"testing"
)

// benchFlows streams its flows as a kernel dump does: one reused Item.
type benchFlows struct{ *fakeFlows }

func (b *benchFlows) List(ctx context.Context, src Source, f Filter, fn func(*Item) error) error {
	ff := f.(*fakeFilter)
	var it Item
	for i := range b.flows {
		if !ff.match(&b.flows[i]) {
			continue
		}
		it.Flow = &b.flows[i]
		if err := fn(&it); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkPage1M: one sorted page deep into a million flows (the console's
// table), the handler's cost without the kernel dump: a pass over the
// flows keeping offset+limit of them.
func BenchmarkPage1M(b *testing.B) {
	fx := &benchFlows{fakeFlows: &fakeFlows{flows: testFlows(1 << 20)}}
	h := New(Options{Tokens: []Token{NewToken("viewer", RoleRead, readSecret)}, Flows: fx, Status: fakeStatus{}, Actions: &fakeActions{}})
	for _, q := range []string{"sort=src&limit=50", "sort=dport&order=desc&offset=10000&limit=100", "proto=udp&sort=timeout&offset=100000&limit=1000"} {
		b.Run(q, func(b *testing.B) {
			for b.Loop() {
				r := httptest.NewRequest("GET", "/api/v1/flows/page?"+q, nil)
				r.Header.Set("Authorization", "Bearer "+readSecret)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != 200 {
					b.Fatal(w.Code, w.Body)
				}
			}
		})
	}
}
