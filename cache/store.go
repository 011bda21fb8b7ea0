package cache

import "github.com/ctsyncd/ctsyncd/flow"

// state is a flow without its key: the key lives once, in the index.
type state struct {
	Reply   flow.Tuple
	Status  uint32
	Timeout uint32
	Mark    uint32
	TCP     flow.TCPInfo
	// queued: the entry's change waits in Internal's change queue; dead:
	// the flow was removed while queued, and the slot is freed when the
	// queue reaches it (the removal is what is replicated). Both live in
	// the padding after TCP: an entry stays 80 bytes.
	queued, dead bool
	Extra        *flow.Extra
}

// entry is what the internal cache stores per flow: 80 bytes, in a slab.
type entry struct {
	state
	ref  uint32 // Refreshed, in tenths of a second since the cache's base
	peak uint32
	// seq is the cache's change counter when the entry last changed by an
	// event, so that a reconcile does not undo an event newer than its dump
	// (compared with serial arithmetic: it may wrap).
	seq uint32
	// gen is the reconcile generation that last saw the flow in a dump.
	gen uint32
}

func (e *entry) flow(k flow.Key) flow.Flow {
	return flow.Flow{Key: k, Reply: e.Reply, Status: e.Status, Timeout: e.Timeout, Mark: e.Mark, TCP: e.TCP, Extra: e.Extra}
}

func (e *entry) set(f *flow.Flow) {
	e.state = state{Reply: f.Reply, Status: f.Status, Timeout: f.Timeout, Mark: f.Mark, TCP: f.TCP, Extra: f.Extra,
		queued: e.queued}
}

func (e *entry) sameState(f *flow.Flow) bool {
	g := e.flow(f.Key)
	return g.SameState(f)
}

const (
	chunkBits = 12
	chunkLen  = 1 << chunkBits
)

// slab maps keys to values kept in fixed-size chunks, so that a value costs
// its own size plus a 44-byte index slot, with no per-value allocation and
// no size-class rounding; the index's slots stay small, so growing it moves
// 44 bytes a key whatever the value. Value pointers stay valid until the
// value is deleted. Not safe for concurrent use: the caches' locks guard it.
type slab[V any] struct {
	idx    map[flow.Key]uint32
	chunks [][]V
	free   []uint32
	next   uint32
}

// store is the internal cache's slab.
type store = slab[entry]

func newStore() *store { return newSlab[entry]() }

func newSlab[V any]() *slab[V] { return &slab[V]{idx: make(map[flow.Key]uint32)} }

func (s *slab[V]) at(i uint32) *V { return &s.chunks[i>>chunkBits][i&(chunkLen-1)] }

func (s *slab[V]) get(k flow.Key) (*V, bool) {
	_, e, ok := s.getIdx(k)
	return e, ok
}

// getIdx is get with the value's slot.
func (s *slab[V]) getIdx(k flow.Key) (uint32, *V, bool) {
	i, ok := s.idx[k]
	if !ok {
		return 0, nil, false
	}
	return i, s.at(i), true
}

// add returns a zeroed value for k, which must not be present.
func (s *slab[V]) add(k flow.Key) *V {
	_, e := s.addIdx(k)
	return e
}

// addIdx is add with the value's slot.
func (s *slab[V]) addIdx(k flow.Key) (uint32, *V) {
	var i uint32
	if n := len(s.free); n > 0 {
		i = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		i = s.next
		s.next++
		if int(i>>chunkBits) == len(s.chunks) {
			s.chunks = append(s.chunks, make([]V, chunkLen))
		}
	}
	s.idx[k] = i
	return i, s.at(i)
}

func (s *slab[V]) del(k flow.Key) bool {
	i, ok := s.idx[k]
	if !ok {
		return false
	}
	delete(s.idx, k)
	s.release(i)
	return true
}

// unlink removes k from the index and leaves its slot in use: the caller
// releases it (at once, or when its queued change is taken).
func (s *slab[V]) unlink(k flow.Key) { delete(s.idx, k) }

// release frees slot i, which no key indexes.
func (s *slab[V]) release(i uint32) {
	var zero V
	*s.at(i) = zero // drop pointers the value holds
	s.free = append(s.free, i)
}

func (s *slab[V]) len() int { return len(s.idx) }

func (s *slab[V]) clear() { *s = *newSlab[V]() }

// each calls fn for every value; fn may delete the value it is given.
func (s *slab[V]) each(fn func(k flow.Key, e *V)) {
	for k, i := range s.idx {
		fn(k, s.at(i))
	}
}

// eachIdx is each with the values' slots.
func (s *slab[V]) eachIdx(fn func(k flow.Key, i uint32, e *V)) {
	for k, i := range s.idx {
		fn(k, i, s.at(i))
	}
}
