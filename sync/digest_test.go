package sync

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// startDigests runs a node like start, with drift detection every iv.
func startDigests(t *testing.T, net *MemNetwork, opt Options, iv time.Duration) *tnode {
	t.Helper()
	opt.Logger = testLogger(t)
	tn := &tnode{t: t, name: opt.NodeName, in: cache.NewInternal(nil), ex: cache.NewExternal(), tr: net.Endpoint(opt.NodeName), done: make(chan error, 1)}
	n, err := New(opt, tn.in, tn.ex, tn.tr)
	if err != nil {
		t.Fatal(err)
	}
	n.SetDigestInterval(iv)
	tn.n = n
	ctx, cancel := context.WithCancel(context.Background())
	tn.cancel = cancel
	go func() { tn.done <- n.Run(ctx) }()
	t.Cleanup(tn.stop)
	return tn
}

// diverge makes b's copy of a's flows wrong the way lost but acknowledged
// messages would: a creation, an update and a removal b never applied.
func diverge(b *tnode, origin string, now time.Time) {
	gone := tcpFlow(3)
	b.ex.Delete(origin, gone.Key) // a creation lost
	stale := tcpFlow(7)
	stale.TCP.State = flow.TCPSynSent // an update lost
	b.ex.Apply(origin, cache.Change{Flow: stale}, now)
	extra := tcpFlow(100000) // a removal lost
	b.ex.Apply(origin, cache.Change{Flow: extra}, now)
}

// TestDigestRepairsSilentDivergence: a peer's copy that diverged without
// any loss the stream could see is repaired by digests, bucket by bucket,
// without a bulk; with digests off it stays wrong (the control).
func TestDigestRepairsSilentDivergence(t *testing.T) {
	for _, on := range []bool{true, false} {
		name := "digests-off"
		if on {
			name = "digests-on"
		}
		t.Run(name, func(t *testing.T) {
			net := NewMemNetwork(31)
			iv := time.Duration(0)
			if on {
				iv = 200 * time.Millisecond
			}
			a := startDigests(t, net, testOptions("a", &testKey), iv)
			b := startDigests(t, net, testOptions("b", &testKey), iv)
			upsertFlows(a.in, 2000)
			established(t, a, b)
			converged(t, a, b, 10*time.Second)
			bulks := a.n.Stats()["b"].BulksSent
			before := b.n.DriftStats().ByOrigin["a"]
			diverge(b, "a", time.Now())
			if !on {
				time.Sleep(10 * 200 * time.Millisecond)
				if internalTable(a.in) == externalTable(b.ex, "a") {
					t.Fatal("the copy repaired itself with digests off: the test cannot tell")
				}
				return
			}
			converged(t, a, b, 10*time.Second)
			ds := b.n.DriftStats()
			od := ds.ByOrigin["a"]
			t.Logf("b's drift stats: %+v, last %+v; a's: sent %d rounds, %d bytes, digest %.6fs",
				od, ds.Last, a.n.DriftStats().RoundsSent, a.n.DriftStats().BytesSent, a.n.DriftStats().LastDigestSeconds)
			if od.Repairs-before.Repairs != 1 || od.Flows-before.Flows != 3 {
				t.Errorf("repairs %d, repaired flows %d since the divergence; want 1 and 3", od.Repairs-before.Repairs, od.Flows-before.Flows)
			}
			if od.BulkRequests != 0 || a.n.Stats()["b"].BulksSent != bulks {
				t.Errorf("a bulk repaired it (requests %d, bulks sent %d→%d); want buckets only",
					od.BulkRequests, bulks, a.n.Stats()["b"].BulksSent)
			}
			if od.Buckets > 3 {
				t.Errorf("%d buckets differed for 3 wrong flows", od.Buckets)
			}
			if ds.Last == nil || ds.Last.Origin != "a" || ds.Last.Flows != 3 {
				t.Errorf("last repair %+v, want origin a, 3 flows", ds.Last)
			}
			if a.n.DriftStats().RepairsServed == 0 {
				t.Error("a served no repair")
			}
		})
	}
}

// TestDigestUnderChurn: while the origin's table changes all the time,
// digests do not "repair" what is only in flight: a copy that never
// diverged sees no repair that changed a flow.
func TestDigestUnderChurn(t *testing.T) {
	net := NewMemNetwork(32)
	a := startDigests(t, net, testOptions("a", &testKey), 100*time.Millisecond)
	b := startDigests(t, net, testOptions("b", &testKey), 100*time.Millisecond)
	established(t, a, b)
	for round := range 40 {
		churn(a.in, round, 500)
		time.Sleep(25 * time.Millisecond)
	}
	converged(t, a, b, 10*time.Second)
	od := b.n.DriftStats().ByOrigin["a"]
	t.Logf("b's drift stats under churn: %+v", od)
	if od.Checked == 0 {
		t.Fatal("no digest was compared")
	}
	if od.Flows != 0 {
		t.Errorf("%d flows 'repaired' though nothing diverged", od.Flows)
	}
}

func TestDigestWire(t *testing.T) {
	chs := []cache.Change{{Flow: tcpFlow(1)}, {Flow: tcpFlow(2)}}
	for _, m := range []*message{
		{Type: MsgDigest, Seq: 77, Digest: &DigestPart{Round: 3, Buckets: 64, Offset: 8, Flows: 1234, Sums: []uint64{1, 1 << 63, 42}}},
		{Type: MsgDigestRequest, Digest: &DigestPart{Round: 3, Buckets: 64, List: []uint32{0, 5, 63}}},
		{Type: MsgRepair, Changes: chs, Digest: &DigestPart{Round: 3, Buckets: 64}},
		{Type: MsgRepairEnd, Digest: &DigestPart{Round: 3, Buckets: 64, List: []uint32{5, 63}, Counts: []uint32{2, 0}}},
	} {
		b := appendBody(nil, m)
		got, err := decodeBody(m.Type, b)
		if err != nil {
			t.Fatalf("%s: %v", m.Type, err)
		}
		if m.Type == MsgRepair {
			if len(got.Changes) != 2 || !got.Changes[1].Flow.SameState(&chs[1].Flow) {
				t.Errorf("REPAIR changes %+v", got.Changes)
			}
			got.Changes, m.Changes = nil, nil
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%s: got %+v %+v, want %+v %+v", m.Type, got, got.Digest, m, m.Digest)
		}
		if _, err := decodeBody(m.Type, b[:len(b)-1]); err == nil {
			t.Errorf("%s: truncated body decoded", m.Type)
		}
	}
	bad := appendBody(nil, &message{Type: MsgDigest, Seq: 1, Digest: &DigestPart{Round: 1, Buckets: 48, Sums: []uint64{1}}})
	if _, err := decodeBody(MsgDigest, bad); err == nil {
		t.Error("a bucket count that is not a power of two decoded")
	}
	bad = appendBody(nil, &message{Type: MsgDigest, Seq: 1, Digest: &DigestPart{Round: 1, Buckets: 64, Offset: 63, Sums: []uint64{1, 2}}})
	if _, err := decodeBody(MsgDigest, bad); err == nil {
		t.Error("sums past the last bucket decoded")
	}
}

// TestAtRisk: flows changed while the link to the only peer is cut are at
// risk; once the link is back and the peer acknowledged them, none is.
func TestAtRisk(t *testing.T) {
	net := NewMemNetwork(33)
	a := start(t, net, testOptions("a", &testKey), nil)
	b := start(t, net, testOptions("b", &testKey), nil)
	upsertFlows(a.in, 100)
	established(t, a, b)
	converged(t, a, b, 10*time.Second)
	eventually(t, 5*time.Second, "no flow at risk", func() bool { return a.n.AtRisk().Total == 0 })
	net.Partition("a", "b", false)
	for i := range 40 {
		f := tcpFlow(i)
		f.Mark = 9
		a.in.Upsert(&f)
	}
	eventually(t, 5*time.Second, "40 flows at risk", func() bool {
		r := a.n.AtRisk()
		return r.Total == 40 && r.ByPeer["b"] == 40
	})
	net.Partition("a", "b", true)
	converged(t, a, b, 15*time.Second)
	eventually(t, 10*time.Second, "no flow at risk after the link is back", func() bool { return a.n.AtRisk().Total == 0 })
}

// BenchmarkDigestRound1M: one digest round of a million flows as the
// origin sends it (flush, digest, seal, send to one peer over the
// in-memory network); reports the bytes sent per round.
func BenchmarkDigestRound1M(b *testing.B) {
	net := NewMemNetwork(40)
	in := cache.NewInternal(nil)
	for i := range 1_000_000 {
		f := tcpFlow(i)
		f.Orig.SrcPort = uint16(i)
		f.Orig.DstPort = uint16(i >> 16)
		in.Upsert(&f)
	}
	n, err := New(Options{NodeName: "a", Key: &testKey}, in, cache.NewExternal(), net.Endpoint("a"))
	if err != nil {
		b.Fatal(err)
	}
	peerEnd := net.Endpoint("b")
	go func() {
		for range peerEnd.Packets() {
		}
	}()
	defer peerEnd.Close()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.peers[NodeID("b")] = &peer{id: NodeID("b"), name: "b", addr: "b", epoch: 1}
	n.sendChanges()
	for n.internal.Stats().Dirty > 0 {
		n.internal.TakeChanges(1 << 20)
	}
	b.ResetTimer()
	before := n.dg.stats.BytesSent
	for b.Loop() {
		n.sendDigest()
	}
	rounds := n.dg.stats.RoundsSent
	b.ReportMetric(float64(n.dg.stats.BytesSent-before)/float64(rounds), "bytes/round")
	b.ReportMetric(float64(cache.DigestBuckets(in.Len())), "buckets")
	b.ReportMetric(n.dg.stats.LastDigestSeconds*1e3, "digest-ms")
}

// TestDigestPausedDuringCommit: while drift comparison is paused (a commit
// empties the external cache into the kernel), digests from an origin that
// is still alive ask for no repair or bulk; the control, not paused, asks
// for a bulk.
func TestDigestPausedDuringCommit(t *testing.T) {
	for _, paused := range []bool{true, false} {
		name := "not-paused"
		if paused {
			name = "paused"
		}
		t.Run(name, func(t *testing.T) {
			net := NewMemNetwork(33)
			a := startDigests(t, net, testOptions("a", &testKey), 100*time.Millisecond)
			b := startDigests(t, net, testOptions("b", &testKey), 100*time.Millisecond)
			upsertFlows(a.in, 2000)
			established(t, a, b)
			converged(t, a, b, 10*time.Second)
			before := b.n.DriftStats().ByOrigin["a"]
			b.n.PauseDrift(paused)
			var keys []flow.Key
			for _, e := range b.ex.Snapshot() {
				keys = append(keys, e.Flow.Key)
			}
			b.ex.Remove(keys) // what a commit does
			time.Sleep(15 * 100 * time.Millisecond)
			od := b.n.DriftStats().ByOrigin["a"]
			t.Logf("b's drift stats: %+v", od)
			asked := od.BulkRequests+od.Repairs > before.BulkRequests+before.Repairs
			if paused {
				if asked || b.ex.Len() != 0 {
					t.Errorf("paused: bulk requests %d→%d, repairs %d→%d, external %d flows; want none asked, 0 flows",
						before.BulkRequests, od.BulkRequests, before.Repairs, od.Repairs, b.ex.Len())
				}
				if od.Skipped <= before.Skipped {
					t.Error("paused: no digest counted as skipped")
				}
				return
			}
			if !asked {
				t.Error("not paused: the emptied copy asked for nothing: the test cannot tell")
			}
		})
	}
}

// TestDigestSkipsFullCopy: a copy held at the per-origin bound refuses the
// origin's new flows, so it differs by design; drift checks skip it rather
// than ask, every round, for repairs the bound refuses again.
func TestDigestSkipsFullCopy(t *testing.T) {
	net := NewMemNetwork(34)
	a := startDigests(t, net, testOptions("a", &testKey), 100*time.Millisecond)
	b := startDigests(t, net, testOptions("b", &testKey), 100*time.Millisecond)
	b.ex.SetLimits(500, 0)
	upsertFlows(a.in, 2000)
	established(t, a, b)
	eventually(t, 10*time.Second, "b holds 500 of a's flows", func() bool { return b.ex.Len() == 500 })
	time.Sleep(15 * 100 * time.Millisecond)
	od := b.n.DriftStats().ByOrigin["a"]
	t.Logf("b's drift stats: %+v; refused %d", od, b.n.Stats()["a"].Drops.Overflow)
	if od.Repairs+od.BulkRequests != 0 {
		t.Errorf("%d repairs and %d bulk requests for a copy the bound keeps short", od.Repairs, od.BulkRequests)
	}
	if od.Skipped == 0 {
		t.Error("no digest counted as skipped")
	}
	if b.n.Stats()["a"].Drops.Overflow == 0 {
		t.Error("no flow counted as refused")
	}
}
