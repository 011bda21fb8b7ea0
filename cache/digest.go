package cache

import (
	"encoding/binary"
	"math/bits"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Digests: drift detection compares what an origin holds with what a peer
// holds of it, bucket by bucket. A flow falls in bucket KeyHash(k) mod the
// bucket count (a power of two, so the top bits of the hash); a bucket's
// digest is the sum (mod 2^64) of StateHash over its flows, so that it does
// not depend on the order flows are visited and an empty bucket is 0.
// StateHash covers exactly what replication carries as a change (the key,
// reply tuple, status, mark, TCP info and extras; Flow.SameState's
// fields): timeouts and idleness, which age on their own, are left out.
//
// The hashes are fixed functions (not seeded per process): two nodes must
// compute the same values. They are not cryptographic; peers are
// authenticated by the sync protocol.

// BucketOf returns the bucket of key k among nb buckets (nb a power of
// two, at least 1).
func BucketOf(k *flow.Key, nb int) uint32 { return bucketOfHash(KeyHash(k), nb) }

func bucketOfHash(kh uint64, nb int) uint32 {
	if nb <= 1 {
		return 0
	}
	return uint32(kh >> (64 - bits.TrailingZeros(uint(nb))))
}

const (
	mixK1 = 0x9E3779B97F4A7C15
	mixK2 = 0xBF58476D1CE4E5B9
	mixK3 = 0x94D049BB133111EB
)

// mix64 is splitmix64's finalizer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= mixK2
	x ^= x >> 27
	x *= mixK3
	x ^= x >> 31
	return x
}

type hasher struct{ h uint64 }

func (h *hasher) word(w uint64) { h.h = mix64(h.h ^ (w + mixK1)) }

func (h *hasher) bytes(b []byte) {
	for len(b) >= 8 {
		h.word(binary.LittleEndian.Uint64(b))
		b = b[8:]
	}
	var tail [8]byte
	copy(tail[:], b)
	h.word(binary.LittleEndian.Uint64(tail[:]) ^ uint64(len(b))<<56)
}

func (h *hasher) tuple(t *flow.Tuple) {
	h.bytes(t.Src[:])
	h.bytes(t.Dst[:])
	h.word(uint64(t.SrcPort)<<16 | uint64(t.DstPort))
}

func (h *hasher) key(k *flow.Key) {
	h.tuple(&k.Orig)
	h.word(uint64(k.Family)<<32 | uint64(k.Proto)<<16 | uint64(k.Zone))
}

// KeyHash returns the hash that places a flow in its bucket.
func KeyHash(k *flow.Key) uint64 {
	h := hasher{h: 0x6374_7379_6e63_6431} // "ctsyncd1"
	h.key(k)
	return h.h
}

// StateHash returns the hash of a flow's replicated state.
func StateHash(f *flow.Flow) uint64 {
	return stateHash(KeyHash(&f.Key), &f.Reply, f.Status, f.Mark, &f.TCP, f.Extra)
}

// stateHash is StateHash given the key's hash (computed once per flow for
// both the bucket and the state).
func stateHash(kh uint64, reply *flow.Tuple, status, mark uint32, t *flow.TCPInfo, x *flow.Extra) uint64 {
	h := hasher{h: kh ^ 0x6374_7379_6e63_6432}
	h.tuple(reply)
	h.word(uint64(status)<<32 | uint64(mark))
	h.word(uint64(t.State) | uint64(t.WScaleOrig)<<8 | uint64(t.WScaleRep)<<16 | uint64(t.FlagsOrig)<<24 | uint64(t.FlagsRep)<<32)
	if !x.IsZero() {
		h.bytes(x.Labels[:])
		h.bytes([]byte(x.Helper))
		h.bytes(mustAppend(x.SeqAdjOrig))
		h.bytes(mustAppend(x.SeqAdjReply))
		h.bytes(mustAppend(x.SynProxy))
		h.bytes(mustAppend(x.SCTP))
		h.bytes(mustAppend(x.DCCP))
	}
	return h.h
}

func mustAppend(v any) []byte {
	b, err := binary.Append(nil, binary.LittleEndian, v)
	if err != nil {
		panic(err) // fixed-size structs of the flow package
	}
	return b
}

// fineBuckets is the bucket count the internal cache keeps its digest sums
// at as flows change; a digest of fewer buckets adds neighbours (a bucket
// is the top bits of the key hash, so bucket b of nb is fine buckets
// b*(fineBuckets/nb) onwards).
const fineBuckets = maxBuckets

// dgIn adds e's state to the digest sums; dgOut takes it out and returns
// the key's hash (for dgInHash after the change). Called with c.mu held,
// around every change of a flow's replicated state.
func (c *Internal) dgIn(k *flow.Key, e *entry) {
	if c.dsum == nil {
		c.dsum = new([fineBuckets]uint64)
	}
	kh := KeyHash(k)
	c.dsum[bucketOfHash(kh, fineBuckets)] += stateHash(kh, &e.Reply, e.Status, e.Mark, &e.TCP, e.Extra)
}

func (c *Internal) dgOut(k *flow.Key, e *entry) uint64 {
	if c.dsum == nil {
		c.dsum = new([fineBuckets]uint64)
	}
	kh := KeyHash(k)
	c.dsum[bucketOfHash(kh, fineBuckets)] -= stateHash(kh, &e.Reply, e.Status, e.Mark, &e.TCP, e.Extra)
	return kh
}

// dgInHash is dgIn given the key's hash dgOut returned.
func (c *Internal) dgInHash(kh uint64, e *entry) {
	c.dsum[bucketOfHash(kh, fineBuckets)] += stateHash(kh, &e.Reply, e.Status, e.Mark, &e.TCP, e.Extra)
}

// Digest returns the bucket digests of the internal cache among nb buckets
// (a power of two, at most 4096) and the number of flows. The sums are
// kept as flows change, so this costs 4096 additions, not a pass over the
// flows.
func (c *Internal) Digest(nb int) (sums []uint64, flows int) {
	sums = make([]uint64, nb)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dsum != nil {
		shift := bits.TrailingZeros(uint(fineBuckets / nb))
		for b, v := range c.dsum {
			sums[b>>shift] += v
		}
	}
	return sums, c.flows.len()
}

// DigestForSend is Digest for a node about to send it after its pending
// changes: flows still young (not replicated yet, SetMinAge) are left out,
// and the buckets of changes pending now (made since the caller took the
// changes) are listed in skip, for the receiver not to compare. ok is false
// when too many changes are pending for the digest to be of use.
func (c *Internal) DigestForSend(nb int) (sums []uint64, flows int, skip []uint32, ok bool) {
	sums = make([]uint64, nb)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending() > maxSkip {
		return nil, 0, nil, false
	}
	if c.dsum != nil {
		shift := bits.TrailingZeros(uint(fineBuckets / nb))
		for b, v := range c.dsum {
			sums[b>>shift] += v
		}
	}
	flows = c.flows.len()
	for k := range c.young {
		if e, ok := c.flows.get(k); ok {
			kh := KeyHash(&k)
			sums[bucketOfHash(kh, nb)] -= stateHash(kh, &e.Reply, e.Status, e.Mark, &e.TCP, e.Extra)
			flows--
		}
	}
	seen := map[uint32]bool{}
	for _, q := range c.queue[c.head:] {
		b := BucketOf(&q.key, nb)
		if !seen[b] {
			seen[b] = true
			skip = append(skip, b)
		}
	}
	return sums, flows, skip, true
}

// maxSkip bounds the changes pending when a digest is taken.
const maxSkip = 256

// digestByPass is Digest computed by a pass over the flows (tests: it must
// equal the kept sums).
func (c *Internal) digestByPass(nb int) []uint64 {
	sums := make([]uint64, nb)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flows.each(func(k flow.Key, e *entry) {
		kh := KeyHash(&k)
		sums[bucketOfHash(kh, nb)] += stateHash(kh, &e.Reply, e.Status, e.Mark, &e.TCP, e.Extra)
	})
	return sums
}

// BucketFlows returns the current state of the internal cache's flows that
// fall in the given buckets (among nb), as changes ready to replicate;
// flows still young (SetMinAge) are left out.
func (c *Internal) BucketFlows(nb int, buckets map[uint32]bool) []Change {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Change
	c.flows.each(func(k flow.Key, e *entry) {
		if _, young := c.young[k]; young {
			return // not replicated yet (SetMinAge)
		}
		if buckets[BucketOf(&k, nb)] {
			out = append(out, c.change(k, e, now))
		}
	})
	return out
}

// extHash is the digest hash of an external entry and its fine bucket.
func extHash(k *flow.Key, e *extEntry) (uint32, uint64) {
	kh := KeyHash(k)
	return bucketOfHash(kh, fineBuckets), extStateHash(kh, k, e)
}

func extStateHash(kh uint64, k *flow.Key, e *extEntry) uint64 {
	if e.more != nil {
		return stateHash(kh, &e.more.reply, e.status, e.mark, &e.tcp, e.more.extra)
	}
	reply := k.Orig.Invert(k.Proto)
	return stateHash(kh, &reply, e.status, e.mark, &e.tcp, nil)
}

// replace stores e for k, overwriting old (nil: k had no entry), keeping
// the digest sums; the caller looked old up.
func (o *origin) replace(k flow.Key, old *extEntry, e extEntry) {
	if o.dsum == nil {
		o.dsum = new([fineBuckets]uint64)
	}
	kh := KeyHash(&k)
	b := bucketOfHash(kh, fineBuckets)
	if old != nil {
		o.dsum[b] -= extStateHash(kh, &k, old)
		*old = e
	} else {
		*o.flows.add(k) = e
	}
	o.dsum[b] += extStateHash(kh, &k, &e)
}

// del removes k's entry, if any, keeping the digest sums, and reports
// whether there was one.
func (o *origin) del(k flow.Key) bool {
	old, ok := o.flows.get(k)
	if !ok {
		return false
	}
	if o.dsum != nil {
		b, h := extHash(&k, old)
		o.dsum[b] -= h
	}
	o.flows.del(k)
	if o.flows.len() == 0 && o.flows.next > chunkLen {
		// Emptied (a commit took every flow, the peer removed them): a
		// Go map never shrinks, nor do the slab's chunks, so a standby
		// that took over would hold its old copy's memory beside the
		// flows it now owns. Start afresh.
		o.emptyFlows()
	}
	return true
}

// emptyFlows drops every flow of o, and the memory that held them, with
// their digest sums.
func (o *origin) emptyFlows() {
	o.flows = newSlab[extEntry]()
	o.dsum = nil
}

// Digest returns the bucket digests among nb buckets (at most 4096) of the
// flows origin replicated, and their number. The sums are kept as entries
// change: this costs 4096 additions.
func (c *External) Digest(origin string, nb int) (sums []uint64, flows int) {
	sums = make([]uint64, nb)
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byName[origin]
	if !ok {
		return sums, 0
	}
	o := c.origins[i]
	if o.dsum != nil {
		shift := bits.TrailingZeros(uint(fineBuckets / nb))
		for b, v := range o.dsum {
			sums[b>>shift] += v
		}
	}
	return sums, o.flows.len()
}

// digestByPass is External.Digest computed by a pass over the flows.
func (c *External) digestByPass(origin string, nb int) []uint64 {
	sums := make([]uint64, nb)
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byName[origin]
	if !ok {
		return sums
	}
	c.origins[i].flows.each(func(k flow.Key, e *extEntry) {
		f := e.flow(k)
		kh := KeyHash(&k)
		sums[bucketOfHash(kh, nb)] += stateHash(kh, &f.Reply, f.Status, f.Mark, &f.TCP, f.Extra)
	})
	return sums
}

// Repair applies a state an origin sent to repair drift, and reports
// whether it changed anything (a missing or different flow). It behaves as
// Apply otherwise.
func (c *External) Repair(origin string, ch Change, now time.Time) bool {
	c.mu.Lock()
	o := c.originLocked(origin)
	var old extEntry
	p, had := o.flows.get(ch.Flow.Key)
	if had {
		old = *p
	}
	c.mu.Unlock()
	changed := !had
	if had {
		f := old.flow(ch.Flow.Key)
		changed = !f.SameState(&ch.Flow)
	}
	c.Apply(origin, ch, now)
	return changed
}

// Prune removes origin's flows that fall in the given buckets (among nb)
// and are not in keep: the flows the origin no longer has. It returns how
// many it removed.
func (c *External) Prune(origin string, nb int, buckets map[uint32]bool, keep map[flow.Key]struct{}) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byName[origin]
	if !ok {
		return 0
	}
	o := c.origins[i]
	n := 0
	o.flows.each(func(k flow.Key, _ *extEntry) {
		if _, kept := keep[k]; kept || !buckets[BucketOf(&k, nb)] {
			return
		}
		o.del(k)
		c.stats.RemovedByKey++
		n++
	})
	return n
}

// ByOrigin returns how many flows each origin has in the cache (origins
// with none included once they were seen).
func (c *External) ByOrigin() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.origins))
	for _, o := range c.origins {
		out[o.name] = o.flows.len()
	}
	return out
}

// maxBuckets is the most buckets a digest has.
const maxBuckets = 4096

// DigestBuckets returns the bucket count for a table of flows: about 256
// flows a bucket, between 64 and 4096 buckets, a power of two.
func DigestBuckets(flows int) int {
	nb := 64
	for nb < maxBuckets && nb*256 < flows {
		nb *= 2
	}
	return nb
}
