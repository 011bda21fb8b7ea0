// Package cache holds ctsyncd's two flow caches: Internal, the flows of this
// node's own kernel (after filters), the single source of truth for what the
// node replicates; and External, the flows peers replicated to it, kept per
// origin node and committed on failover.
//
// Package cache does not talk to the kernel or the network. Both caches
// expose a narrow locked API (no owner goroutine): every method is safe for
// concurrent use, and no method calls out while holding the lock.
package cache

import (
	"slices"
	"sync"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// TimeoutPolicy returns the timeout in seconds the kernel set a flow to at
// its last packet, given its state and remaining timeout (e.g. 432000 for an
// established TCP flow, 300 while it has unacknowledged data). With it, a
// flow's idleness is known from its remaining timeout whenever it is read.
// nil means "unknown": idleness then counts from the first sighting.
type TimeoutPolicy func(f *flow.Flow) uint32

// Entry is a cached flow with what the cache knows of its activity, as
// handed out by the cache (a copy).
type Entry struct {
	flow.Flow
	// Refreshed is when the kernel last reported this flow (event or dump),
	// in Unix nanoseconds; Flow.Timeout was the remaining timeout then.
	Refreshed int64
	// Peak is the highest timeout known for the flow in its current state:
	// a packet resets the remaining timeout to it, so Peak-Timeout is how
	// long the flow had been idle at Refreshed.
	Peak uint32
}

// tick is the resolution of entry.ref.
const tick = 100 * time.Millisecond

func (c *Internal) ticks(unixNano int64) uint32 {
	return uint32((unixNano - c.base) / int64(tick))
}

func (c *Internal) export(k flow.Key, e *entry) Entry {
	return Entry{Flow: e.flow(k), Refreshed: c.base + int64(e.ref)*int64(tick), Peak: e.peak}
}

// change builds the change that replicates e: the flow with its remaining
// timeout as of now (the kernel reported it at the last refresh, up to a
// reconcile interval ago) and its idleness.
func (c *Internal) change(k flow.Key, e *entry, now time.Time) Change {
	x := c.export(k, e)
	idle := x.Idle(now) // before the timeout is aged: Idle adds the age itself
	if d := now.UnixNano() - x.Refreshed; d > 0 {
		x.Timeout -= min(x.Timeout, uint32(d/int64(time.Second)))
	}
	return Change{Flow: x.Flow, Idle: idle}
}

// newer reports whether change counter a is after b (serial arithmetic).
func newer(a, b uint32) bool { return int32(a-b) > 0 }

// Idle returns how long the flow has carried no packet, as known at now.
func (e *Entry) Idle(now time.Time) time.Duration {
	idle := time.Duration(e.Peak-min(e.Peak, e.Timeout)) * time.Second
	if d := now.UnixNano() - e.Refreshed; d > 0 {
		idle += time.Duration(d)
	}
	return idle
}

// Change is one replicated change: the flow's current state, or its removal.
type Change struct {
	Flow    flow.Flow
	Deleted bool
	// Idle is how long the flow has been idle, as known when the change was
	// taken. The receiver adds the time since.
	Idle time.Duration
}

// InternalStats are counters of the internal cache.
type InternalStats struct {
	Flows       int
	Created     uint64 // flows added by events or reconcile
	Updated     uint64 // state changes
	Deleted     uint64 // flows removed by events or reconcile
	Reconciles  uint64 // reconcile dumps applied
	ReconAdded  uint64 // flows a reconcile added (missed NEW events)
	ReconFixed  uint64 // flows a reconcile corrected (missed UPDATEs)
	ReconGone   uint64 // flows a reconcile removed (missed DESTROYs)
	Dirty       int    // changes waiting to be replicated
	LastRefresh time.Time
	// Young is how many flows wait for MinAge before their first
	// replication; NeverSent counts flows removed while still waiting.
	Young     int
	NeverSent uint64
}

// Internal is the cache of this node's own flows.
type Internal struct {
	policy TimeoutPolicy
	now    func() time.Time
	base   int64 // Unix nanoseconds that entry.ref counts from

	// mu guards every field below.
	mu     sync.Mutex
	flows  *store
	dsum   *[fineBuckets]uint64 // digest sums, kept as flows change (digest.go)
	seq    uint32               // bumped by every event-driven change
	recons int                  // reconciles in progress: keep tombstones while > 0
	gen    uint32               // reconcile generation
	tombs  map[flow.Key]uint32
	// queue holds the pending changes from head, oldest first: a live
	// entry's slot (the entry is marked queued, so it is queued once), a
	// removed entry's slot (marked dead, freed when taken) or noSlot for a
	// removal. The pending mark lives in the slab entry: a change costs no
	// map operation beyond the index lookup the event needs anyway.
	queue     []queued
	head      int
	noChanges bool
	notify    chan struct{}
	stats     InternalStats
	lastRef   time.Time
	// Delayed first replication (SetMinAge): young holds the birth tick of
	// each flow not yet replicated, youngQ the same in birth order (stale
	// elements are skipped), bulkTick when a bulk last read the keys.
	minAge   uint32 // ticks; 0: off
	young    map[flow.Key]uint32
	youngQ   []youngRef
	bulkTick uint32
}

// queued is one element of Internal's change queue.
type queued struct {
	key flow.Key
	i   uint32 // slot in flows, or noSlot: the flow was removed
}

const noSlot = ^uint32(0)

type youngRef struct {
	key  flow.Key
	born uint32
}

// NewInternal returns an empty internal cache. policy may be nil.
func NewInternal(policy TimeoutPolicy) *Internal {
	return &Internal{
		policy: policy,
		now:    time.Now,
		base:   time.Now().Add(-time.Hour).UnixNano(),
		flows:  newStore(),
		tombs:  make(map[flow.Key]uint32),
		notify: make(chan struct{}, 1),
		young:  make(map[flow.Key]uint32),
	}
}

// SetMinAge delays the first replication of each new flow until it has
// lived d (at tick resolution, 100 ms), so that short-lived flows are never
// sent: their destroy is not sent either. Flows already cached are not
// delayed. Bulk transfers (Keys, Current) are unaffected. 0 turns it off.
// The caller calls PromoteAged periodically while it is on.
func (c *Internal) SetMinAge(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.minAge = uint32((d + tick - 1) / tick)
	if c.minAge == 0 {
		for k := range c.young {
			if i, e, ok := c.flows.getIdx(k); ok {
				c.markDirty(k, i, e)
			}
		}
		clear(c.young)
		c.youngQ = nil
	}
}

// PromoteAged releases the flows that have reached the minimum age to
// replication, and returns how long until the next one does (0 if none
// waits).
func (c *Internal) PromoteAged() time.Duration {
	now := c.ticks(c.now().UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	i := 0
	for ; i < len(c.youngQ); i++ {
		r := c.youngQ[i]
		born, ok := c.young[r.key]
		if !ok || born != r.born {
			continue // removed, or re-born later (a later element)
		}
		if now-born < c.minAge {
			break
		}
		delete(c.young, r.key)
		if i, e, ok := c.flows.getIdx(r.key); ok {
			c.markDirty(r.key, i, e)
		}
	}
	c.youngQ = c.youngQ[i:]
	if len(c.youngQ) == 0 {
		c.youngQ = nil // let a burst's backing array go
		return 0
	}
	return time.Duration(c.minAge-(now-c.youngQ[0].born)) * tick
}

// born records a new flow (slot i, entry e): with a minimum age it waits in
// young. A pending removal of an earlier flow with the same key still goes
// out first, so the peer drops the old flow, then hears of the new one once
// it is old enough.
func (c *Internal) born(k flow.Key, i uint32, e *entry, now uint32) {
	if c.minAge == 0 || c.noChanges {
		c.markDirty(k, i, e)
		return
	}
	c.young[k] = now
	c.youngQ = append(c.youngQ, youngRef{k, now})
}

// changed marks a change of an existing flow for replication, unless the
// flow is still young: its first replication carries its state then.
func (c *Internal) changed(k flow.Key, i uint32, e *entry) {
	if len(c.young) > 0 {
		if _, ok := c.young[k]; ok {
			return
		}
	}
	c.markDirty(k, i, e)
}

// gone marks the destroy of a flow just unlinked from the index (slot i,
// entry e) for replication, unless the flow was never replicated (still
// young, and no bulk read it since it was born), and frees its slot unless
// its queued change still refers to it.
func (c *Internal) gone(k flow.Key, i uint32, e *entry) {
	if born, ok := c.young[k]; ok {
		delete(c.young, k)
		if int32(c.bulkTick-born) < 0 {
			c.stats.NeverSent++
			c.flows.release(i)
			return
		}
	}
	switch {
	case c.noChanges:
		c.flows.release(i)
	case e.queued:
		e.dead = true // its queue element becomes the removal
	default:
		c.flows.release(i)
		c.queue = append(c.queue, queued{key: k, i: noSlot})
		c.wake()
	}
}

// SetClock replaces the cache's clock (tests).
func (c *Internal) SetClock(now func() time.Time) {
	c.now = now
	c.base = now().Add(-time.Hour).UnixNano()
}

// Changed returns a channel that receives a value whenever changes wait to
// be taken with TakeChanges. One receiver only.
func (c *Internal) Changed() <-chan struct{} { return c.notify }

// DisableChanges stops recording changes for TakeChanges (a node that does
// not replicate).
func (c *Internal) DisableChanges() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.noChanges = true
	c.clearDirty()
}

// clearDirty forgets every pending change.
func (c *Internal) clearDirty() {
	for _, q := range c.queue[c.head:] {
		if q.i == noSlot {
			continue
		}
		if e := c.flows.at(q.i); e.dead {
			c.flows.release(q.i)
		} else {
			e.queued = false
		}
	}
	c.queue, c.head = c.queue[:0], 0
}

// pending is the number of queued changes.
func (c *Internal) pending() int { return len(c.queue) - c.head }

// markDirty queues the change of the live flow k (slot i, entry e), once.
func (c *Internal) markDirty(k flow.Key, i uint32, e *entry) {
	if c.noChanges {
		return
	}
	if !e.queued {
		e.queued = true
		c.queue = append(c.queue, queued{key: k, i: i})
	}
	c.wake()
}

func (c *Internal) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// peak returns the timeout f had at its last packet. Without a policy it is
// the highest timeout seen in the flow's state (prev, 0 for none).
func (c *Internal) peak(f *flow.Flow, prev uint32) uint32 {
	if c.policy != nil {
		return max(f.Timeout, c.policy(f))
	}
	return max(f.Timeout, prev)
}

// Upsert records a NEW or UPDATE event for f.
func (c *Internal) Upsert(f *flow.Flow) {
	now := c.ticks(c.now().UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	if len(c.tombs) > 0 {
		delete(c.tombs, f.Key)
	}
	i, e, ok := c.flows.getIdx(f.Key)
	if !ok {
		i, e = c.flows.addIdx(f.Key)
		e.set(f)
		c.dgIn(&f.Key, e)
		e.ref, e.peak, e.seq = now, c.peak(f, 0), c.seq
		c.stats.Created++
		c.born(f.Key, i, e, now)
		return
	}
	changed := !e.sameState(f)
	prev := e.peak
	if e.TCP.State != f.TCP.State {
		prev = 0 // a new state has its own timeout
	}
	var kh uint64
	if changed {
		kh = c.dgOut(&f.Key, e)
	}
	e.set(f)
	if changed {
		c.dgInHash(kh, e)
	}
	e.ref = now
	e.peak = c.peak(f, prev)
	e.seq = c.seq
	if changed {
		c.stats.Updated++
		c.changed(f.Key, i, e)
	}
}

// Delete records a DESTROY event for k.
func (c *Internal) Delete(k flow.Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	if c.recons > 0 {
		c.tombs[k] = c.seq
	}
	if i, e, ok := c.flows.getIdx(k); ok {
		c.dgOut(&k, e)
		c.flows.unlink(k)
		c.stats.Deleted++
		c.gone(k, i, e)
	}
}

// Flush empties the cache. Peers are not told: a flush is local.
func (c *Internal) Flush() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.flows.len()
	c.seq++
	c.flows.clear()
	c.dsum = nil
	c.queue, c.head = c.queue[:0], 0 // their slots went with the store
	clear(c.tombs)
	clear(c.young)
	c.youngQ = nil
	return n
}

// Len returns the number of cached flows.
func (c *Internal) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flows.len()
}

// Get returns a copy of the entry for k.
func (c *Internal) Get(k flow.Key) (Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.flows.get(k)
	if !ok {
		return Entry{}, false
	}
	return c.export(k, e), true
}

// Snapshot returns a copy of every entry, in no particular order.
func (c *Internal) Snapshot() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Entry, 0, c.flows.len())
	c.flows.each(func(k flow.Key, e *entry) { out = append(out, c.export(k, e)) })
	return out
}

// Keys returns the keys of every cached flow, in no particular order. It is
// what a bulk transfer sends: young flows included, so their destroys are
// replicated from then on.
func (c *Internal) Keys() []flow.Key {
	now := c.ticks(c.now().UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bulkTick = now
	out := make([]flow.Key, 0, c.flows.len())
	c.flows.each(func(k flow.Key, _ *entry) { out = append(out, k) })
	return out
}

// Stats returns the cache's counters.
func (c *Internal) Stats() InternalStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Flows = c.flows.len()
	s.Dirty = c.pending()
	s.Young = len(c.young)
	s.LastRefresh = c.lastRef
	return s
}

// TakeChanges removes up to max pending changes (all when max <= 0) and
// returns them, each with the flow's current state: several changes to one
// flow since the last call come out as one.
func (c *Internal) TakeChanges(max int) []Change { return c.AppendChanges(nil, max) }

// AppendChanges is TakeChanges appending to dst (a sender reuses one
// slice rather than allocating one per call).
func (c *Internal) AppendChanges(dst []Change, max int) []Change {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.pending()
	if max > 0 && n > max {
		n = max
	}
	out := slices.Grow(dst, n)
	n += len(out)
	for len(out) < n {
		q := c.queue[c.head]
		c.head++
		if q.i != noSlot {
			e := c.flows.at(q.i)
			e.queued = false
			if !e.dead {
				out = append(out, c.change(q.key, e, now))
				continue
			}
			c.flows.release(q.i)
		}
		out = append(out, Change{Flow: flow.Flow{Key: q.key}, Deleted: true})
	}
	switch {
	case c.head == len(c.queue) && cap(c.queue) > 1<<12:
		c.queue, c.head = nil, 0 // a burst's queue is not kept
	case c.head == len(c.queue):
		c.queue, c.head = c.queue[:0], 0
	case c.head > len(c.queue)/2:
		c.queue = c.queue[:copy(c.queue, c.queue[c.head:])]
		c.head = 0
	}
	if c.pending() > 0 {
		c.wake()
	}
	return out
}

// Current returns the change that brings a peer to the flow's current state
// (for resends): its state, or its removal.
func (c *Internal) Current(k flow.Key) Change {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.flows.get(k); ok {
		return c.change(k, e, now)
	}
	return Change{Flow: flow.Flow{Key: k}, Deleted: true}
}

// Reconcile brings the cache to a dump of the kernel table taken while
// events keep arriving. Call BeginReconcile before starting the dump, Add
// for each dumped flow, then Finish.
//
// One reconcile runs at a time; the caller serializes them.
type Reconcile struct {
	c     *Internal
	start uint32
	gen   uint32
	now   uint32 // ticks
	res   ReconcileResult
}

// ReconcileResult counts what a reconcile changed.
type ReconcileResult struct {
	Added   int `json:"added"`   // flows the cache lacked (missed NEW)
	Fixed   int `json:"fixed"`   // flows whose state differed (missed UPDATE)
	Removed int `json:"removed"` // flows the kernel no longer has (missed DESTROY)
	Active  int `json:"active"`  // flows that carried traffic since the last dump
}

// BeginReconcile starts a reconcile. Events applied after this call win over
// the dump: a flow they changed is not overwritten, and a flow they destroyed
// is not brought back.
func (c *Internal) BeginReconcile() *Reconcile {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recons++
	c.gen++
	return &Reconcile{c: c, start: c.seq, gen: c.gen, now: c.ticks(c.now().UnixNano())}
}

// activitySlack is how far a flow's expiry must move forward between two
// readings to count as traffic seen (timeouts have one-second resolution).
const activitySlack = 2 * time.Second

// Add applies one dumped flow.
func (r *Reconcile) Add(f *flow.Flow) {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.tombs[f.Key]; ok && newer(s, r.start) {
		return // destroyed after the dump began
	}
	i, e, ok := c.flows.getIdx(f.Key)
	if !ok {
		i, e = c.flows.addIdx(f.Key)
		e.set(f)
		c.dgIn(&f.Key, e)
		e.ref, e.peak, e.seq, e.gen = r.now, c.peak(f, 0), r.start, r.gen
		c.stats.Created++
		c.stats.ReconAdded++
		r.res.Added++
		c.born(f.Key, i, e, r.now)
		return
	}
	e.gen = r.gen
	if newer(e.seq, r.start) {
		return // an event newer than the dump already set it
	}
	if !e.sameState(f) {
		prev := e.peak
		if e.TCP.State != f.TCP.State {
			prev = 0
		}
		kh := c.dgOut(&f.Key, e)
		e.set(f)
		c.dgInHash(kh, e)
		e.ref = r.now
		e.peak = c.peak(f, prev)
		c.stats.ReconFixed++
		r.res.Fixed++
		c.changed(f.Key, i, e)
		return
	}
	// Same state: refresh the timeout, and tell peers when the flow showed
	// activity (its expiry moved forward), so their idleness stays right.
	perSec := int64(time.Second / tick)
	oldExpiry := int64(e.ref) + int64(e.Timeout)*perSec
	newExpiry := int64(r.now) + int64(f.Timeout)*perSec
	e.Timeout = f.Timeout
	e.ref = r.now
	e.peak = c.peak(f, e.peak)
	if newExpiry-oldExpiry > int64(activitySlack/tick) {
		r.res.Active++
		c.changed(f.Key, i, e)
	}
}

// Finish removes the flows the dump did not contain (unless an event touched
// them after the dump began) and ends the reconcile.
func (r *Reconcile) Finish() ReconcileResult {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flows.eachIdx(func(k flow.Key, i uint32, e *entry) {
		if e.gen == r.gen || newer(e.seq, r.start) {
			return
		}
		c.dgOut(&k, e)
		c.flows.unlink(k)
		c.stats.Deleted++
		c.stats.ReconGone++
		r.res.Removed++
		c.gone(k, i, e)
	})
	c.recons--
	if c.recons == 0 {
		clear(c.tombs)
	}
	c.stats.Reconciles++
	c.lastRef = time.Unix(0, c.base+int64(r.now)*int64(tick))
	return r.res
}

// Abort ends a reconcile whose dump failed, changing nothing more.
func (r *Reconcile) Abort() {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recons--
	if c.recons == 0 {
		clear(c.tombs)
	}
}
