package cache

import (
	"sync"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Expectations are cached apart from flows: a node holds a handful (one
// per FTP transfer being set up, per SIP call), so plain maps do, and the
// flow store's compaction is not needed. Each expectation names its master
// flow (MasterKey); both caches keep them tied to it.

// ExpectChange is one replicated expectation change: its current state,
// or its removal (the kernel used it or it expired).
type ExpectChange struct {
	Expect  flow.Expect
	Deleted bool
}

// ExpectStats are counters of the internal expectation cache.
type ExpectStats struct {
	Expectations int    `json:"expectations"`
	Created      uint64 `json:"created"`     // added by events or reconcile
	Deleted      uint64 `json:"deleted"`     // removed by events or reconcile
	ReconAdded   uint64 `json:"recon_added"` // a reconcile added (missed NEW)
	ReconGone    uint64 `json:"recon_gone"`  // a reconcile removed (missed DESTROY)
	Dirty        int    `json:"dirty"`       // changes waiting to be replicated
}

type iexp struct {
	e   flow.Expect
	ref int64  // Unix nanoseconds when e.Timeout was read
	seq uint32 // event counter at the last event
	gen uint32 // reconcile generation that last saw it
}

// InternalExpect is the cache of this node's own expectations, fed by the
// kernel's expectation events and reconciled with dumps like Internal.
type InternalExpect struct {
	now func() time.Time

	// mu guards every field below.
	mu        sync.Mutex
	m         map[flow.ExpectKey]*iexp
	seq, gen  uint32
	recons    int
	tombs     map[flow.ExpectKey]uint32
	dirty     map[flow.ExpectKey]struct{}
	noChanges bool
	notify    chan struct{}
	stats     ExpectStats
}

// NewInternalExpect returns an empty internal expectation cache.
func NewInternalExpect() *InternalExpect {
	return &InternalExpect{
		now:    time.Now,
		m:      make(map[flow.ExpectKey]*iexp),
		tombs:  make(map[flow.ExpectKey]uint32),
		dirty:  make(map[flow.ExpectKey]struct{}),
		notify: make(chan struct{}, 1),
	}
}

// SetClock replaces the cache's clock (tests).
func (c *InternalExpect) SetClock(now func() time.Time) { c.now = now }

// Changed returns a channel that receives a value whenever changes wait to
// be taken with TakeChanges. One receiver only.
func (c *InternalExpect) Changed() <-chan struct{} { return c.notify }

// DisableChanges stops recording changes (a node that does not replicate).
func (c *InternalExpect) DisableChanges() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.noChanges = true
	clear(c.dirty)
}

func (c *InternalExpect) markDirty(k flow.ExpectKey) {
	if c.noChanges {
		return
	}
	c.dirty[k] = struct{}{}
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// Upsert records a NEW event (or a dumped expectation) for e.
func (c *InternalExpect) Upsert(e *flow.Expect) {
	now := c.now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	delete(c.tombs, e.ExpectKey)
	x, ok := c.m[e.ExpectKey]
	if !ok {
		x = &iexp{}
		c.m[e.ExpectKey] = x
		c.stats.Created++
	}
	changed := !ok || !x.e.SameState(e)
	x.e, x.ref, x.seq = *e, now, c.seq
	if changed {
		c.markDirty(e.ExpectKey)
	}
}

// Delete records a DESTROY event for k.
func (c *InternalExpect) Delete(k flow.ExpectKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	if c.recons > 0 {
		c.tombs[k] = c.seq
	}
	if _, ok := c.m[k]; ok {
		delete(c.m, k)
		c.stats.Deleted++
		c.markDirty(k)
	}
}

// Flush empties the cache (peers are not told) and returns how many
// expectations it held.
func (c *InternalExpect) Flush() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.m)
	c.seq++
	clear(c.m)
	clear(c.dirty)
	clear(c.tombs)
	return n
}

// Len returns the number of cached expectations.
func (c *InternalExpect) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// aged returns x's expectation with its timeout as of now.
func aged(x *iexp, now int64) flow.Expect {
	e := x.e
	if d := now - x.ref; d > 0 {
		e.Timeout -= min(e.Timeout, uint32(d/int64(time.Second)))
	}
	return e
}

// Snapshot returns every expectation, timeouts as of now.
func (c *InternalExpect) Snapshot() []flow.Expect {
	now := c.now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]flow.Expect, 0, len(c.m))
	for _, x := range c.m {
		out = append(out, aged(x, now))
	}
	return out
}

// Keys returns the keys of every cached expectation.
func (c *InternalExpect) Keys() []flow.ExpectKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]flow.ExpectKey, 0, len(c.m))
	for k := range c.m {
		out = append(out, k)
	}
	return out
}

// Stats returns the cache's counters.
func (c *InternalExpect) Stats() ExpectStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Expectations = len(c.m)
	s.Dirty = len(c.dirty)
	return s
}

// TakeChanges removes up to max pending changes (all when max <= 0) and
// returns each expectation's current state or its removal.
func (c *InternalExpect) TakeChanges(max int) []ExpectChange {
	now := c.now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.dirty)
	if max > 0 && n > max {
		n = max
	}
	out := make([]ExpectChange, 0, n)
	for k := range c.dirty {
		if len(out) == n {
			break
		}
		delete(c.dirty, k)
		out = append(out, c.currentLocked(k, now))
	}
	if len(c.dirty) > 0 {
		select {
		case c.notify <- struct{}{}:
		default:
		}
	}
	return out
}

func (c *InternalExpect) currentLocked(k flow.ExpectKey, now int64) ExpectChange {
	if x, ok := c.m[k]; ok {
		return ExpectChange{Expect: aged(x, now)}
	}
	return ExpectChange{Expect: flow.Expect{ExpectKey: k}, Deleted: true}
}

// Current returns the change that brings a peer to k's current state (for
// resends): its state, or its removal.
func (c *InternalExpect) Current(k flow.ExpectKey) ExpectChange {
	now := c.now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.currentLocked(k, now)
}

// ExpectReconcile brings the cache to a dump of the kernel's expectations
// taken while events keep arriving: events applied after BeginReconcile
// win over the dump. One runs at a time; the caller serializes them.
type ExpectReconcile struct {
	c     *InternalExpect
	start uint32
	gen   uint32
	res   ExpectReconcileResult
}

// ExpectReconcileResult counts what a reconcile changed.
type ExpectReconcileResult struct {
	Added   int `json:"added"`
	Fixed   int `json:"fixed"`
	Removed int `json:"removed"`
}

// BeginReconcile starts a reconcile.
func (c *InternalExpect) BeginReconcile() *ExpectReconcile {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recons++
	c.gen++
	return &ExpectReconcile{c: c, start: c.seq, gen: c.gen}
}

// Add applies one dumped expectation.
func (r *ExpectReconcile) Add(e *flow.Expect) {
	c := r.c
	now := c.now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.tombs[e.ExpectKey]; ok && newer(s, r.start) {
		return // destroyed after the dump began
	}
	x, ok := c.m[e.ExpectKey]
	if !ok {
		c.m[e.ExpectKey] = &iexp{e: *e, ref: now, seq: r.start, gen: r.gen}
		c.stats.Created++
		c.stats.ReconAdded++
		r.res.Added++
		c.markDirty(e.ExpectKey)
		return
	}
	x.gen = r.gen
	if newer(x.seq, r.start) {
		return // an event newer than the dump already set it
	}
	if !x.e.SameState(e) {
		r.res.Fixed++
		c.markDirty(e.ExpectKey)
	}
	x.e, x.ref = *e, now
}

// Finish removes what the dump did not contain (unless an event touched it
// after the dump began) and ends the reconcile.
func (r *ExpectReconcile) Finish() ExpectReconcileResult {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, x := range c.m {
		if x.gen == r.gen || newer(x.seq, r.start) {
			continue
		}
		delete(c.m, k)
		c.stats.Deleted++
		c.stats.ReconGone++
		r.res.Removed++
		c.markDirty(k)
	}
	c.endLocked()
	return r.res
}

// Abort ends a reconcile whose dump failed.
func (r *ExpectReconcile) Abort() {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	r.c.endLocked()
}

func (c *InternalExpect) endLocked() {
	c.recons--
	if c.recons == 0 {
		clear(c.tombs)
	}
}
