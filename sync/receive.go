package sync

// The receive side of a stream: in-order delivery, buffering, ACK and NACK.

import (
	"crypto/cipher"
	"slices"
	"time"
	"unsafe"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// peer is what a node knows of one other node, in both roles: the origin
// of a stream this node receives, and a receiver of this node's stream.
type peer struct {
	lastFullWarn time.Time // its flows refused at the per-origin bound were logged
	id           uint64
	name         string
	addr         string      // where replies go: a transport peer, or "" (to every peer)
	lastFrom     string      // source address of the last accepted datagram (not authenticated)
	epoch        uint64      // accepted epoch
	aead         cipher.AEAD // the accepted epoch's key; nil when insecure
	retired      []uint64
	window       replayWindow
	seen         time.Time

	rx rxState

	// Send side: what the peer acknowledged of this node's stream.
	acked        uint64
	ackKnown     bool
	resendBudget bucket // bytes of resends (Options.ResendRate)
	stats        PeerStats
	info         *NodeInfo // the peer's last NODE_INFO (nodeinfo.go)
}

// rxState is the receive state of one origin's stream.
type rxState struct {
	next         uint64 // next sequence number to apply
	buf          map[uint64]buffered
	bufBytes     int64  // memory held by buf, estimated (see memCost)
	maxSeen      uint64 // highest sequence number known to exist
	skipBelow    uint64 // a bulk began there: gaps below it need no repair
	ackedOut     uint64 // last cumulative ACK sent
	sinceAck     int
	ackDue       bool
	lastNack     time.Time
	nackedTo     uint64 // highest sequence number NACKed so far
	lastProgress time.Time
	resyncWanted bool // waiting for a bulk after accepting the epoch
	lastResync   time.Time
	ackNow       bool // a DATA_NOW was applied: acknowledge at once
}

func (n *Node) requestResync(pr *peer, now time.Time) {
	pr.rx.lastResync = now
	n.sendTo(pr, &message{Type: MsgResyncRequest})
}

// receiveSeq takes a message of pr's stream: applies it when it is the
// next, buffers it when it is ahead, drops it when it was applied already.
func (n *Node) receiveSeq(pr *peer, m *message, size int64, now time.Time) {
	rx := &pr.rx
	if m.Type == MsgBulkBegin {
		rx.resyncWanted = false
	}
	if m.Seq < rx.next {
		pr.stats.Drops.Duplicate++
		rx.ackDue = true
		return
	}
	if m.Seq > rx.maxSeen {
		rx.maxSeen = m.Seq
	}
	if m.Type == MsgBulkBegin {
		// A bulk supersedes everything sent before it: a gap below it
		// needs no repair (its BULK_END removes what the gap destroyed).
		rx.skipBelow = max(rx.skipBelow, m.Seq)
	} else if m.Seq >= rx.next+uint64(n.opt.ResendQueue) {
		pr.stats.Drops.Window++
		return
	}
	if _, dup := rx.buf[m.Seq]; dup {
		pr.stats.Drops.Duplicate++
		return
	}
	cost := memCost(m, size)
	if m.Seq != rx.next && rx.bufBytes+cost > n.opt.MaxBufferBytes {
		// Over the bound on what one peer may make us hold: refused, and
		// NACKed again once the gap before it heals.
		pr.stats.Drops.Overflow++
		return
	}
	rx.buf[m.Seq] = buffered{m, cost}
	rx.bufBytes += cost
	n.deliver(pr, now)
	if rx.maxSeen >= rx.next && rx.maxSeen > rx.nackedTo {
		n.sendNewNack(pr, now) // a new gap: ask at once
	}
	if rx.sinceAck >= ackEvery || rx.ackNow {
		rx.ackNow = false
		n.sendAck(pr)
	}
}

// deliver applies pr's buffered messages that are next in order.
func (n *Node) deliver(pr *peer, now time.Time) {
	rx := &pr.rx
	start := rx.next
	for {
		if b, ok := rx.buf[rx.next]; ok {
			delete(rx.buf, rx.next)
			rx.bufBytes -= b.cost
			n.apply(pr, b.m, now)
			if t := b.m.Type; (t == MsgData || t == MsgDataNow) && cap(b.m.Changes) > cap(n.freeChanges) {
				clear(b.m.Changes) // applied: nothing refers to them now
				n.freeChanges = b.m.Changes[:0]
			}
			rx.next++
			rx.sinceAck++
			continue
		}
		if rx.next >= rx.skipBelow {
			break
		}
		// Skip the gap up to the next buffered message or the bulk.
		to := rx.skipBelow
		for s := range rx.buf {
			if s > rx.next && s < to {
				to = s
			}
		}
		pr.stats.GapsSkipped++
		n.log.Debug("gap superseded by a bulk", "peer", pr.name, "from", rx.next, "to", to-1)
		rx.next = to
	}
	if rx.next != start {
		rx.lastProgress = now
	}
}

func (n *Node) apply(pr *peer, m *message, now time.Time) {
	switch m.Type {
	case MsgData, MsgDataNow:
		var admitted []cache.Change // for Options.Applied: what the policy and the cache took
		// adm: the receive policy's verdict; take: what the cache took.
		adm, take := n.admScratch[:0], n.takeScratch[:0]
		for i := range m.Changes {
			ch := &m.Changes[i]
			ok := ch.Deleted || n.opt.Policy == nil || n.opt.Policy.Admit(pr.name, &ch.Flow)
			if !ok {
				// Refused by the receive policy: whatever this node held
				// of the flow goes too, so nothing refused stays.
				pr.stats.PolicyRefused++
				n.external.Delete(pr.name, ch.Flow.Key)
			}
			adm, take = append(adm, ok), append(take, ok)
		}
		n.admScratch, n.takeScratch = adm, take
		n.external.ApplyAll(pr.name, m.Changes, now, take)
		full := 0
		for i := range m.Changes {
			switch {
			case take[i]:
				pr.stats.FlowsIn++
				if n.opt.Applied != nil {
					admitted = append(admitted, m.Changes[i])
				}
			case adm[i]:
				pr.stats.Drops.Overflow++
				full++
			}
		}
		if full > 0 && now.Sub(pr.lastFullWarn) > time.Minute {
			pr.lastFullWarn = now
			n.log.Warn("a peer's flows are refused: this node holds as many of them, or as many peers, as it may (sync.max_flows_per_origin, sync.max_peers)",
				"peer", pr.name, "refused", full, "refused_total", pr.stats.Drops.Overflow)
		}
		if len(admitted) > 0 {
			n.opt.Applied(pr.name, admitted, m.Type == MsgDataNow)
		}
		if m.Type == MsgDataNow {
			pr.rx.ackNow = true
		}
	case MsgBulkBegin:
		pr.stats.BulksReceived++
		n.external.BeginBulk(pr.name, m.Bulk)
		n.log.Debug("bulk begins", "peer", pr.name, "bulk", m.Bulk)
	case MsgExpect:
		n.applyExpects(pr, m, now)
	case MsgBulkEnd:
		removed := n.external.EndBulk(pr.name, m.Bulk)
		n.log.Info("bulk received", "peer", pr.name, "removed", removed)
	}
}

func (n *Node) sendAck(pr *peer) {
	rx := &pr.rx
	rx.sinceAck, rx.ackDue = 0, false
	rx.ackedOut = rx.next - 1
	pr.stats.AcksOut++
	n.sendTo(pr, &message{Type: MsgAck, Seq: rx.next - 1})
}

// missing returns the ranges of pr's stream not received, up to maxSeen.
func (rx *rxState) missing() []seqRange {
	if rx.maxSeen < rx.next {
		return nil
	}
	have := make([]uint64, 0, len(rx.buf))
	for s := range rx.buf {
		have = append(have, s)
	}
	slices.Sort(have)
	var out []seqRange
	from := rx.next
	for _, s := range have {
		if len(out) == MaxNackRanges {
			return out
		}
		if s > from {
			out = append(out, seqRange{from, s - 1})
		}
		from = s + 1
	}
	if from <= rx.maxSeen && len(out) < MaxNackRanges {
		out = append(out, seqRange{from, rx.maxSeen})
	}
	return out
}

// sendNewNack NACKs only what went missing since the last NACK.
func (n *Node) sendNewNack(pr *peer, now time.Time) {
	rx := &pr.rx
	var r []seqRange
	for _, x := range rx.missing() {
		if x.Last <= rx.nackedTo {
			continue
		}
		x.First = max(x.First, rx.nackedTo+1)
		r = append(r, x)
	}
	rx.nackedTo = rx.maxSeen
	if len(r) == 0 {
		return
	}
	pr.stats.NacksOut++
	n.sendTo(pr, &message{Type: MsgNack, Ranges: r})
}

func (n *Node) sendNack(pr *peer, now time.Time) {
	rx := &pr.rx
	r := rx.missing()
	if len(r) == 0 {
		return
	}
	rx.lastNack = now
	rx.nackedTo = rx.maxSeen
	pr.stats.NacksOut++
	n.sendTo(pr, &message{Type: MsgNack, Ranges: r})
}

// ackTick runs every ack interval: acknowledgements, repeated NACKs,
// resync requests for gaps that do not heal, peer liveness.
func (n *Node) ackTick() {
	now := n.now()
	stuck := max(40*n.opt.AckInterval, 3*n.opt.HeartbeatInterval)
	for _, pr := range n.peers {
		rx := &pr.rx
		if rx.buf == nil {
			continue
		}
		if rx.next-1 > rx.ackedOut || rx.ackDue {
			n.sendAck(pr)
		}
		if rx.maxSeen >= rx.next {
			if now.Sub(rx.lastNack) >= nackRetry*n.opt.AckInterval {
				n.sendNack(pr, now)
			}
			if now.Sub(rx.lastProgress) > stuck && now.Sub(rx.lastResync) > stuck {
				pr.stats.FullResyncs++
				n.log.Info("gap does not heal: requesting a resync", "peer", pr.name, "at", rx.next)
				n.requestResync(pr, now)
			}
		} else {
			rx.lastProgress = now
		}
		if rx.resyncWanted && now.Sub(rx.lastResync) > n.opt.HeartbeatInterval {
			n.requestResync(pr, now)
		}
	}
	if n.bulkPending {
		n.requestedBulk(now)
	}
	n.releaseWaiters(now) // peers may have gone down
}

// buffered is a stream message received ahead of its turn.
type buffered struct {
	m    *message
	cost int64
}

// memCost estimates the memory a decoded message holds: the datagram, the
// decoded changes and their extra parts.
func memCost(m *message, size int64) int64 {
	c := size + int64(unsafe.Sizeof(message{})) + int64(len(m.Changes))*int64(unsafe.Sizeof(cache.Change{}))
	for i := range m.Changes {
		if m.Changes[i].Flow.Extra != nil {
			c += int64(unsafe.Sizeof(flow.Extra{})) + int64(len(m.Changes[i].Flow.Extra.Helper))
		}
	}
	return c
}
