package cache

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

func tcp(n int, state uint8, timeout uint32) flow.Flow {
	f := flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP}}
	f.Orig.Src = flow.AddrFrom(netip.MustParseAddr("10.0.0.1"))
	f.Orig.Dst = flow.AddrFrom(netip.MustParseAddr("10.0.1.1"))
	f.Orig.SrcPort = uint16(1000 + n)
	f.Orig.DstPort = 80
	f.Reply = f.Orig.Invert(f.Proto)
	f.TCP.State = state
	f.Timeout = timeout
	f.Status = flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured
	return f
}

// manyTCP is tcp for n up to 2^24: the source address carries the bits the
// 16-bit port cannot, so that every n is a flow of its own.
func manyTCP(n int, state uint8, timeout uint32) flow.Flow {
	f := tcp(n, state, timeout)
	f.Orig.Src[2], f.Orig.Src[3] = byte(n>>16), byte(n>>8)
	f.Reply = f.Orig.Invert(f.Proto)
	return f
}

// table prints the cache as sorted text: one "port state timeout" a line.
func table(c *Internal) string {
	var lines []string
	for _, e := range c.Snapshot() {
		lines = append(lines, fmt.Sprintf("%d %s %d", e.Orig.SrcPort, flow.TCPStateName(e.TCP.State), e.Timeout))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestReconcile(t *testing.T) {
	type step struct {
		op string // "new", "del", "begin", "dump", "finish"
		n  int
		st uint8
		to uint32
	}
	est := flow.TCPEstablished
	tests := []struct {
		name  string
		steps []step
		want  string
		res   ReconcileResult
	}{
		{
			name:  "missed NEW is added",
			steps: []step{{op: "begin"}, {op: "dump", n: 1, st: est, to: 100}, {op: "finish"}},
			want:  "1001 ESTABLISHED 100",
			res:   ReconcileResult{Added: 1},
		},
		{
			name:  "missed DESTROY is removed",
			steps: []step{{op: "new", n: 1, st: est, to: 100}, {op: "new", n: 2, st: est, to: 100}, {op: "begin"}, {op: "dump", n: 2, st: est, to: 90}, {op: "finish"}},
			want:  "1002 ESTABLISHED 90",
			res:   ReconcileResult{Removed: 1},
		},
		{
			name:  "missed UPDATE is fixed",
			steps: []step{{op: "new", n: 1, st: flow.TCPSynSent, to: 120}, {op: "begin"}, {op: "dump", n: 1, st: est, to: 400}, {op: "finish"}},
			want:  "1001 ESTABLISHED 400",
			res:   ReconcileResult{Fixed: 1},
		},
		{
			name:  "NEW during the dump survives a dump without it",
			steps: []step{{op: "begin"}, {op: "new", n: 3, st: est, to: 100}, {op: "finish"}},
			want:  "1003 ESTABLISHED 100",
		},
		{
			name:  "DESTROY during the dump is not undone by the dump",
			steps: []step{{op: "new", n: 1, st: est, to: 100}, {op: "begin"}, {op: "del", n: 1}, {op: "dump", n: 1, st: est, to: 100}, {op: "finish"}},
			want:  "",
		},
		{
			name:  "UPDATE during the dump wins over older dump data",
			steps: []step{{op: "new", n: 1, st: flow.TCPSynRecv, to: 60}, {op: "begin"}, {op: "new", n: 1, st: flow.TCPFinWait, to: 120}, {op: "dump", n: 1, st: est, to: 400}, {op: "finish"}},
			want:  "1001 FIN_WAIT 120",
		},
		{
			name:  "unchanged flow only refreshes its timeout",
			steps: []step{{op: "new", n: 1, st: est, to: 100}, {op: "begin"}, {op: "dump", n: 1, st: est, to: 95}, {op: "finish"}},
			want:  "1001 ESTABLISHED 95",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewInternal(nil)
			var r *Reconcile
			var res ReconcileResult
			for _, s := range tt.steps {
				f := tcp(s.n, s.st, s.to)
				switch s.op {
				case "new":
					c.Upsert(&f)
				case "del":
					c.Delete(f.Key)
				case "begin":
					r = c.BeginReconcile()
				case "dump":
					r.Add(&f)
				case "finish":
					res = r.Finish()
				}
			}
			if got := table(c); got != tt.want {
				t.Errorf("cache:\n%s\nwant:\n%s", got, tt.want)
			}
			res.Active = 0
			if res != tt.res {
				t.Errorf("result %+v, want %+v", res, tt.res)
			}
		})
	}
}

func TestChangesCoalesce(t *testing.T) {
	c := NewInternal(nil)
	f := tcp(1, flow.TCPSynSent, 120)
	c.Upsert(&f)
	f.TCP.State = flow.TCPSynRecv
	c.Upsert(&f)
	f.TCP.State = flow.TCPEstablished
	c.Upsert(&f)
	g := tcp(2, flow.TCPEstablished, 10)
	c.Upsert(&g)
	c.Delete(g.Key)
	ch := c.TakeChanges(0)
	slices.SortFunc(ch, func(a, b Change) int { return int(a.Flow.Orig.SrcPort) - int(b.Flow.Orig.SrcPort) })
	if len(ch) != 2 {
		t.Fatalf("got %d changes, want 2: %+v", len(ch), ch)
	}
	if ch[0].Deleted || ch[0].Flow.TCP.State != flow.TCPEstablished {
		t.Errorf("first change %+v, want the latest state ESTABLISHED", ch[0])
	}
	if !ch[1].Deleted {
		t.Errorf("second change %+v, want a deletion", ch[1])
	}
	if more := c.TakeChanges(0); len(more) != 0 {
		t.Errorf("changes taken twice: %+v", more)
	}
}

func TestIdleness(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewInternal(func(f *flow.Flow) uint32 { return 432000 })
	c.SetClock(func() time.Time { return now })
	busy := tcp(1, flow.TCPEstablished, 431999) // a packet a second ago
	idle := tcp(2, flow.TCPEstablished, 431000) // quiet for 1000 s
	c.Upsert(&busy)
	c.Upsert(&idle)
	c.TakeChanges(0)

	// 30 s later the busy flow has had traffic (timeout back up), the idle
	// one has not: only the busy one is replicated again.
	now = now.Add(30 * time.Second)
	r := c.BeginReconcile()
	busy.Timeout = 432000
	idle.Timeout = 430970
	r.Add(&busy)
	r.Add(&idle)
	if res := r.Finish(); res.Active != 1 {
		t.Errorf("active %d, want 1", res.Active)
	}
	ch := c.TakeChanges(0)
	if len(ch) != 1 || ch[0].Flow.Orig.SrcPort != busy.Orig.SrcPort {
		t.Fatalf("changes %+v, want the busy flow only", ch)
	}
	// A change taken 10 s after the dump carries the timeout left now and
	// the idleness as of now.
	now = now.Add(10 * time.Second)
	cur := c.Current(idle.Key)
	if cur.Flow.Timeout != 430960 || cur.Idle != 1040*time.Second {
		t.Errorf("current: timeout %d idle %v, want 430960 and 1040s", cur.Flow.Timeout, cur.Idle)
	}
	now = now.Add(-10 * time.Second)
	b, _ := c.Get(busy.Key)
	i, _ := c.Get(idle.Key)
	if got := b.Idle(now); got != 0 {
		t.Errorf("busy idle %v, want 0", got)
	}
	if got := i.Idle(now); got != 1030*time.Second {
		t.Errorf("idle flow idle %v, want 1030s", got)
	}
}

// Changes are taken oldest first, each key once however often it changed.
func TestInternalTakeChangesOrder(t *testing.T) {
	c := NewInternal(nil)
	for i := range 10 {
		f := tcp(i, flow.TCPEstablished, 300)
		c.Upsert(&f)
	}
	f := tcp(3, flow.TCPFinWait, 120) // changed again: keeps its place
	c.Upsert(&f)
	port := func(chs []Change) []int {
		var out []int
		for _, ch := range chs {
			out = append(out, int(ch.Flow.Orig.SrcPort)-1000)
		}
		return out
	}
	if got := port(c.TakeChanges(4)); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Errorf("first 4 changes: %v", got)
	}
	f = tcp(1, flow.TCPFinWait, 120) // taken, then changed: at the end
	c.Upsert(&f)
	if got := port(c.TakeChanges(0)); !slices.Equal(got, []int{4, 5, 6, 7, 8, 9, 1}) {
		t.Errorf("the rest: %v", got)
	}
	if got := c.TakeChanges(0); len(got) != 0 {
		t.Errorf("%d changes left", len(got))
	}
}
