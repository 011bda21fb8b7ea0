package failover

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// Writer writes flows into the kernel's conntrack table. *kernel.Writer
// satisfies it; see its methods for the exact semantics (Commit creates or
// updates and writes max(floor, Timeout-age); Update changes existing
// entries only and writes Timeout as is). Results are in input order, one
// per flow.
type Writer interface {
	Commit(ctx context.Context, flows []flow.Flow, age []time.Duration) ([]kernel.Result, error)
	Update(ctx context.Context, flows []flow.Flow) ([]kernel.Result, error)
}

var _ Writer = (*kernel.Writer)(nil)

// Deleter is the optional part of a Writer that Commit uses to clear an
// entry that clashes with a committed flow (*kernel.Writer has it).
type Deleter interface {
	Delete(ctx context.Context, keys []flow.Key) ([]kernel.Result, error)
}

var _ Deleter = (*kernel.Writer)(nil)

// Defaults of CommitOptions.
const (
	DefaultFirstChunk  = 128
	DefaultMaxChunk    = 65536
	DefaultMaxFailures = 20
)

// CommitOptions configure Commit. Zero values take the defaults.
type CommitOptions struct {
	// Timeout bounds the whole commit (config failover.commit_timeout);
	// flows not written by then stay in the external cache. 0: only ctx
	// bounds it.
	Timeout time.Duration
	// FirstChunk is the number of flows in the first write: the least idle
	// ones, so that the flows that carry traffic land within milliseconds
	// of the takeover. Default DefaultFirstChunk.
	FirstChunk int
	// MaxChunk caps the later writes, which grow (chunkGrowth) from
	// FirstChunk. Default DefaultMaxChunk.
	MaxChunk int
	// MaxFailures is how many failures the report describes one by one
	// (the others are only counted by errno). Default DefaultMaxFailures.
	MaxFailures int
	// Admit, when set, is the receive policy applied once more at commit
	// (package peerpolicy): it may sanitize the flow; a flow it refuses is
	// not written and leaves the cache (Report.Refused).
	Admit func(origin string, f *flow.Flow) bool
}

// Failure describes one flow that could not be committed.
type Failure struct {
	Flow  string `json:"flow"` // conntrack -L style
	Error string `json:"error"`
}

// Report is the outcome of a commit. It marshals to JSON without the
// order of the flows (which may hold millions of keys): use Position or
// Order for that.
type Report struct {
	Flows    int `json:"flows"`    // flows in the external cache's snapshot (one per key)
	Created  int `json:"created"`  // new kernel entries
	Updated  int `json:"updated"`  // existing entries updated
	Replaced int `json:"replaced"` // existing entries with other NAT deleted and re-created
	Failed   int `json:"failed"`   // not written, including NotTried
	// NotTried counts the flows never sent because the commit ran out of
	// time or the writer failed.
	NotTried int `json:"not_tried,omitempty"`
	// Removed counts the entries that left the external cache (every
	// origin's entry for each committed key).
	Removed int `json:"removed"`
	// Cleared counts local entries deleted because they clashed with a
	// committed flow: traffic that reached this node before the commit
	// (keepalived raises the VIPs first) and created an entry whose
	// original tuple is the committed flow's reply tuple, e.g. a server's
	// reply to the SNAT address delivered locally.
	Cleared int `json:"cleared,omitempty"`
	// Refused counts the flows CommitOptions.Admit refused (removed from
	// the cache, not written).
	Refused int `json:"refused,omitempty"`
	// Seconds is the duration of the whole commit; FirstChunkSeconds the
	// time until the first (least idle) chunk was in the kernel.
	Seconds           float64 `json:"seconds"`
	FirstChunkSeconds float64 `json:"first_chunk_seconds"`
	// Failures describes the first MaxFailures failures; Errnos counts
	// every failure by errno name ("EINVAL") or cause ("deadline").
	Failures []Failure      `json:"failures,omitempty"`
	Errnos   map[string]int `json:"errnos,omitempty"`
	// Expectations is the commit of the expectations, after the flows
	// (CommitExpects); nil when none was run.
	Expectations *ExpectReport `json:"expectations,omitempty"`

	// keys is the commit order; nil in a Summary.
	keys *commitKeys
}

// commitKeys is a commit's order and its index by key. The commit keeps
// the keys of each chunk as the chunk was prepared (chunks); Order joins
// them when first asked: a commit does not copy 40 bytes per flow into
// one slice on its way.
type commitKeys struct {
	chunks    [][]flow.Key
	orderOnce sync.Once
	order     []flow.Key
	once      sync.Once
	pos       map[flow.Key]int
}

// all returns the keys in commit order, joined once.
func (ck *commitKeys) all() []flow.Key {
	ck.orderOnce.Do(func() {
		if len(ck.chunks) == 1 {
			ck.order = ck.chunks[0]
		} else {
			ck.order = slices.Concat(ck.chunks...)
		}
		ck.chunks = nil
	})
	return ck.order
}

// Committed is the number of flows now in the kernel.
func (r *Report) Committed() int { return r.Created + r.Updated + r.Replaced }

// Order returns the keys in the order they were written (nil for a
// Summary). The slice is the report's own: do not modify it.
func (r *Report) Order() []flow.Key {
	if r.keys == nil {
		return nil
	}
	return r.keys.all()
}

// Summary returns a copy of the report without the order of the flows
// (40 bytes per flow), to keep after the commit.
func (r *Report) Summary() *Report {
	s := *r
	s.keys = nil
	s.Failures = slices.Clone(r.Failures)
	s.Errnos = maps.Clone(r.Errnos)
	return &s
}

// Position returns the index of k in the commit order (0 is written
// first), or -1 when k was not part of the commit (always, for a
// Summary). The first call builds an index of every key.
func (r *Report) Position(k flow.Key) int {
	ck := r.keys
	if ck == nil {
		return -1
	}
	ck.once.Do(func() {
		order := ck.all()
		ck.pos = make(map[flow.Key]int, len(order))
		for i, k := range order {
			ck.pos[k] = i
		}
	})
	if i, ok := ck.pos[k]; ok {
		return i
	}
	return -1
}

func (r *Report) fail(f *flow.Flow, err error, max int) {
	r.Failed++
	if r.Errnos == nil {
		r.Errnos = make(map[string]int)
	}
	r.Errnos[errName(err)]++
	if len(r.Failures) < max {
		r.Failures = append(r.Failures, Failure{Flow: f.String(), Error: err.Error()})
	}
}

// errName names an error's cause for Report.Errnos.
func errName(err error) string {
	var errno unix.Errno
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, kernel.ErrClosed):
		return "closed"
	case errors.As(err, &errno):
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
		return fmt.Sprintf("errno %d", int(errno))
	}
	return "other"
}

// Commit writes the external cache's flows into the kernel through w and
// removes from the cache the entries it committed (Created, Updated or
// Replaced; failed ones stay, to be retried by another commit).
//
// Order: the flows that carry traffic first, by least IdleAt (the idleness
// the origin derived from its kernel's remaining timeouts, plus the time
// since), never by most recent event: an established flow's packets raise
// no events. The first write holds only opt.FirstChunk flows, so that live
// flows are in the kernel within milliseconds; later writes grow to
// opt.MaxChunk. Each flow's age is the time since its state was received,
// which the writer subtracts from its timeout (down to its floor).
//
// A flow whose create fails with EEXIST although no entry has its original
// tuple clashes with an entry holding its reply tuple: traffic that reached
// this node between the VIP move and the commit (a server's packet to the
// SNAT address, delivered locally when the input chain accepts it). When w
// is also a Deleter, that entry (original tuple = the flow's reply tuple)
// is deleted and the flow committed again; the master's flow wins.
//
// When several origins hold the same key, the most recently received
// entry is written. Commit is bounded by opt.Timeout and ctx; when either
// ends it, the report counts the flows not tried and the error wraps the
// cause (ErrCommitTimeout for opt.Timeout). Repeating a commit is harmless:
// what was committed left the cache, and a flow committed again is updated.
func Commit(ctx context.Context, ext *cache.External, w Writer, opt CommitOptions) (*Report, error) {
	start := time.Now()
	if opt.FirstChunk <= 0 {
		opt.FirstChunk = DefaultFirstChunk
	}
	if opt.MaxChunk <= 0 {
		opt.MaxChunk = DefaultMaxChunk
	}
	opt.MaxChunk = max(opt.MaxChunk, opt.FirstChunk)
	if opt.MaxFailures <= 0 {
		opt.MaxFailures = DefaultMaxFailures
	}
	if opt.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, opt.Timeout, ErrCommitTimeout)
		defer cancel()
	}

	rep := &Report{keys: &commitKeys{}}
	var err error
	// A chunk goes through two stages: prepare (read its entries, admit
	// them, build the writes) and write (the kernel's part, then taking
	// what it committed out of ext). While one chunk is in the kernel, a
	// second goroutine prepares the next and removes the previous: the
	// kernel serializes creates, so that work would otherwise stall it.
	write := func(b *batch) ([]flow.Key, error) {
		rep.Refused += len(b.refused)
		rep.keys.chunks = append(rep.keys.chunks, b.order)
		if len(b.refused) > 0 {
			rep.Removed += ext.Remove(b.refused)
		}
		if len(b.flows) == 0 {
			return nil, nil
		}
		res, err := w.Commit(ctx, b.flows, b.age)
		var done []flow.Key
		var clash []int
		for k := range b.flows {
			if k < len(res) && res[k].Op == kernel.Failed && errors.Is(res[k].Err, unix.EEXIST) {
				clash = append(clash, k)
				continue
			}
			if rep.tally(&b.flows[k], res, k, err, opt.MaxFailures) {
				done = append(done, b.flows[k].Key)
			}
		}
		switch {
		case len(clash) > 0 && err == nil:
			done = append(done, rep.clear(ctx, w, b.flows, b.age, clash, opt.MaxFailures)...)
		case len(clash) > 0:
			for _, k := range clash {
				rep.tally(&b.flows[k], res, k, err, opt.MaxFailures)
			}
		}
		return done, err
	}
	notTried := func(rest []cache.ExternalEntry) {
		keys := make([]flow.Key, 0, len(rest))
		for i := range rest {
			e := &rest[i]
			keys = append(keys, e.Flow.Key)
			rep.NotTried++
			rep.fail(&e.Flow, err, opt.MaxFailures)
		}
		rep.keys.chunks = append(rep.keys.chunks, keys)
	}

	// The least idle flows first, picked in one pass over the cache with
	// no copy of it, so that the flows carrying traffic are in the kernel
	// within milliseconds whatever the cache's size.
	first := dedup(ext.LeastIdle(opt.FirstChunk))
	rep.Flows = len(first)
	done, err := write(prepare(first, opt.Admit))
	rep.Removed += ext.Remove(done)
	rep.FirstChunkSeconds = time.Since(start).Seconds()

	// Then the rest, ordered: what the first chunk committed has left the
	// cache; what it failed on stays there and is not tried twice. The
	// order is kept as refs (64 bytes each), the entries read a chunk at a
	// time: no copy of the whole cache.
	var rest []cache.Ref
	if len(first) == opt.FirstChunk {
		tried := make(map[flow.Key]struct{}, len(first))
		for i := range first {
			tried[first[i].Flow.Key] = struct{}{}
		}
		rest = slices.DeleteFunc(dedupRefs(ext.Refs()), func(r cache.Ref) bool {
			_, ok := tried[r.Key]
			return ok
		})
	}
	ord := idleOrder(len(rest), func(i int) time.Duration { return rest[i].IdleAt })
	pick := func(from, to int) ([]cache.ExternalEntry, int) {
		refs := make([]cache.Ref, 0, to-from)
		for _, i := range ord[from:to] {
			refs = append(refs, rest[i])
		}
		got := ext.Entries(refs, make([]cache.ExternalEntry, 0, len(refs)))
		return got, len(refs) - len(got) // gone since (deleted by their origin, flushed)
	}
	rep.Flows += len(rest)
	type stage struct {
		b       *batch // nil: nothing left
		gone    int
		removed int
	}
	// background removes what the previous chunk committed and prepares
	// rest[from:to], in a goroutine of its own, while the caller writes.
	background := func(prevDone []flow.Key, from, to int) <-chan stage {
		ch := make(chan stage, 1)
		go func() {
			var st stage
			st.removed = ext.Remove(prevDone)
			if from < to {
				var es []cache.ExternalEntry
				es, st.gone = pick(from, to)
				st.b = prepare(es, opt.Admit)
			}
			ch <- st
		}()
		return ch
	}
	chunk := min(opt.FirstChunk*chunkGrowth, opt.MaxChunk)
	var (
		cur      stage
		next     int
		prevDone []flow.Key // committed by the last write, still in ext
	)
	if err == nil {
		next = min(chunk, len(rest))
		cur = <-background(nil, 0, next)
		rep.Flows -= cur.gone
	}
	for cur.b != nil && err == nil {
		chunk = min(chunk*chunkGrowth, opt.MaxChunk)
		from, end := next, min(next+chunk, len(rest))
		bg := background(prevDone, from, end)
		prevDone, err = write(cur.b)
		st := <-bg
		rep.Removed += st.removed
		if err != nil {
			next = from // the prepared chunk was not written
			break
		}
		rep.Flows -= st.gone
		cur, next = st, end
	}
	rep.Removed += ext.Remove(prevDone)
	if err != nil {
		es, gone := pick(min(next, len(rest)), len(rest))
		rep.Flows -= gone
		notTried(es)
	}
	rep.Seconds = time.Since(start).Seconds()
	if err != nil {
		if c := context.Cause(ctx); errors.Is(c, ErrCommitTimeout) {
			return rep, fmt.Errorf("failover: commit: %w after %v: %d of %d flows not tried", ErrCommitTimeout, opt.Timeout, rep.NotTried, rep.Flows)
		}
		return rep, fmt.Errorf("failover: commit: %w", err)
	}
	return rep, nil
}

// chunkGrowth is how much each write grows over the last, up to MaxChunk.
// While a chunk is written, the next one is prepared (and the last one's
// flows removed from the cache) beside it: that costs about half as much
// per flow as the kernel's creates, so a next chunk twice as large is
// ready when the write ends. Eightfold, the writes waited on it (31 ms of
// a 200k commit's 0.80 s).
const chunkGrowth = 2

// batch is a chunk ready to write: the flows admitted and their ages, in
// order, and the keys the admission refused.
type batch struct {
	flows   []flow.Flow
	age     []time.Duration
	order   []flow.Key // every key of the chunk, as the report lists them
	refused []flow.Key
}

// prepare builds the writes of a chunk of entries.
func prepare(chunk []cache.ExternalEntry, admit func(origin string, f *flow.Flow) bool) *batch {
	b := &batch{
		flows: make([]flow.Flow, 0, len(chunk)),
		age:   make([]time.Duration, 0, len(chunk)),
		order: make([]flow.Key, 0, len(chunk)),
	}
	now := time.Now()
	for i := range chunk {
		e := &chunk[i]
		if admit != nil && !admit(e.Origin, &e.Flow) {
			b.refused = append(b.refused, e.Flow.Key)
			continue
		}
		b.flows = append(b.flows, e.Flow)
		b.age = append(b.age, now.Sub(e.Received))
		b.order = append(b.order, e.Flow.Key)
	}
	return b
}

// tally counts the result for flows[k] and reports whether it is in the
// kernel now.
func (r *Report) tally(f *flow.Flow, res []kernel.Result, k int, err error, maxFailures int) bool {
	if k >= len(res) {
		r.fail(f, cmp.Or(err, errors.New("no result")), maxFailures)
		return false
	}
	switch res[k].Op {
	case kernel.Created:
		r.Created++
	case kernel.Updated:
		r.Updated++
	case kernel.Replaced:
		r.Replaced++
	default:
		r.fail(f, cmp.Or(res[k].Err, errors.New(res[k].Op.String())), maxFailures)
		return false
	}
	return true
}

// clear handles the flows of a chunk whose create failed with EEXIST
// although no entry has their original tuple: an entry holds their reply
// tuple. When w can delete, the entry whose original tuple is the reply
// tuple (local traffic that arrived before the commit) is deleted and the
// flows are committed once more. It returns the keys now in the kernel.
func (r *Report) clear(ctx context.Context, w Writer, flows []flow.Flow, age []time.Duration, idx []int, maxFailures int) []flow.Key {
	retry := make([]flow.Flow, len(idx))
	retryAge := make([]time.Duration, len(idx))
	keys := make([]flow.Key, len(idx))
	for j, k := range idx {
		f := &flows[k]
		retry[j], retryAge[j] = *f, age[k]
		keys[j] = flow.Key{Orig: f.Reply, Family: f.Family, Proto: f.Proto, Zone: f.Zone}
	}
	fail := func(err error) []flow.Key {
		for j := range retry {
			r.fail(&retry[j], err, maxFailures)
		}
		return nil
	}
	d, ok := w.(Deleter)
	if !ok {
		return fail(&kernel.OpError{Op: "create", Err: unix.EEXIST})
	}
	dres, err := d.Delete(ctx, keys)
	if err != nil {
		return fail(err)
	}
	for _, x := range dres {
		if x.Op == kernel.Deleted {
			r.Cleared++
		}
	}
	res, err := w.Commit(ctx, retry, retryAge)
	var done []flow.Key
	for j := range retry {
		if r.tally(&retry[j], res, j, err, maxFailures) {
			done = append(done, retry[j].Key)
		}
	}
	return done
}

// dedup keeps one entry per key, the most recently received, when the
// snapshot holds several origins (one origin never repeats a key).
func dedup(snap []cache.ExternalEntry) []cache.ExternalEntry {
	multi := false
	for i := 1; i < len(snap); i++ {
		if snap[i].Origin != snap[0].Origin {
			multi = true
			break
		}
	}
	if !multi {
		return snap
	}
	seen := make(map[flow.Key]int, len(snap))
	out := snap[:0]
	for _, e := range snap {
		if j, ok := seen[e.Flow.Key]; ok {
			if e.Received.After(out[j].Received) {
				out[j] = e
			}
			continue
		}
		seen[e.Flow.Key] = len(out)
		out = append(out, e)
	}
	return out
}

// dedupRefs is dedup for refs: one per key, the most recently received.
func dedupRefs(refs []cache.Ref) []cache.Ref {
	multi := false
	for i := 1; i < len(refs); i++ {
		if refs[i].OriginIndex() != refs[0].OriginIndex() {
			multi = true
			break
		}
	}
	if !multi {
		return refs
	}
	seen := make(map[flow.Key]int, len(refs))
	out := refs[:0]
	for _, r := range refs {
		if j, ok := seen[r.Key]; ok {
			if r.Received > out[j].Received {
				out[j] = r
			}
			continue
		}
		seen[r.Key] = len(out)
		out = append(out, r)
	}
	return out
}

// idleOrder returns the indexes 0..n-1 ordered by idle(i), least idle
// first, ties in index order. It is an LSD radix sort of (idleness, index)
// pairs, a byte a pass over only the bytes the largest idleness needs:
// linear in n, and idle is called once per index (a comparison sort of a
// million entries reads them twenty times, at random).
func idleOrder(n int, idle func(i int) time.Duration) []int32 {
	// idleGrain: idleness is compared in units of 2^16 ns (65.5 µs):
	// flows idle within that of each other keep cache order, and hours of
	// idleness take four passes rather than six.
	const idleGrain = 16
	type pair struct {
		idle uint64
		i    int32
	}
	a := make([]pair, n)
	var top uint64
	for i := range a {
		v := uint64(max(idle(i), 0)) >> idleGrain
		a[i] = pair{v, int32(i)}
		top |= v
	}
	b := make([]pair, len(a))
	for shift := uint(0); shift < 64 && top>>shift != 0; shift += 8 {
		var count [257]int
		for _, p := range a {
			count[(p.idle>>shift)&0xff+1]++
		}
		for d := 1; d < len(count); d++ {
			count[d] += count[d-1]
		}
		for _, p := range a {
			d := (p.idle >> shift) & 0xff
			b[count[d]] = p
			count[d]++
		}
		a, b = b, a
	}
	ord := make([]int32, len(a))
	for i, p := range a {
		ord[i] = p.i
	}
	return ord
}
