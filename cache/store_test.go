package cache

import (
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

func TestStoreReusesSlots(t *testing.T) {
	s := newStore()
	const n = 3 * chunkLen
	for i := range n {
		f := tcp(i, flow.TCPEstablished, uint32(i))
		f.Orig.Src[2] = byte(i >> 8)
		s.add(f.Key).set(&f)
	}
	// Delete every other entry while iterating.
	s.each(func(k flow.Key, e *entry) {
		if e.Timeout%2 == 1 {
			s.del(k)
		}
	})
	if s.len() != n/2 {
		t.Fatalf("len %d, want %d", s.len(), n/2)
	}
	chunks := len(s.chunks)
	for i := n; i < n+n/2; i++ {
		f := tcp(i, flow.TCPSynSent, uint32(i))
		f.Orig.Src[2] = byte(i >> 8)
		s.add(f.Key).set(&f)
	}
	if len(s.chunks) != chunks {
		t.Errorf("freed slots not reused: %d chunks, was %d", len(s.chunks), chunks)
	}
	seen := 0
	s.each(func(k flow.Key, e *entry) {
		f := e.flow(k)
		want := tcp(int(f.Timeout), flow.TCPEstablished, f.Timeout)
		if f.Timeout >= n {
			want.TCP.State = flow.TCPSynSent
		}
		want.Orig.Src[2] = byte(f.Timeout >> 8)
		if !f.Equal(&want) {
			t.Fatalf("entry %d: got %s, want %s", f.Timeout, f.String(), want.String())
		}
		seen++
	})
	if seen != n {
		t.Errorf("%d entries, want %d", seen, n)
	}
}
