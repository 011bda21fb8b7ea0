package cache

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// ExternalEntry is a flow a peer replicated, as returned by External's
// readers (a copy).
type ExternalEntry struct {
	// Origin is the name of the node that replicated the flow.
	Origin string
	Flow   flow.Flow
	// Received is when the flow's state last arrived. Flow.Timeout was the
	// remaining timeout on the origin shortly before.
	Received time.Time
	// IdleAt is how long the flow has carried no packet, as known when the
	// entry was read: the idleness the origin reported plus the time since
	// Received.
	IdleAt time.Duration
}

// extEntry is what External stores per flow: the flow without its key (the
// map key holds it), the receive time, the reported idleness and the bulk
// generation that last refreshed it. 48 bytes on amd64 plus the map slot's
// 40-byte key: the reply tuple, the inverse of the key's tuple for every
// flow that is not NATed, and the rarer attributes live in more, nil for
// most flows. The origin is implied by the per-origin map.
type extEntry struct {
	status   uint32
	timeout  uint32
	mark     uint32
	tcp      flow.TCPInfo
	gen      uint32 // origin's generation when last applied
	idleMs   uint32 // reported idleness in milliseconds, saturating
	received int64  // Unix nanoseconds
	more     *extMore
}

// extMore is the part of an entry few flows have: a reply tuple that is not
// the inverse of the original (NAT), the rarer attributes.
type extMore struct {
	reply flow.Tuple
	extra *flow.Extra
}

func (e *extEntry) flow(k flow.Key) flow.Flow {
	f := flow.Flow{Key: k, Status: e.status, Timeout: e.timeout, Mark: e.mark, TCP: e.tcp}
	if e.more != nil {
		f.Reply, f.Extra = e.more.reply, e.more.extra
	} else {
		f.Reply = k.Orig.Invert(k.Proto)
	}
	return f
}

// origin is the state kept per origin node.
type origin struct {
	name  string
	flows *slab[extEntry]
	exps  map[flow.ExpectKey]extExpect // expectations (expect_external.go)
	gen   uint32                       // bumped by BeginBulk; entries applied since carry it
	bulk  uint64                       // id of the bulk in progress
	inBlk bool                         // a bulk is in progress
	dsum  *[fineBuckets]uint64         // digest sums of flows, kept by replace and del (digest.go)
}

// ExternalStats are counters of the external cache.
type ExternalStats struct {
	Flows        int
	Applied      uint64 // changes applied (states and removals)
	BulksBegun   uint64
	BulksEnded   uint64
	BulkRemoved  uint64 // entries removed at the end of a bulk
	Taken        uint64 // entries removed by Take (commit)
	RemovedByKey uint64 // entries removed by Remove or Delete
	Refused      uint64 // changes refused by the limits (SetLimits)

	Expectations  int    // expectations held
	ExpectApplied uint64 // expectation changes applied
	ExpectRemoved uint64 // expectations removed by RemoveExpects (commit) or a bulk
}

// External is the cache of the flows peers replicated, kept per origin node.
// Entries of a peer that died are kept until they are committed, flushed or
// removed by the end of a bulk from the same origin.
//
// Every method is safe for concurrent use; none calls out while holding the
// lock.
type External struct {
	// mu guards every field below.
	mu      sync.Mutex
	origins []*origin // index is the interned origin; never shrinks
	byName  map[string]int
	stats   ExternalStats

	maxPerOrigin int // 0: unbounded (see SetLimits)
	maxOrigins   int
}

// SetLimits bounds the entries kept per origin and the number of origins
// (0: unbounded, the default). Apply refuses a new flow or a new origin
// beyond them; what is held already stays.
func (c *External) SetLimits(maxPerOrigin, maxOrigins int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxPerOrigin, c.maxOrigins = maxPerOrigin, maxOrigins
}

// Full reports whether origin holds as many flows as SetLimits lets it:
// its new flows are being refused, so this copy cannot match the origin's
// table (drift checks skip it).
func (c *External) Full(origin string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byName[origin]
	return ok && c.maxPerOrigin > 0 && c.origins[i].flows.len() >= c.maxPerOrigin
}

// NewExternal returns an empty external cache.
func NewExternal() *External {
	return &External{byName: make(map[string]int)}
}

// originLocked returns the state of the named origin, creating it.
func (c *External) originLocked(name string) *origin {
	if i, ok := c.byName[name]; ok {
		return c.origins[i]
	}
	o := &origin{name: name, flows: newSlab[extEntry]()}
	c.byName[name] = len(c.origins)
	c.origins = append(c.origins, o)
	return o
}

// Apply records a change replicated by origin and received at now: the
// flow's new state, or its removal when ch.Deleted. It returns false, and
// counts it in ExternalStats.Refused, when a new flow or a new origin is
// beyond the limits (SetLimits).
func (c *External) Apply(origin string, ch Change, now time.Time) bool {
	take := []bool{true}
	c.ApplyAll(origin, []Change{ch}, now, take)
	return take[0]
}

// ApplyAll is Apply for every chs[i] whose take[i] is set (take is as long
// as chs), under one lock: a datagram's changes at once. A change the
// limits refuse has its take[i] cleared.
func (c *External) ApplyAll(origin string, chs []Change, now time.Time, take []bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byName[origin]; !ok && c.maxOrigins > 0 && len(c.origins) >= c.maxOrigins {
		for i := range take {
			if take[i] {
				c.stats.Refused++
				take[i] = false
			}
		}
		return
	}
	o := c.originLocked(origin)
	at := now.UnixNano()
	for i := range chs {
		if take[i] && !c.applyLocked(o, &chs[i], at) {
			take[i] = false
		}
	}
}

func (c *External) applyLocked(o *origin, ch *Change, now int64) bool {
	if ch.Deleted {
		c.stats.Applied++
		o.del(ch.Flow.Key)
		o.dropExpectsOfLocked(ch.Flow.Key)
		return true
	}
	old, had := o.flows.get(ch.Flow.Key)
	if !had && c.maxPerOrigin > 0 && o.flows.len() >= c.maxPerOrigin {
		c.stats.Refused++
		return false
	}
	c.stats.Applied++
	f := &ch.Flow
	idle := ch.Idle.Milliseconds()
	if idle < 0 {
		idle = 0
	}
	x := f.Extra
	if x.IsZero() {
		x = nil
	}
	var more *extMore
	if x != nil || f.Reply != f.Orig.Invert(f.Proto) {
		more = &extMore{reply: f.Reply, extra: x}
	}
	o.replace(f.Key, old, extEntry{
		status:   f.Status,
		timeout:  f.Timeout,
		mark:     f.Mark,
		tcp:      f.TCP,
		gen:      o.gen,
		idleMs:   uint32(min(idle, math.MaxUint32)),
		received: now,
		more:     more,
	})
	return true
}

// Delete removes origin's entry for k, if any.
func (c *External) Delete(origin string, k flow.Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byName[origin]
	if !ok {
		return
	}
	o := c.origins[i]
	if o.del(k) {
		c.stats.RemovedByKey++
	}
}

// BeginBulk marks the start of a bulk transfer (a full copy of origin's
// table) identified by epoch. Entries applied from now on count as
// refreshed by the bulk. A BeginBulk while another bulk of the same origin
// is in progress abandons that one.
func (c *External) BeginBulk(origin string, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.originLocked(origin)
	o.gen++
	o.bulk = epoch
	o.inBlk = true
	c.stats.BulksBegun++
}

// EndBulk ends the bulk begun with the same epoch and removes origin's
// entries the bulk did not refresh: the flows the origin no longer has. It
// returns how many were removed. An EndBulk without a matching BeginBulk
// removes nothing.
func (c *External) EndBulk(origin string, epoch uint64) (removed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byName[origin]
	if !ok {
		return 0
	}
	o := c.origins[i]
	if !o.inBlk || o.bulk != epoch {
		return 0
	}
	o.inBlk = false
	o.flows.each(func(k flow.Key, e *extEntry) {
		if e.gen != o.gen {
			o.del(k)
			removed++
		}
	})
	for k, x := range o.exps {
		if x.gen != o.gen {
			delete(o.exps, k)
			c.stats.ExpectRemoved++
		}
	}
	c.stats.BulksEnded++
	c.stats.BulkRemoved += uint64(removed)
	return removed
}

// Len returns the number of entries of every origin.
func (c *External) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, o := range c.origins {
		n += o.flows.len()
	}
	return n
}

// Stats returns the cache's counters.
func (c *External) Stats() ExternalStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	for _, o := range c.origins {
		s.Flows += o.flows.len()
		s.Expectations += len(o.exps)
	}
	return s
}

func entryOf(o *origin, k flow.Key, e *extEntry, now time.Time) ExternalEntry {
	idle := time.Duration(e.idleMs) * time.Millisecond
	if d := now.UnixNano() - e.received; d > 0 {
		idle += time.Duration(d)
	}
	return ExternalEntry{Origin: o.name, Flow: e.flow(k), Received: time.Unix(0, e.received), IdleAt: idle}
}

// Snapshot returns a copy of every entry, in no particular order.
func (c *External) Snapshot() []ExternalEntry {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, o := range c.origins {
		n += o.flows.len()
	}
	out := make([]ExternalEntry, 0, n)
	for _, o := range c.origins {
		o.flows.each(func(k flow.Key, e *extEntry) { out = append(out, entryOf(o, k, e, now)) })
	}
	return out
}

// Ref names one entry of the cache without copying its flow: the key, the
// origin, the idleness as of the call and the receive time. A commit orders
// refs (64 bytes each) and reads the entries a chunk at a time with
// Entries, instead of copying the whole cache at once.
type Ref struct {
	Key      flow.Key
	IdleAt   time.Duration
	Received int64 // Unix nanoseconds
	origin   int32
}

// OriginIndex identifies the ref's origin among the cache's origins.
func (r *Ref) OriginIndex() int { return int(r.origin) }

// Refs returns a ref to every entry, in no particular order.
func (c *External) Refs() []Ref {
	now := time.Now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, o := range c.origins {
		n += o.flows.len()
	}
	out := make([]Ref, 0, n)
	for i, o := range c.origins {
		o.flows.each(func(k flow.Key, e *extEntry) {
			idle := time.Duration(e.idleMs)*time.Millisecond + time.Duration(max(0, now-e.received))
			out = append(out, Ref{Key: k, IdleAt: idle, Received: e.received, origin: int32(i)})
		})
	}
	return out
}

// Entries appends to dst the entries refs name that are still in the cache,
// as of now (an entry applied again since Refs is read as it is now), and
// returns the extended slice.
func (c *External) Entries(refs []Ref, dst []ExternalEntry) []ExternalEntry {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range refs {
		r := &refs[i]
		if int(r.origin) >= len(c.origins) {
			continue
		}
		o := c.origins[r.origin]
		if e, ok := o.flows.get(r.Key); ok {
			dst = append(dst, entryOf(o, r.Key, e, now))
		}
	}
	return dst
}

// LeastIdle returns the n entries that have been idle the shortest time,
// least idle first, without copying the rest: a failover commits these
// first, before it orders the whole cache. A key several origins hold may
// come more than once.
func (c *External) LeastIdle(n int) []ExternalEntry {
	if n <= 0 {
		return nil
	}
	now := time.Now()
	type cand struct {
		idle time.Duration
		o    *origin
		k    flow.Key
	}
	// A max-heap on idleness of the n least idle seen so far.
	h := make([]cand, 0, n)
	up := func(i int) {
		for i > 0 {
			p := (i - 1) / 2
			if h[p].idle >= h[i].idle {
				return
			}
			h[p], h[i] = h[i], h[p]
			i = p
		}
	}
	down := func(i int) {
		for {
			l, big := 2*i+1, i
			if l < len(h) && h[l].idle > h[big].idle {
				big = l
			}
			if r := l + 1; r < len(h) && h[r].idle > h[big].idle {
				big = r
			}
			if big == i {
				return
			}
			h[i], h[big] = h[big], h[i]
			i = big
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range c.origins {
		o.flows.each(func(k flow.Key, e *extEntry) {
			idle := time.Duration(e.idleMs)*time.Millisecond + time.Duration(max(0, now.UnixNano()-e.received))
			switch {
			case len(h) < n:
				h = append(h, cand{idle, o, k})
				up(len(h) - 1)
			case idle < h[0].idle:
				h[0] = cand{idle, o, k}
				down(0)
			}
		})
	}
	out := make([]ExternalEntry, len(h))
	for i, x := range h {
		e, _ := x.o.flows.get(x.k)
		out[i] = entryOf(x.o, x.k, e, now)
	}
	slices.SortFunc(out, func(a, b ExternalEntry) int { return cmp.Compare(a.IdleAt, b.IdleAt) })
	return out
}

// Get returns origin's entry for k.
func (c *External) Get(origin string, k flow.Key) (ExternalEntry, bool) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byName[origin]
	if !ok {
		return ExternalEntry{}, false
	}
	o := c.origins[i]
	e, ok := o.flows.get(k)
	if !ok {
		return ExternalEntry{}, false
	}
	return entryOf(o, k, e, now), true
}

// Take removes the entries for keys, of every origin, and returns them (for
// commit: what was committed leaves the cache). Keys without an entry are
// skipped.
func (c *External) Take(keys []flow.Key) []ExternalEntry {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]ExternalEntry, 0, len(keys))
	for _, k := range keys {
		for _, o := range c.origins {
			if e, ok := o.flows.get(k); ok {
				out = append(out, entryOf(o, k, e, now))
				o.del(k)
			}
		}
	}
	c.stats.Taken += uint64(len(out))
	return out
}

// Remove removes the entries for keys, of every origin, and returns how many
// there were.
func (c *External) Remove(keys []flow.Key) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range keys {
		for _, o := range c.origins {
			if o.del(k) {
				n++
			}
		}
	}
	c.stats.RemovedByKey += uint64(n)
	return n
}

// Flush removes origin's entries, or every origin's when origin is "", and
// returns how many there were.
func (c *External) Flush(origin string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, o := range c.origins {
		if origin == "" || o.name == origin {
			n += o.flows.len()
			o.emptyFlows()
			o.exps = nil // the expectations go with their masters
		}
	}
	return n
}

// Origins returns the names of the nodes that have entries in the cache,
// sorted.
func (c *External) Origins() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, o := range c.origins {
		if o.flows.len() > 0 {
			out = append(out, o.name)
		}
	}
	slices.Sort(out)
	return out
}
