package sync

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
)

// urgentPair starts a and b; b records the DATA_NOW changes it applies.
// With a long ack interval, an acknowledgement that comes quickly can only
// be DATA_NOW's immediate one.
func urgentPair(t *testing.T, net *MemNetwork, ackInterval time.Duration) (a, b *tnode, applied *atomic.Int64) {
	applied = new(atomic.Int64)
	oa := testOptions("a", &testKey)
	ob := testOptions("b", &testKey)
	oa.AckInterval, ob.AckInterval = ackInterval, ackInterval
	oa.PeerTimeout, ob.PeerTimeout = 30*time.Second, 30*time.Second
	ob.Applied = func(origin string, chs []cache.Change, urgent bool) {
		if urgent && origin == "a" {
			applied.Add(int64(len(chs)))
		}
	}
	a = start(t, net, oa, nil)
	b = start(t, net, ob, nil)
	established(t, a, b)
	return a, b, applied
}

func TestSendNowAcked(t *testing.T) {
	net := NewMemNetwork(31)
	a, b, applied := urgentPair(t, net, 10*time.Second)
	f := tcpFlow(7)
	got := make(chan bool, 1)
	var appliedFirst atomic.Bool
	if up := a.n.SendNow([]cache.Change{{Flow: f}}, func(acked bool) {
		appliedFirst.Store(applied.Load() == 1)
		got <- acked
	}); up != 1 {
		t.Fatalf("SendNow: %d peers up, want 1", up)
	}
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("done(false): not acknowledged")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no acknowledgement within half the ack interval: DATA_NOW was not acknowledged at once")
	}
	if !appliedFirst.Load() {
		t.Error("acknowledged before the receiver's Applied hook ran")
	}
	if _, ok := b.ex.Get("a", f.Key); !ok {
		t.Error("flow not in b's external cache")
	}
}

// A lost DATA_NOW is repaired by NACK, with the changes it carried (the
// flow is in no internal cache), and then acknowledged.
func TestSendNowRepaired(t *testing.T) {
	net := NewMemNetwork(32)
	a, b, _ := urgentPair(t, net, 10*time.Millisecond)
	var dropped atomic.Bool
	net.SetFilter(func(from, to string, p []byte) bool {
		if h, err := parseHeader(p); err == nil && h.Type == MsgDataNow && from == "a" && dropped.CompareAndSwap(false, true) {
			return false
		}
		return true
	})
	f := tcpFlow(8)
	got := make(chan bool, 1)
	a.n.SendNow([]cache.Change{{Flow: f}}, func(acked bool) { got <- acked })
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("done(false)")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("lost DATA_NOW never acknowledged")
	}
	if !dropped.Load() {
		t.Fatal("the filter dropped nothing: the test proves nothing")
	}
	if e, ok := b.ex.Get("a", f.Key); !ok || e.Flow.TCP.State != f.TCP.State {
		t.Errorf("repaired flow in b: %v %+v", ok, e.Flow)
	}
}

func TestSendNowNoPeer(t *testing.T) {
	net := NewMemNetwork(33)
	a := start(t, net, testOptions("a", &testKey), nil)
	f := tcpFlow(1)
	if up := a.n.SendNow([]cache.Change{{Flow: f}}, func(bool) { t.Error("done called without peers") }); up != 0 {
		t.Fatalf("%d peers up", up)
	}
}

// A peer that goes away before it acknowledged: done(false) once it
// counts as down.
func TestSendNowPeerGone(t *testing.T) {
	net := NewMemNetwork(34)
	a := start(t, net, testOptions("a", &testKey), nil)
	b := start(t, net, testOptions("b", &testKey), nil)
	established(t, a, b)
	b.stop()
	got := make(chan bool, 1)
	if up := a.n.SendNow([]cache.Change{{Flow: tcpFlow(2)}}, func(acked bool) { got <- acked }); up != 1 {
		t.Fatalf("%d peers up right after b stopped, want 1", up)
	}
	select {
	case ok := <-got:
		if ok {
			t.Fatal("acknowledged by a stopped peer")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("waiter never released after the peer timed out")
	}
}
