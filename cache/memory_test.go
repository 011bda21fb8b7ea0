package cache

import (
	"runtime"
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

// BenchmarkInternalMemory reports the heap bytes per cached flow
// (bytes/flow) for a cache of b.N... flows of a typical mix: run it with
// -benchtime=1000000x for a million flows.
func BenchmarkInternalMemory(b *testing.B) {
	flows := make([]flow.Flow, 0, b.N)
	for i := range b.N {
		f := manyTCP(i, flow.TCPEstablished, 432000)
		flows = append(flows, f)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c := NewInternal(nil)
	c.DisableChanges()
	b.ResetTimer()
	for i := range flows {
		c.Upsert(&flows[i])
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if c.Len() != b.N {
		b.Fatalf("%d flows cached, want %d", c.Len(), b.N)
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(b.N), "bytes/flow")
	runtime.KeepAlive(c)
	runtime.KeepAlive(flows) // else its freeing is subtracted from the cache
}
