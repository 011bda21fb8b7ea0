package cache

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

func digestFlow(i int) flow.Flow {
	var f flow.Flow
	f.Family, f.Proto = flow.FamilyIPv4, flow.ProtoTCP
	f.Orig.Src = flow.AddrFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	f.Orig.Dst = flow.AddrFrom(netip.MustParseAddr("192.0.2.1"))
	f.Orig.SrcPort, f.Orig.DstPort = uint16(1024+i%50000), 443
	f.Reply = f.Orig.Invert(f.Proto)
	f.Status = flow.StatusConfirmed | flow.StatusAssured
	f.Timeout = 300
	f.TCP.State = flow.TCPEstablished
	return f
}

// TestDigestAgrees: the internal cache and an external copy of it have the
// same digest; a flow missing, changed in state or added changes exactly
// its bucket; a timeout alone changes nothing.
func TestDigestAgrees(t *testing.T) {
	in, ex := NewInternal(nil), NewExternal()
	now := time.Now()
	for i := range 5000 {
		f := digestFlow(i)
		in.Upsert(&f)
		ex.Apply("a", Change{Flow: f}, now)
	}
	nb := DigestBuckets(in.Len())
	want, n := in.Digest(nb)
	got, m := ex.Digest("a", nb)
	if n != 5000 || m != 5000 {
		t.Fatalf("flows %d and %d", n, m)
	}
	for b := range want {
		if want[b] != got[b] {
			t.Fatalf("bucket %d differs between identical copies", b)
		}
	}
	f := digestFlow(10)
	f.Timeout = 7
	ex.Apply("a", Change{Flow: f}, now)
	if s, _ := ex.Digest("a", nb); s[BucketOf(&f.Key, nb)] != want[BucketOf(&f.Key, nb)] {
		t.Error("a timeout changed the digest")
	}
	f.TCP.State = flow.TCPFinWait
	ex.Apply("a", Change{Flow: f}, now)
	gone := digestFlow(20)
	ex.Delete("a", gone.Key)
	extra := digestFlow(99999)
	ex.Apply("a", Change{Flow: extra}, now)
	got, _ = ex.Digest("a", nb)
	diff := map[uint32]bool{}
	for b := range want {
		if want[b] != got[b] {
			diff[uint32(b)] = true
		}
	}
	for _, k := range []flow.Key{f.Key, gone.Key, extra.Key} {
		if !diff[BucketOf(&k, nb)] {
			t.Errorf("the bucket of %v does not differ", k)
		}
		delete(diff, BucketOf(&k, nb))
	}
	if len(diff) > 0 {
		t.Errorf("other buckets differ too: %v", diff)
	}
	// Repair: the origin's flows of the differing buckets, then prune.
	set := map[uint32]bool{BucketOf(&f.Key, nb): true, BucketOf(&gone.Key, nb): true, BucketOf(&extra.Key, nb): true}
	keep := map[flow.Key]struct{}{}
	fixed := 0
	for _, ch := range in.BucketFlows(nb, set) {
		keep[ch.Flow.Key] = struct{}{}
		if ex.Repair("a", ch, now) {
			fixed++
		}
	}
	removed := ex.Prune("a", nb, set, keep)
	if fixed != 2 || removed != 1 {
		t.Errorf("repair fixed %d and removed %d; want 2 and 1", fixed, removed)
	}
	got, _ = ex.Digest("a", nb)
	for b := range want {
		if want[b] != got[b] {
			t.Fatalf("bucket %d still differs after the repair", b)
		}
	}
}

// BenchmarkDigest1M: one digest of a million flows, as each node computes
// every digest interval; reports the digest's size on the wire.
func BenchmarkDigest1M(b *testing.B) {
	in := NewInternal(nil)
	for i := range 1_000_000 {
		f := digestFlow(i)
		in.Upsert(&f)
	}
	nb := DigestBuckets(in.Len())
	b.ResetTimer()
	for b.Loop() {
		in.Digest(nb)
	}
	b.ReportMetric(float64(nb), "buckets")
	b.ReportMetric(float64(8*nb), "sum-bytes")
}

// BenchmarkExternalDigest1M: the receiving side's digest of a million
// flows of one origin.
func BenchmarkExternalDigest1M(b *testing.B) {
	ex := NewExternal()
	now := time.Now()
	for i := range 1_000_000 {
		ex.Apply("a", Change{Flow: digestFlow(i)}, now)
	}
	nb := DigestBuckets(ex.Len())
	b.ResetTimer()
	for b.Loop() {
		ex.Digest("a", nb)
	}
}

// TestDigestKeptSums: the sums the internal cache keeps as flows change
// equal a pass over the flows after any mix of events, reconciles and a
// flush.
func TestDigestKeptSums(t *testing.T) {
	in := NewInternal(nil)
	r := rand.New(rand.NewPCG(1, 2))
	check := func(when string) {
		t.Helper()
		for _, nb := range []int{64, 1024, 4096} {
			got, _ := in.Digest(nb)
			want := in.digestByPass(nb)
			for b := range want {
				if got[b] != want[b] {
					t.Fatalf("%s: bucket %d of %d: kept %x, pass %x", when, b, nb, got[b], want[b])
				}
			}
		}
	}
	mutate := func(f *flow.Flow) {
		switch r.IntN(4) {
		case 0:
			f.TCP.State = uint8(1 + r.IntN(8))
		case 1:
			f.Mark = r.Uint32()
		case 2:
			f.Timeout = r.Uint32N(1000) // not in the digest
		case 3:
			f.Extra = &flow.Extra{Helper: "ftp", Labels: [16]byte{byte(r.IntN(3))}}
		}
	}
	for round := range 20 {
		for range 2000 {
			f := digestFlow(r.IntN(5000))
			switch r.IntN(5) {
			case 0:
				in.Delete(f.Key)
			default:
				mutate(&f)
				in.Upsert(&f)
			}
		}
		check("events")
		if round%5 == 4 {
			rec := in.BeginReconcile()
			for i := range 5000 {
				if r.IntN(3) == 0 {
					continue // missing from the dump: removed
				}
				f := digestFlow(i)
				if r.IntN(4) == 0 {
					mutate(&f)
				}
				rec.Add(&f)
			}
			rec.Finish()
			check("reconcile")
		}
	}
	in.Flush()
	check("flush")
	f := digestFlow(1)
	in.Upsert(&f)
	check("after flush")
}

// TestExternalDigestKeptSums: the external cache's kept sums equal a pass
// over an origin's flows after applies, removals, bulks, takes, prunes and
// flushes.
func TestExternalDigestKeptSums(t *testing.T) {
	ex := NewExternal()
	r := rand.New(rand.NewPCG(3, 4))
	now := time.Now()
	check := func(when string) {
		t.Helper()
		for _, origin := range []string{"a", "b"} {
			for _, nb := range []int{64, 4096} {
				got, _ := ex.Digest(origin, nb)
				want := ex.digestByPass(origin, nb)
				for b := range want {
					if got[b] != want[b] {
						t.Fatalf("%s: %s bucket %d of %d: kept %x, pass %x", when, origin, b, nb, got[b], want[b])
					}
				}
			}
		}
	}
	for round := range 10 {
		if round%3 == 1 {
			ex.BeginBulk("a", uint64(round))
		}
		for range 2000 {
			f := digestFlow(r.IntN(3000))
			origin := []string{"a", "b"}[r.IntN(2)]
			switch r.IntN(6) {
			case 0:
				ex.Apply(origin, Change{Flow: f, Deleted: true}, now)
			case 1:
				ex.Delete(origin, f.Key)
			default:
				f.Mark = r.Uint32N(3)
				if r.IntN(5) == 0 {
					f.Reply.Dst[0] = 9 // NAT: the reply is stored apart
				}
				ex.Apply(origin, Change{Flow: f}, now)
			}
		}
		check("applies")
		if round%3 == 1 {
			ex.EndBulk("a", uint64(round))
			check("bulk end")
		}
		keys := []flow.Key{digestFlow(r.IntN(3000)).Key, digestFlow(r.IntN(3000)).Key}
		ex.Take(keys)
		ex.Remove([]flow.Key{digestFlow(r.IntN(3000)).Key})
		ex.Prune("b", 64, map[uint32]bool{uint32(r.IntN(64)): true}, nil)
		check("take, remove, prune")
	}
	ex.Flush("a")
	check("flush a")
	ex.Apply("a", Change{Flow: digestFlow(1)}, now)
	check("after flush")
}

// BenchmarkUpsertStateChange: an event that changes a cached flow's
// state, the path that also keeps the digest sums (two hashes more).
func BenchmarkUpsertStateChange(b *testing.B) {
	in := NewInternal(nil)
	flows := make([]flow.Flow, 100_000)
	for i := range flows {
		flows[i] = digestFlow(i)
		in.Upsert(&flows[i])
	}
	b.ResetTimer()
	i := 0
	for b.Loop() {
		f := &flows[i%len(flows)]
		f.Mark++
		in.Upsert(f)
		i++
	}
}

// BenchmarkExternalApply: a replicated change applied to the external
// cache (it keeps the digest sums too).
func BenchmarkExternalApply(b *testing.B) {
	ex := NewExternal()
	now := time.Now()
	flows := make([]flow.Flow, 100_000)
	for i := range flows {
		flows[i] = digestFlow(i)
		ex.Apply("a", Change{Flow: flows[i]}, now)
	}
	b.ResetTimer()
	i := 0
	for b.Loop() {
		f := &flows[i%len(flows)]
		f.Mark++
		ex.Apply("a", Change{Flow: *f}, now)
		i++
	}
}

// TestDigestForSend: young flows (not replicated yet) are not in the
// digest nor in repairs; buckets of pending changes are listed to skip.
func TestDigestForSend(t *testing.T) {
	in := NewInternal(nil)
	for i := range 100 {
		f := digestFlow(i)
		in.Upsert(&f)
	}
	in.TakeChanges(1000)
	nb := 64
	_, n, skip, ok := in.DigestForSend(nb)
	if !ok || n != 100 || len(skip) != 0 {
		t.Fatalf("clean cache: ok %v, %d flows, skip %v", ok, n, skip)
	}
	// A change made after the caller took the changes: its bucket is skipped.
	f := digestFlow(5)
	f.Mark = 77
	in.Upsert(&f)
	_, _, skip, _ = in.DigestForSend(nb)
	if len(skip) != 1 || skip[0] != BucketOf(&f.Key, nb) {
		t.Errorf("pending change: skip %v, want [%d]", skip, BucketOf(&f.Key, nb))
	}
	in.TakeChanges(1000)
	// A young flow (min age) is neither in the digest nor in a repair.
	in.SetMinAge(time.Hour)
	young := digestFlow(500)
	in.Upsert(&young)
	in.TakeChanges(1000)
	sums, n, _, _ := in.DigestForSend(nb)
	b := BucketOf(&young.Key, nb)
	ref := NewInternal(nil)
	for i := range 100 {
		g := digestFlow(i)
		if i == 5 {
			g.Mark = 77
		}
		ref.Upsert(&g)
	}
	want, _ := ref.Digest(nb)
	if n != 100 || sums[b] != want[b] {
		t.Errorf("young flow counted: %d flows, bucket %d %x, want %x", n, b, sums[b], want[b])
	}
	for _, ch := range in.BucketFlows(nb, map[uint32]bool{b: true}) {
		if ch.Flow.Key == young.Key {
			t.Error("a young flow offered for repair")
		}
	}
}
