package cache

import (
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
