package cache

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// extTable prints the external cache as sorted text: "origin port state".
func extTable(c *External) string {
	var lines []string
	for _, e := range c.Snapshot() {
		lines = append(lines, fmt.Sprintf("%s %d %s", e.Origin, e.Flow.Orig.SrcPort, flow.TCPStateName(e.Flow.TCP.State)))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func TestExternalApplyDelete(t *testing.T) {
	c := NewExternal()
	now := time.Unix(1000, 0)
	c.Apply("a", Change{Flow: tcp(1, flow.TCPEstablished, 100), Idle: 2 * time.Second}, now)
	c.Apply("a", Change{Flow: tcp(2, flow.TCPSynSent, 100)}, now)
	c.Apply("b", Change{Flow: tcp(1, flow.TCPEstablished, 100)}, now)
	c.Apply("a", Change{Flow: tcp(2, flow.TCPEstablished, 100)}, now)
	if got, want := extTable(c), "a 1001 ESTABLISHED\na 1002 ESTABLISHED\nb 1001 ESTABLISHED"; got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}
	c.Apply("a", Change{Flow: flow.Flow{Key: tcp(2, 0, 0).Key}, Deleted: true}, now)
	c.Delete("b", tcp(1, 0, 0).Key)
	c.Delete("nobody", tcp(1, 0, 0).Key)
	if got, want := extTable(c), "a 1001 ESTABLISHED"; got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}
	e, ok := c.Get("a", tcp(1, 0, 0).Key)
	if !ok {
		t.Fatal("Get: missing")
	}
	if e.Received != now || e.IdleAt < 2*time.Second {
		t.Errorf("entry: received %v idle %v", e.Received, e.IdleAt)
	}
	want := tcp(1, flow.TCPEstablished, 100)
	if !e.Flow.Equal(&want) {
		t.Errorf("flow %+v, want %+v", e.Flow, want)
	}
	if got := c.Origins(); !slices.Equal(got, []string{"a"}) {
		t.Errorf("Origins = %v", got)
	}
}

func TestExternalBulk(t *testing.T) {
	c := NewExternal()
	now := time.Now()
	for i := range 5 {
		c.Apply("a", Change{Flow: tcp(i, flow.TCPEstablished, 100)}, now)
		c.Apply("b", Change{Flow: tcp(i, flow.TCPEstablished, 100)}, now)
	}
	c.BeginBulk("a", 7)
	c.Apply("a", Change{Flow: tcp(1, flow.TCPEstablished, 100)}, now)
	c.Apply("a", Change{Flow: tcp(3, flow.TCPFinWait, 100)}, now)
	c.Apply("a", Change{Flow: tcp(9, flow.TCPEstablished, 100)}, now)
	if n := c.EndBulk("a", 8); n != 0 {
		t.Fatalf("EndBulk with another epoch removed %d", n)
	}
	if n := c.EndBulk("a", 7); n != 3 {
		t.Fatalf("EndBulk removed %d, want 3", n)
	}
	if n := c.EndBulk("a", 7); n != 0 {
		t.Fatalf("second EndBulk removed %d", n)
	}
	want := "a 1001 ESTABLISHED\na 1003 FIN_WAIT\na 1009 ESTABLISHED\n" +
		"b 1000 ESTABLISHED\nb 1001 ESTABLISHED\nb 1002 ESTABLISHED\nb 1003 ESTABLISHED\nb 1004 ESTABLISHED"
	if got := extTable(c); got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}
	// An abandoned bulk: the second BeginBulk wins.
	c.BeginBulk("b", 1)
	c.Apply("b", Change{Flow: tcp(0, flow.TCPEstablished, 100)}, now)
	c.BeginBulk("b", 2)
	c.Apply("b", Change{Flow: tcp(1, flow.TCPEstablished, 100)}, now)
	if n := c.EndBulk("b", 2); n != 4 {
		t.Fatalf("EndBulk removed %d, want 4", n)
	}
	if c.Len() != 4 {
		t.Fatalf("Len = %d", c.Len())
	}
}

func TestExternalTakeRemoveFlush(t *testing.T) {
	c := NewExternal()
	now := time.Now()
	for i := range 4 {
		c.Apply("a", Change{Flow: tcp(i, flow.TCPEstablished, 100)}, now)
	}
	c.Apply("b", Change{Flow: tcp(0, flow.TCPEstablished, 100)}, now)
	got := c.Take([]flow.Key{tcp(0, 0, 0).Key, tcp(7, 0, 0).Key})
	if len(got) != 2 {
		t.Fatalf("Take returned %d entries, want 2", len(got))
	}
	if n := c.Remove([]flow.Key{tcp(1, 0, 0).Key}); n != 1 {
		t.Fatalf("Remove = %d", n)
	}
	if n := c.Flush("a"); n != 2 {
		t.Fatalf("Flush(a) = %d", n)
	}
	c.Apply("b", Change{Flow: tcp(5, flow.TCPEstablished, 100)}, now)
	if n := c.Flush(""); n != 1 {
		t.Fatalf("Flush() = %d", n)
	}
	if c.Len() != 0 || len(c.Origins()) != 0 {
		t.Fatalf("not empty: %d %v", c.Len(), c.Origins())
	}
}

// BenchmarkExternalMemory reports the heap bytes per cached flow.
func BenchmarkExternalMemory(b *testing.B) {
	const flows = 100000
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		c := NewExternal()
		now := time.Now()
		for i := range flows {
			f := manyTCP(i, flow.TCPEstablished, 100)
			if i%5 == 0 {
				f.Reply.Dst[3]++ // NATed: the reply tuple is kept
			}
			c.Apply("a", Change{Flow: f}, now)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if c.Len() != flows {
			b.Fatalf("%d flows", c.Len())
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/flows, "bytes/flow")
		runtime.KeepAlive(c)
	}
}

func TestExternalLeastIdle(t *testing.T) {
	c := NewExternal()
	now := time.Now()
	for i := range 1000 {
		f := tcp(i, flow.TCPEstablished, 600)
		f.Orig.Src[2] = byte(i >> 8)
		// Idleness 1000-i seconds: the last ones are the least idle.
		c.Apply("a", Change{Flow: f, Idle: time.Duration(1000-i) * time.Second}, now)
	}
	got := c.LeastIdle(5)
	if len(got) != 5 {
		t.Fatalf("%d entries", len(got))
	}
	for j, e := range got {
		if want := uint16(1000 + 999 - j); e.Flow.Orig.SrcPort != want {
			t.Errorf("entry %d: port %d (idle %v), want %d", j, e.Flow.Orig.SrcPort, e.IdleAt, want)
		}
	}
	if c.Len() != 1000 {
		t.Errorf("LeastIdle changed the cache: %d", c.Len())
	}
	if n := len(c.LeastIdle(5000)); n != 1000 {
		t.Errorf("LeastIdle(5000) = %d entries", n)
	}
}

// BenchmarkExternalLeastIdle is the time a failover waits before it can
// write its first chunk: one pass over the cache, no copy of it.
func BenchmarkExternalLeastIdle(b *testing.B) {
	for _, n := range []int{100000, 1000000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			c := NewExternal()
			now := time.Now()
			for i := range n {
				f := tcp(i, flow.TCPEstablished, 600)
				f.Orig.Src[1], f.Orig.Src[2] = byte(i>>16), byte(i>>8)
				c.Apply("a", Change{Flow: f, Idle: time.Duration((i*7919)%n) * time.Millisecond}, now)
			}
			for b.Loop() {
				c.LeastIdle(128)
			}
		})
	}
}

// An entry keeps its reply tuple only when it is not the inverse of the
// original; either way the flow read back is the flow applied.
func TestExternalReplyTuples(t *testing.T) {
	c := NewExternal()
	now := time.Now()
	plain := tcp(1, flow.TCPEstablished, 300)
	plain.Reply = plain.Orig.Invert(plain.Proto)
	nat := tcp(2, flow.TCPEstablished, 300)
	nat.Reply = nat.Orig.Invert(nat.Proto)
	nat.Reply.Dst[3] = 99
	icmp := plain
	icmp.Proto = flow.ProtoICMP
	icmp.Orig.SrcPort, icmp.Orig.DstPort = 7, 8<<8
	icmp.Reply = icmp.Orig.Invert(icmp.Proto)
	extra := tcp(3, flow.TCPEstablished, 300)
	extra.Reply = extra.Orig.Invert(extra.Proto)
	extra.Extra = &flow.Extra{Helper: "ftp"}
	for _, f := range []flow.Flow{plain, nat, icmp, extra} {
		c.Apply("a", Change{Flow: f}, now)
		got, ok := c.Get("a", f.Key)
		if !ok {
			t.Fatalf("%s not cached", f.String())
		}
		if got.Flow.Reply != f.Reply || (f.Extra == nil) != (got.Flow.Extra == nil) {
			t.Errorf("read back\n%s\nwant\n%s", got.Flow.String(), f.String())
		}
	}
}

// Refs name every entry of every origin; Entries reads those still there.
func TestExternalRefsEntries(t *testing.T) {
	c := NewExternal()
	now := time.Now()
	for i := range 10 {
		c.Apply("a", Change{Flow: tcp(i, flow.TCPEstablished, 300), Idle: time.Duration(i) * time.Second}, now)
	}
	c.Apply("b", Change{Flow: tcp(100, flow.TCPEstablished, 300)}, now)
	refs := c.Refs()
	if len(refs) != 11 {
		t.Fatalf("%d refs, want 11", len(refs))
	}
	for _, r := range refs {
		if want := time.Duration(r.Key.Orig.SrcPort-1000) * time.Second; r.Key.Orig.SrcPort < 1100 && (r.IdleAt < want || r.IdleAt > want+time.Minute) {
			t.Errorf("%v: idle %v, want about %v", r.Key.Orig, r.IdleAt, want)
		}
	}
	gone := tcp(3, flow.TCPEstablished, 300)
	c.Remove([]flow.Key{gone.Key})
	got := c.Entries(refs, nil)
	if len(got) != 10 {
		t.Fatalf("%d entries, want 10", len(got))
	}
	origins := map[string]int{}
	for _, e := range got {
		if e.Flow.Key == gone.Key {
			t.Errorf("removed entry read back")
		}
		origins[e.Origin]++
	}
	if origins["a"] != 9 || origins["b"] != 1 {
		t.Errorf("origins %v", origins)
	}
}

// TestExternalEmptiedFreesMemory: once a commit (Remove) or the peer's
// removals empty an origin's copy, the memory the copy held is given back
// to the heap; the standby that took over does not keep its old copy's
// index and slab beside the flows it now owns. A copy that still holds a
// flow keeps its storage (the control).
func TestExternalEmptiedFreesMemory(t *testing.T) {
	const flows = 100000
	heap := func() int64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	for _, keepOne := range []bool{false, true} {
		keys := make([]flow.Key, 0, flows)
		base := heap()
		c := NewExternal()
		now := time.Now()
		for i := range flows {
			f := manyTCP(i, flow.TCPEstablished, 100)
			c.Apply("a", Change{Flow: f}, now)
			keys = append(keys, f.Key)
		}
		full := heap()
		remove := keys
		if keepOne {
			remove = keys[1:]
		}
		// Half by Remove (a commit), half by the peer's removals.
		half := len(remove) / 2
		if n := c.Remove(remove[:half]); n != half {
			t.Fatalf("Remove = %d, want %d", n, half)
		}
		for _, k := range remove[half:] {
			c.Apply("a", Change{Flow: flow.Flow{Key: k}, Deleted: true}, now)
		}
		after := heap()
		held := float64(after-base) / float64(full-base)
		t.Logf("keep one flow %v: %d B while full, %d B after the removals (%.0f %%)", keepOne, full-base, after-base, 100*held)
		switch {
		case !keepOne && held > 0.2:
			t.Errorf("emptied copy still holds %.0f %% of its memory", 100*held)
		case keepOne && held < 0.5:
			t.Errorf("control: a copy with one flow left holds only %.0f %% of its memory; the test cannot tell", 100*held)
		}
		if want := map[bool]int{false: 0, true: 1}[keepOne]; c.Len() != want {
			t.Fatalf("%d flows left, want %d", c.Len(), want)
		}
		// The emptied copy works as before.
		f := tcp(1, flow.TCPEstablished, 100)
		c.Apply("a", Change{Flow: f}, now)
		if sums, n := c.Digest("a", 16); n != c.Len() || sums == nil {
			t.Fatalf("digest after emptying: %d flows, cache holds %d", n, c.Len())
		}
		runtime.KeepAlive(keys)
	}
}
