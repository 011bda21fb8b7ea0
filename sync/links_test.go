package sync

import (
	"context"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
)

// linkedNode runs a node over two links, endpoints name+"1" on net1 and
// name+"2" on net2.
type linkedNode struct {
	*tnode
	links *Links
}

func startLinked(t *testing.T, name string, net1, net2 *MemNetwork, e1, e2 *MemTransport) *linkedNode {
	t.Helper()
	l, err := NewLinks([]string{"sync0", "sync1"}, []Transport{e1, e2}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	opt := testOptions(name, &testKey)
	opt.Logger = testLogger(t)
	tn := &tnode{t: t, name: name, in: cache.NewInternal(nil), ex: cache.NewExternal(), tr: e1, done: make(chan error, 1)}
	n, err := New(opt, tn.in, tn.ex, l)
	if err != nil {
		t.Fatal(err)
	}
	tn.n = n
	ctx, cancel := context.WithCancel(context.Background())
	tn.cancel = cancel
	go func() { tn.done <- n.Run(ctx) }()
	t.Cleanup(func() {
		tn.stop()
		l.Close()
	})
	return &linkedNode{tnode: tn, links: l}
}

// TestLinksSurviveACut: two nodes joined by two links replicate; the first
// link is cut in the middle of a churn; the second carries on with nothing
// lost and nothing applied twice, and the status says which link is down.
// The control: over the first link alone, the same cut stops replication.
func TestLinksSurviveACut(t *testing.T) {
	net1, net2 := NewMemNetwork(1), NewMemNetwork(2)
	a1, b1 := net1.Endpoint("a1"), net1.Endpoint("b1")
	a2, b2 := net2.Endpoint("a2"), net2.Endpoint("b2")
	a := startLinked(t, "a", net1, net2, a1, a2)
	b := startLinked(t, "b", net1, net2, b1, b2)
	churn(a.in, 0, 2000)
	converged(t, a.tnode, b.tnode, 20*time.Second)

	net1.Partition("a1", "b1", false)
	for round := 1; round <= 5; round++ {
		churn(a.in, round, 2000)
		time.Sleep(100 * time.Millisecond)
	}
	converged(t, a.tnode, b.tnode, 20*time.Second)
	st := b.n.Stats()["a"]
	if st.FullResyncs != 0 {
		t.Errorf("the cut needed %d full resyncs; the second link should have carried everything", st.FullResyncs)
	}
	if st.Drops.Replay == 0 {
		t.Errorf("no copy dropped as a replay: were the datagrams sent on both links? %+v", st.Drops)
	}
	eventually(t, 5*time.Second, "sync0 reported down and sync1 up", func() bool {
		ls := b.links.Status()
		return !ls[0].Up && ls[1].Up
	})
	t.Logf("b's links: %+v", b.links.Status())

	// Control: the same cut on a single link stops replication.
	net3 := NewMemNetwork(3)
	c := start(t, net3, testOptions("c", &testKey), nil)
	d := start(t, net3, testOptions("d", &testKey), nil)
	churn(c.in, 0, 500)
	converged(t, c, d, 20*time.Second)
	net3.Partition("c", "d", false)
	churn(c.in, 1, 500)
	time.Sleep(2 * time.Second)
	if internalTable(c.in) == externalTable(d.ex, "c") {
		t.Fatal("control: replication went on over a cut single link")
	}
}

func TestLinksNeedTheSamePeers(t *testing.T) {
	net1, net2 := NewMemNetwork(1), NewMemNetwork(2)
	e1 := net1.Endpoint("a1")
	net1.Endpoint("b1")
	net1.Endpoint("c1")
	e2 := net2.Endpoint("a2")
	net2.Endpoint("b2")
	if _, err := NewLinks([]string{"x", "y"}, []Transport{e1, e2}, time.Second); err == nil {
		t.Error("links with 2 and 1 peers joined")
	}
}
