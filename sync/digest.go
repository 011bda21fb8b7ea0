package sync

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// Drift detection and repair.
//
// The reliable stream repairs what it knows it lost (NACKs, bulks). What
// it does not know, it cannot: a message acknowledged but not applied, an
// operator's `ctsyncctl flush external`, a bug. So every digest interval
// each node summarizes its internal cache for its peers: DIGEST datagrams
// carry one 64-bit sum per bucket of flows (cache.BucketOf, cache.StateHash;
// about 256 flows a bucket, 64 to 4096 buckets, 8 bytes each), taken right
// after the pending changes were sent, with the stream's last sequence
// number. A peer that has applied exactly that much of the stream (no gap,
// nothing more) compares the sums with its external cache's copy of the
// origin; the buckets that differ it asks for (DIGEST_REQUEST, at most
// maxRepairBuckets; a larger drift asks for a bulk instead), and the origin
// answers with the current state of the flows of those buckets (REPAIR,
// unsequenced DATA) and, per chunk of buckets, REPAIR_END with how many
// flows each bucket had. The peer applies the states and, when a chunk
// arrived whole, removes its flows in those buckets that the origin did not
// send. A lost datagram only delays the repair to the next round.
//
// Digest messages are not part of the stream: they are unsequenced, sealed
// and authenticated like every datagram, and only accepted peers' are
// taken.
//
// Wire bodies (msgpack arrays, like the other control messages):
//
//	DIGEST          Seq, Round, Buckets, Offset, Flows, Sums (bin, 8 bytes
//	                big-endian per bucket from Offset), Skip (buckets not to
//	                compare: changes made while the digest was taken)
//	DIGEST_REQUEST  Round, Buckets, List (bucket numbers)
//	REPAIR          Round, Buckets, Changes (bin, DATA's change encoding)
//	REPAIR_END      Round, Buckets, List (bucket numbers), Counts (flows
//	                per listed bucket)

// Digest message types (appended after the stream's types).
const (
	MsgDigest        MsgType = 13 // bucketed sums of the sender's table
	MsgDigestRequest MsgType = 14 // send me these buckets (addressed)
	MsgRepair        MsgType = 15 // flows of requested buckets (addressed)
	MsgRepairEnd     MsgType = 16 // these buckets are complete (addressed)
)

const (
	maxDigestBuckets = 4096
	// maxRepairBuckets is the most buckets one round repairs; more
	// differing buckets ask for a bulk.
	maxRepairBuckets = 128
	// repairEndChunk is how many buckets one REPAIR_END completes.
	repairEndChunk = 32
	// repairBurst is how many REPAIR datagrams go out per millisecond.
	repairBurst = 16
	// maxRepairJobs bounds the requests queued for answer.
	maxRepairJobs = 16
)

// DigestPart is the body of the digest message types.
type DigestPart struct {
	Round   uint64
	Buckets uint32   // bucket count of the round (a power of two)
	Offset  uint32   // DIGEST: the first bucket of Sums
	Flows   uint64   // DIGEST: the sender's flow count
	Sums    []uint64 // DIGEST
	Skip    []uint32 // DIGEST: buckets of Sums not to compare (changes in flight)
	List    []uint32 // DIGEST_REQUEST, REPAIR_END: bucket numbers
	Counts  []uint32 // REPAIR_END: flows sent per bucket of List
}

func isDigestType(t MsgType) bool { return t >= MsgDigest && t <= MsgRepairEnd }

func appendDigestBody(b []byte, m *message) []byte {
	d := m.Digest
	if d == nil {
		d = &DigestPart{}
	}
	buf := bytes.NewBuffer(b)
	e := msgpack.NewEncoder(buf)
	switch m.Type {
	case MsgDigest:
		_ = e.EncodeArrayLen(7)
		_ = e.EncodeUint(m.Seq)
		_ = e.EncodeUint(d.Round)
		_ = e.EncodeUint(uint64(d.Buckets))
		_ = e.EncodeUint(uint64(d.Offset))
		_ = e.EncodeUint(d.Flows)
		sums := make([]byte, 0, 8*len(d.Sums))
		for _, s := range d.Sums {
			sums = binary.BigEndian.AppendUint64(sums, s)
		}
		_ = e.EncodeBytes(sums)
		encodeUints(e, d.Skip)
	case MsgDigestRequest:
		_ = e.EncodeArrayLen(3)
		_ = e.EncodeUint(d.Round)
		_ = e.EncodeUint(uint64(d.Buckets))
		encodeUints(e, d.List)
	case MsgRepair:
		_ = e.EncodeArrayLen(3)
		_ = e.EncodeUint(d.Round)
		_ = e.EncodeUint(uint64(d.Buckets))
		var chs []byte
		chs = binary.AppendUvarint(chs, uint64(len(m.Changes)))
		for i := range m.Changes {
			chs = appendChange(chs, &m.Changes[i])
		}
		_ = e.EncodeBytes(chs)
	case MsgRepairEnd:
		_ = e.EncodeArrayLen(4)
		_ = e.EncodeUint(d.Round)
		_ = e.EncodeUint(uint64(d.Buckets))
		encodeUints(e, d.List)
		encodeUints(e, d.Counts)
	}
	return buf.Bytes()
}

func encodeUints(e *msgpack.Encoder, l []uint32) {
	_ = e.EncodeArrayLen(len(l))
	for _, x := range l {
		_ = e.EncodeUint(uint64(x))
	}
}

func decodeDigestBody(b []byte, m *message) error {
	r := bytes.NewReader(b)
	d := msgpack.NewDecoder(r)
	n, err := d.DecodeArrayLen()
	if err != nil {
		return err
	}
	want := map[MsgType]int{MsgDigest: 6, MsgDigestRequest: 3, MsgRepair: 3, MsgRepairEnd: 4}[m.Type]
	if n < want || n > 32 {
		return fmt.Errorf("%d fields, want %d", n, want)
	}
	p := &DigestPart{}
	m.Digest = p
	if m.Type == MsgDigest {
		if m.Seq, err = d.DecodeUint64(); err != nil {
			return err
		}
	}
	if p.Round, err = d.DecodeUint64(); err != nil {
		return err
	}
	nb, err := d.DecodeUint64()
	if err != nil {
		return err
	}
	if nb == 0 || nb > maxDigestBuckets || nb&(nb-1) != 0 {
		return fmt.Errorf("bucket count %d", nb)
	}
	p.Buckets = uint32(nb)
	switch m.Type {
	case MsgDigest:
		off, err := d.DecodeUint64()
		if err != nil {
			return err
		}
		if p.Flows, err = d.DecodeUint64(); err != nil {
			return err
		}
		sums, err := decodeBytes(d, r, MaxDatagram)
		if err != nil {
			return err
		}
		if len(sums)%8 != 0 || off+uint64(len(sums)/8) > nb {
			return fmt.Errorf("%d sum bytes at bucket %d of %d", len(sums), off, nb)
		}
		p.Offset = uint32(off)
		p.Sums = make([]uint64, len(sums)/8)
		for i := range p.Sums {
			p.Sums[i] = binary.BigEndian.Uint64(sums[8*i:])
		}
		if n > want {
			if p.Skip, err = decodeUints(d, nb, maxDigestBuckets); err != nil {
				return err
			}
			want++ // consumed
		}
	case MsgDigestRequest:
		if p.List, err = decodeUints(d, nb, maxRepairBuckets); err != nil {
			return err
		}
	case MsgRepair:
		chs, err := decodeBytes(d, r, MaxDatagram)
		if err != nil {
			return err
		}
		cnt, k := binary.Uvarint(chs)
		if k <= 0 {
			return errShort
		}
		chs = chs[k:]
		if cnt > MaxFlowsPerMessage || cnt*minChangeLen > uint64(len(chs)) {
			return fmt.Errorf("%d flows in %d bytes", cnt, len(chs))
		}
		m.Changes = make([]cache.Change, cnt)
		for i := range m.Changes {
			k, err := decodeChange(chs, &m.Changes[i])
			if err != nil {
				return fmt.Errorf("flow %d: %w", i, err)
			}
			if m.Changes[i].Deleted {
				return fmt.Errorf("flow %d: a removal in a repair", i)
			}
			chs = chs[k:]
		}
		if len(chs) != 0 {
			return fmt.Errorf("%d trailing bytes", len(chs))
		}
	case MsgRepairEnd:
		if p.List, err = decodeUints(d, nb, repairEndChunk); err != nil {
			return err
		}
		if p.Counts, err = decodeUints(d, 1<<32-1, repairEndChunk); err != nil {
			return err
		}
		if len(p.Counts) != len(p.List) {
			return fmt.Errorf("%d counts for %d buckets", len(p.Counts), len(p.List))
		}
	}
	for range n - want {
		if err := d.Skip(); err != nil {
			return err
		}
	}
	if r.Len() != 0 {
		return fmt.Errorf("%d trailing bytes", r.Len())
	}
	return nil
}

// decodeUints decodes an array of at most maxLen numbers below limit.
func decodeUints(d *msgpack.Decoder, limit uint64, maxLen int) ([]uint32, error) {
	n, err := d.DecodeArrayLen()
	if err != nil {
		return nil, err
	}
	if n < 0 || n > maxLen {
		return nil, fmt.Errorf("list of %d, at most %d", n, maxLen)
	}
	if n == 0 {
		return nil, nil
	}
	out := make([]uint32, n)
	for i := range out {
		x, err := d.DecodeUint64()
		if err != nil {
			return nil, err
		}
		if x >= limit {
			return nil, fmt.Errorf("%d out of range", x)
		}
		out[i] = uint32(x)
	}
	return out, nil
}

// DriftStats count drift detection and repair since the node started.
type DriftStats struct {
	// RoundsSent counts digest rounds of this node's table sent, and
	// BytesSent their datagrams' bytes.
	RoundsSent uint64 `json:"rounds_sent"`
	BytesSent  uint64 `json:"bytes_sent"`
	// LastDigestSeconds is how long the last digest of the internal cache
	// took to compute (one goroutine: about its CPU time).
	LastDigestSeconds float64 `json:"last_digest_seconds"`
	// RepairsServed counts peers' bucket requests answered.
	RepairsServed uint64 `json:"repairs_served"`
	// ByOrigin is what this node checked and repaired of each origin.
	ByOrigin map[string]OriginDrift `json:"by_origin"`
	// Last is the last repair that changed something; nil when none did.
	Last *DriftEvent `json:"last,omitempty"`
}

// OriginDrift counts drift detection for one origin.
type OriginDrift struct {
	Checked      uint64 `json:"checked"`       // digests compared
	Skipped      uint64 `json:"skipped"`       // digests not comparable (stream not at the digest's point)
	Buckets      uint64 `json:"buckets"`       // buckets found to differ
	Repairs      uint64 `json:"repairs"`       // repairs that changed something
	Flows        uint64 `json:"flows"`         // flows added, fixed or removed by repairs
	BulkRequests uint64 `json:"bulk_requests"` // drifts too large, answered by a bulk
}

// DriftEvent is one repair.
type DriftEvent struct {
	At      time.Time `json:"at"`
	Origin  string    `json:"origin"`
	Buckets int       `json:"buckets"`
	Flows   int       `json:"flows"`
}

// digestState is the node's drift detection state. Its fields are guarded
// by Node.mu, except those noted.
type digestState struct {
	interval time.Duration // 0: off; set before Run
	paused   bool          // PauseDrift: digests received are not compared
	rounds   uint64        // last round id sent
	rx       map[uint64]*digestRx
	stats    DriftStats
	jobs     []*repairJob // origin side: requests being answered
}

// digestRx is the receive side of one origin's digests and repair.
type digestRx struct {
	round   uint64
	nb      int
	sums    []uint64 // this node's copy, computed at the round's first part
	covered int      // buckets of the round compared so far
	diff    []uint32

	// the repair in progress
	repairRound uint64
	repairAt    time.Time
	asked       map[uint32]bool
	keep        map[flow.Key]struct{}
	got         map[uint32]uint32
	fixed       int
	pruned      int
	buckets     int
}

// repairJob is a peer's request for buckets being answered.
type repairJob struct {
	peer, epoch uint64
	round       uint64
	nb          int
	chunks      [][]uint32 // buckets not completed yet, by REPAIR_END chunk
	byBucket    map[uint32][]cache.Change
	cur         []cache.Change // flows of chunks[0] not sent yet
}

// SetDigestInterval turns drift detection on with digests every d (0
// turns it off). Call it before Run.
func (n *Node) SetDigestInterval(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dg.interval = d
}

// PauseDrift stops (on) or resumes comparing the digests peers send with
// the external cache. The daemon pauses it while a commit empties the
// external cache into the kernel: an origin still alive (a planned
// switchover) would otherwise see every bucket differ and be asked for a
// bulk that competes with the commit. Digests that arrive meanwhile count
// as skipped.
func (n *Node) PauseDrift(on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dg.paused = on
}

// DriftStats returns the drift detection counters.
func (n *Node) DriftStats() DriftStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.dg.stats
	s.ByOrigin = maps.Clone(s.ByOrigin)
	if s.ByOrigin == nil {
		s.ByOrigin = map[string]OriginDrift{}
	}
	if s.Last != nil {
		l := *s.Last
		s.Last = &l
	}
	return s
}

// digestTicker returns the channel of the digest interval's ticker and a
// function that stops it; a nil channel (never ready) when digests are
// off. Run selects on it.
func (n *Node) digestTicker() (<-chan time.Time, func()) {
	n.mu.Lock()
	iv := n.dg.interval
	n.mu.Unlock()
	if iv <= 0 {
		return nil, func() {}
	}
	t := time.NewTicker(iv)
	return t.C, t.Stop
}

// sendDigest sends one digest round of the internal cache to every peer.
// Node.mu is held throughout, so that the digest matches the stream's last
// sequence number exactly.
func (n *Node) sendDigest() {
	if len(n.peers) == 0 {
		return
	}
	// Send what is pending, so that the digest describes the stream up to
	// its last sequence number.
	for n.internal.Stats().Dirty > 0 {
		before := n.nextSeq
		n.sendChanges()
		if n.nextSeq == before {
			break
		}
	}
	start := time.Now()
	nb := cache.DigestBuckets(n.internal.Len())
	sums, flows, skip, ok := n.internal.DigestForSend(nb)
	n.dg.stats.LastDigestSeconds = time.Since(start).Seconds()
	if !ok {
		n.log.Debug("digest round skipped: too many changes pending")
		return
	}
	n.dg.rounds++
	round := n.dg.rounds
	per := max(8, (n.bodyBudget()-64)/8)
	for off := 0; off < nb; off += per {
		end := min(nb, off+per)
		var partSkip []uint32
		for _, b := range skip {
			if int(b) >= off && int(b) < end {
				partSkip = append(partSkip, b)
			}
		}
		m := &message{Type: MsgDigest, Seq: n.nextSeq - 1, Digest: &DigestPart{
			Round: round, Buckets: uint32(nb), Offset: uint32(off), Flows: uint64(flows), Sums: sums[off:end], Skip: partSkip}}
		b := n.sendAllLen(m)
		n.dg.stats.BytesSent += uint64(b)
	}
	n.dg.stats.RoundsSent++
}

// sendAllLen sends m to every peer and returns the datagram's length.
func (n *Node) sendAllLen(m *message) int {
	n.sendAll(m)
	return len(n.out)
}

func (n *Node) originDrift(name string) *OriginDrift {
	if n.dg.stats.ByOrigin == nil {
		n.dg.stats.ByOrigin = map[string]OriginDrift{}
	}
	o := n.dg.stats.ByOrigin[name]
	return &o
}

func (n *Node) putOriginDrift(name string, o *OriginDrift) { n.dg.stats.ByOrigin[name] = *o }

// handleDigest takes a digest message of an accepted peer; Node.mu held.
func (n *Node) handleDigest(pr *peer, m *message, now time.Time) {
	if n.dg.rx == nil {
		n.dg.rx = make(map[uint64]*digestRx)
	}
	drx := n.dg.rx[pr.id]
	if drx == nil {
		drx = &digestRx{}
		n.dg.rx[pr.id] = drx
	}
	d := m.Digest
	switch m.Type {
	case MsgDigest:
		n.compareDigest(pr, drx, m, now)
	case MsgDigestRequest:
		n.queueRepair(pr, d)
	case MsgRepair:
		if drx.repairRound != d.Round || drx.asked == nil || drx.nb != int(d.Buckets) {
			return
		}
		for _, ch := range m.Changes {
			b := cache.BucketOf(&ch.Flow.Key, drx.nb)
			if !drx.asked[b] {
				continue
			}
			drx.keep[ch.Flow.Key] = struct{}{}
			drx.got[b]++
			if n.external.Repair(pr.name, ch, now) {
				drx.fixed++
			}
		}
	case MsgRepairEnd:
		if drx.repairRound != d.Round || drx.asked == nil || drx.nb != int(d.Buckets) {
			return
		}
		done := map[uint32]bool{}
		for i, b := range d.List {
			if drx.asked[b] && drx.got[b] == d.Counts[i] {
				done[b] = true
				delete(drx.asked, b)
			}
		}
		if len(done) > 0 {
			drx.pruned += n.external.Prune(pr.name, drx.nb, done, drx.keep)
		}
		if len(drx.asked) == 0 {
			n.finishRepair(pr, drx, now)
		}
	}
}

// compareDigest compares one DIGEST part with this node's copy.
func (n *Node) compareDigest(pr *peer, drx *digestRx, m *message, now time.Time) {
	d := m.Digest
	od := n.originDrift(pr.name)
	defer n.putOriginDrift(pr.name, od)
	rx := &pr.rx
	if drx.asked != nil && now.Sub(drx.repairAt) > 2*n.dg.interval {
		drx.asked, drx.keep, drx.got = nil, nil, nil // that repair will not finish
	}
	// Comparable: this node applied exactly the stream up to the digest's
	// point, nothing is missing, no bulk or repair is under way.
	// A copy at the per-origin bound refuses the origin's new flows: it
	// differs by design, and a repair or bulk would be refused again.
	comparable := rx.buf != nil && rx.next-1 == m.Seq && len(rx.buf) == 0 && !rx.resyncWanted && drx.asked == nil &&
		!n.dg.paused && !n.external.Full(pr.name)
	if drx.round != d.Round || drx.nb != int(d.Buckets) {
		drx.round, drx.nb = d.Round, int(d.Buckets)
		drx.covered, drx.diff, drx.sums = 0, nil, nil
		if !comparable {
			od.Skipped++
			return
		}
		drx.sums, _ = n.external.Digest(pr.name, drx.nb)
		od.Checked++
	}
	if drx.sums == nil {
		return // not comparable at an earlier part of the round
	}
	if !comparable {
		drx.sums = nil
		od.Skipped++
		return
	}
	for i, s := range d.Sums {
		b := int(d.Offset) + i
		if drx.sums[b] != s && !slices.Contains(d.Skip, uint32(b)) {
			drx.diff = append(drx.diff, uint32(b))
		}
	}
	drx.covered += len(d.Sums)
	if drx.covered < drx.nb {
		return
	}
	drx.sums = nil
	if len(drx.diff) == 0 {
		return
	}
	od.Buckets += uint64(len(drx.diff))
	if len(drx.diff) > maxRepairBuckets {
		od.BulkRequests++
		od.Repairs++
		n.dg.stats.Last = &DriftEvent{At: now, Origin: pr.name, Buckets: len(drx.diff)}
		n.log.Warn("drift: too many buckets differ from the origin's digest; asking for a bulk",
			"origin", pr.name, "buckets", len(drx.diff), "of", drx.nb)
		n.requestResync(pr, now)
		return
	}
	n.log.Info("drift: buckets differ from the origin's digest; repairing them",
		"origin", pr.name, "buckets", len(drx.diff), "of", drx.nb)
	drx.repairRound, drx.repairAt = d.Round, now
	drx.asked = make(map[uint32]bool, len(drx.diff))
	for _, b := range drx.diff {
		drx.asked[b] = true
	}
	drx.keep = make(map[flow.Key]struct{})
	drx.got = make(map[uint32]uint32)
	drx.fixed, drx.pruned, drx.buckets = 0, 0, len(drx.diff)
	n.sendTo(pr, &message{Type: MsgDigestRequest, Digest: &DigestPart{Round: d.Round, Buckets: d.Buckets, List: drx.diff}})
}

func (n *Node) finishRepair(pr *peer, drx *digestRx, now time.Time) {
	flows := drx.fixed + drx.pruned
	od := n.originDrift(pr.name)
	if flows > 0 {
		od.Repairs++
		od.Flows += uint64(flows)
		n.dg.stats.Last = &DriftEvent{At: now, Origin: pr.name, Buckets: drx.buckets, Flows: flows}
		n.log.Info("drift repaired", "origin", pr.name, "buckets", drx.buckets, "fixed", drx.fixed, "removed", drx.pruned)
	}
	n.putOriginDrift(pr.name, od)
	drx.asked, drx.keep, drx.got = nil, nil, nil
}

// queueRepair takes a peer's request for buckets; repairStep answers it.
func (n *Node) queueRepair(pr *peer, d *DigestPart) {
	for _, j := range n.dg.jobs {
		if j.peer == pr.id {
			// One answer per peer at a time: a request while one is being
			// answered is dropped (the next round asks again).
			n.log.Debug("repair request dropped: one is being answered", "peer", pr.name)
			return
		}
	}
	if len(n.dg.jobs) >= maxRepairJobs {
		n.log.Debug("repair request dropped: too many pending", "peer", pr.name)
		return
	}
	list := slices.Clone(d.List)
	slices.Sort(list)
	list = slices.Compact(list)
	j := &repairJob{peer: pr.id, epoch: pr.epoch, round: d.Round, nb: int(d.Buckets)}
	for len(list) > 0 {
		c := list[:min(repairEndChunk, len(list))]
		j.chunks = append(j.chunks, c)
		list = list[len(c):]
	}
	n.dg.jobs = append(n.dg.jobs, j)
}

// repairing reports whether repair answers are pending (Run then paces
// repairStep with the bulk ticker).
func (n *Node) repairing() bool { return len(n.dg.jobs) > 0 }

// repairStep sends the next datagrams of the pending repair answers: the
// current state of the requested buckets' flows (REPAIR), and after each
// chunk of buckets a REPAIR_END with how many flows each bucket had.
// Node.mu held.
func (n *Node) repairStep() {
	budget := n.bodyBudget() - 32
	for sent := 0; sent < repairBurst && len(n.dg.jobs) > 0; {
		j := n.dg.jobs[0]
		pr := n.peers[j.peer]
		if pr == nil || pr.epoch != j.epoch || len(j.chunks) == 0 {
			n.dg.jobs = n.dg.jobs[1:]
			continue
		}
		if j.byBucket == nil {
			set := make(map[uint32]bool)
			for _, c := range j.chunks {
				for _, b := range c {
					set[b] = true
				}
			}
			j.byBucket = make(map[uint32][]cache.Change, len(set))
			for _, ch := range n.internal.BucketFlows(j.nb, set) {
				b := cache.BucketOf(&ch.Flow.Key, j.nb)
				j.byBucket[b] = append(j.byBucket[b], ch)
			}
			j.cur = j.chunkFlows()
		}
		if len(j.cur) > 0 {
			size, i := 0, 0
			for i < len(j.cur) {
				l := len(appendChange(n.scratch[:0], &j.cur[i]))
				if i > 0 && size+l > budget {
					break
				}
				size += l
				i++
			}
			n.sendTo(pr, &message{Type: MsgRepair, Changes: j.cur[:i],
				Digest: &DigestPart{Round: j.round, Buckets: uint32(j.nb)}})
			j.cur = j.cur[i:]
			sent++
			continue
		}
		c := j.chunks[0]
		end := &DigestPart{Round: j.round, Buckets: uint32(j.nb), List: c, Counts: make([]uint32, len(c))}
		for i, b := range c {
			end.Counts[i] = uint32(len(j.byBucket[b]))
		}
		n.sendTo(pr, &message{Type: MsgRepairEnd, Digest: end})
		sent++
		j.chunks = j.chunks[1:]
		if len(j.chunks) == 0 {
			n.dg.stats.RepairsServed++
			n.dg.jobs = n.dg.jobs[1:]
			continue
		}
		j.cur = j.chunkFlows()
	}
}

// chunkFlows returns the flows of the job's current chunk of buckets.
func (j *repairJob) chunkFlows() []cache.Change {
	var out []cache.Change
	for _, b := range j.chunks[0] {
		out = append(out, j.byBucket[b]...)
	}
	return out
}
