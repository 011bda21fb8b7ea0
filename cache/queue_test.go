package cache

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

// inOrder prints changes in the order they were taken.
func inOrder(ch []Change) string { return strings.Join(changeLines(ch), ", ") }

// A flow removed while its change is queued keeps its slot until the
// queue reaches it: a new flow must not take the slot (and be sent as the
// removal), and the slot is reused once taken.
func TestInternalQueueDeadSlot(t *testing.T) {
	c := NewInternal(nil)
	a, b, d := tcp(1, flow.TCPEstablished, 600), tcp(2, flow.TCPEstablished, 600), tcp(3, flow.TCPSynSent, 120)
	c.Upsert(&a)
	c.Delete(a.Key)
	c.Upsert(&b)
	if s := c.Stats(); s.Flows != 1 || s.Dirty != 2 {
		t.Fatalf("flows %d dirty %d, want 1 and 2", s.Flows, s.Dirty)
	}
	if got := inOrder(c.TakeChanges(0)); got != "1001 deleted, 1002 ESTABLISHED" {
		t.Fatalf("got %q", got)
	}
	if n := len(c.flows.free); n != 1 {
		t.Fatalf("%d free slots after the removal was taken, want 1", n)
	}
	c.Upsert(&d)
	if n := len(c.flows.free); n != 0 {
		t.Fatalf("%d free slots, want the freed one reused", n)
	}
	if got := inOrder(c.TakeChanges(0)); got != "1003 SYN_SENT" {
		t.Fatalf("got %q", got)
	}
	if s := c.Stats(); s.Dirty != 0 {
		t.Fatalf("dirty %d after taking everything", s.Dirty)
	}
}

// A replicated flow destroyed and re-created before the changes are taken:
// the destroy, then the new flow, in that order.
func TestInternalQueueRecreated(t *testing.T) {
	c := NewInternal(nil)
	f := tcp(1, flow.TCPEstablished, 600)
	c.Upsert(&f)
	c.TakeChanges(0)
	c.Delete(f.Key)
	f.TCP.State = flow.TCPSynSent
	c.Upsert(&f)
	f.TCP.State = flow.TCPSynRecv
	c.Upsert(&f)
	if got := inOrder(c.TakeChanges(0)); got != "1001 deleted, 1001 SYN_RECV" {
		t.Fatalf("got %q", got)
	}
}

// Turning changes off frees the slots of removed flows still queued.
func TestInternalQueueDisable(t *testing.T) {
	c := NewInternal(nil)
	a, b := tcp(1, flow.TCPEstablished, 600), tcp(2, flow.TCPEstablished, 600)
	c.Upsert(&a)
	c.Upsert(&b)
	c.Delete(a.Key)
	c.DisableChanges()
	if n := len(c.flows.free); n != 1 {
		t.Fatalf("%d free slots, want the removed flow's", n)
	}
	b.TCP.State = flow.TCPCloseWait
	c.Upsert(&b)
	if s := c.Stats(); s.Dirty != 0 || s.Flows != 1 {
		t.Fatalf("dirty %d flows %d", s.Dirty, s.Flows)
	}
	if got := inOrder(c.TakeChanges(0)); got != "" {
		t.Fatalf("got %q with changes off", got)
	}
}

// Random events, changes taken in random amounts and applied to a model of
// the peer: once everything is taken, the peer holds exactly the cache.
func TestInternalQueuePeerConverges(t *testing.T) {
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 7))
		c := NewInternal(nil)
		peer := map[flow.Key]uint8{}
		apply := func(chs []Change) {
			for _, ch := range chs {
				if ch.Deleted {
					delete(peer, ch.Flow.Key)
				} else {
					peer[ch.Flow.Key] = ch.Flow.TCP.State
				}
			}
		}
		states := []uint8{flow.TCPSynSent, flow.TCPSynRecv, flow.TCPEstablished, flow.TCPFinWait, flow.TCPCloseWait}
		for range 2000 {
			f := tcp(r.IntN(40), states[r.IntN(len(states))], 600)
			switch x := r.IntN(10); {
			case x < 5:
				c.Upsert(&f)
			case x < 8:
				c.Delete(f.Key)
			default:
				apply(c.TakeChanges(r.IntN(8)))
			}
		}
		apply(c.TakeChanges(0))
		want := map[flow.Key]uint8{}
		for _, e := range c.Snapshot() {
			want[e.Key] = e.TCP.State
		}
		if fmt.Sprint(peer) != fmt.Sprint(want) {
			t.Fatalf("seed %d: peer holds %d flows, cache %d:\npeer %v\ncache %v", seed, len(peer), len(want), peer, want)
		}
		if n, live := len(c.flows.free), int(c.flows.next)-c.flows.len(); n != live {
			t.Fatalf("seed %d: %d free slots, %d slots not holding a flow: a slot leaked", seed, n, live)
		}
	}
}
