package cache

import (
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// ExternalExpect is an expectation a peer replicated (a copy).
type ExternalExpect struct {
	Origin string
	// Expect's Timeout is what the origin reported shortly before
	// Received.
	Expect   flow.Expect
	Received time.Time
}

// Age returns how old the reported timeout is at now.
func (e *ExternalExpect) Age(now time.Time) time.Duration { return max(0, now.Sub(e.Received)) }

// extExpect is what External stores per expectation.
type extExpect struct {
	e        flow.Expect
	gen      uint32 // origin's bulk generation when last applied
	received int64  // Unix nanoseconds
}

// ApplyExpect records an expectation change replicated by origin and
// received at now.
func (c *External) ApplyExpect(origin string, ch ExpectChange, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.originLocked(origin)
	c.stats.ExpectApplied++
	if ch.Deleted {
		delete(o.exps, ch.Expect.ExpectKey)
		return
	}
	if o.exps == nil {
		o.exps = make(map[flow.ExpectKey]extExpect)
	}
	o.exps[ch.Expect.ExpectKey] = extExpect{e: ch.Expect, gen: o.gen, received: now.UnixNano()}
}

// dropExpectsOfLocked removes o's expectations whose master is k: the
// kernel removes an expectation with its master.
func (o *origin) dropExpectsOfLocked(k flow.Key) {
	for ek, x := range o.exps {
		if x.e.MasterKey() == k {
			delete(o.exps, ek)
		}
	}
}

// ExpectLen returns the number of expectations of every origin.
func (c *External) ExpectLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, o := range c.origins {
		n += len(o.exps)
	}
	return n
}

// ExpectSnapshot returns a copy of every expectation, in no particular
// order.
func (c *External) ExpectSnapshot() []ExternalExpect {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ExternalExpect
	for _, o := range c.origins {
		for _, x := range o.exps {
			out = append(out, ExternalExpect{Origin: o.name, Expect: x.e, Received: time.Unix(0, x.received)})
		}
	}
	return out
}

// RemoveExpects removes the expectations for keys, of every origin, and
// returns how many there were.
func (c *External) RemoveExpects(keys []flow.ExpectKey) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range keys {
		for _, o := range c.origins {
			if _, ok := o.exps[k]; ok {
				delete(o.exps, k)
				n++
			}
		}
	}
	c.stats.ExpectRemoved += uint64(n)
	return n
}

// FlushExpects removes origin's expectations, or every origin's when
// origin is "", and returns how many there were.
func (c *External) FlushExpects(origin string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, o := range c.origins {
		if origin == "" || o.name == origin {
			n += len(o.exps)
			o.exps = nil
		}
	}
	return n
}
