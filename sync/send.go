package sync

// The send side of the stream: batching, sealing, NACK repair.

import (
	"encoding/binary"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// sendChanges sends the internal cache's pending changes.
func (n *Node) sendChanges() {
	for range 64 { // bounded per call; Changed fires again for the rest
		chs := n.internal.AppendChanges(n.changeScratch[:0], 1024)
		if len(chs) == 0 {
			return
		}
		n.sendBatch(chs)
		clear(chs) // no Extra kept alive by the scratch
		n.changeScratch = chs[:0]
	}
}

// bodyBudget is the room for changes in one DATA datagram.
func (n *Node) bodyBudget() int {
	return n.opt.MTU - HeaderLen - TagLen - 2*binary.MaxVarintLen64
}

// sendBatch packs changes into DATA messages up to the MTU and sends them.
func (n *Node) sendBatch(chs []cache.Change) {
	budget := n.bodyBudget()
	start, size := 0, 0
	for i := range chs {
		l := len(appendChange(n.scratch[:0], &chs[i]))
		if i > start && size+l > budget {
			n.sendData(chs[start:i])
			start, size = i, 0
		}
		size += l
	}
	if start < len(chs) {
		n.sendData(chs[start:])
	}
}

func (n *Node) sendData(chs []cache.Change) {
	keys := make([]flow.Key, len(chs))
	for i := range chs {
		keys[i] = chs[i].Flow.Key
	}
	seq := n.nextSeq
	n.nextSeq++
	n.queue.push(queued{seq: seq, typ: MsgData, keys: keys, sent: n.now()})
	n.sendAll(&message{Type: MsgData, Seq: seq, Changes: chs})
}

func (n *Node) sendMarker(t MsgType, bulk uint64) uint64 {
	seq := n.nextSeq
	n.nextSeq++
	n.queue.push(queued{seq: seq, typ: t, bulk: bulk, sent: n.now()})
	n.sendAll(&message{Type: t, Seq: seq, Bulk: bulk})
	return seq
}

// repair answers a NACK: each lost message still queued is sent again to
// the peer under its sequence number, carrying the current state of the
// flows it carried (a flow destroyed since goes as a removal). A lost
// message no longer queued cannot be repaired: a bulk follows, unless one
// began after it.
func (n *Node) repair(pr *peer, ranges []seqRange) {
	now := n.now()
	budget := maxResendBurst
	lost := false
	for _, r := range ranges {
		last := min(r.Last, n.nextSeq-1)
		first := r.First
		if pr.ackKnown && first <= pr.acked {
			first = pr.acked + 1 // a stale NACK, overtaken by an ACK
		}
		// The queue holds every sequence number from its oldest on.
		if qFirst := n.queue.first(n.nextSeq); first < qFirst {
			if min(last, qFirst-1) >= n.lastBegin {
				lost = true
				n.log.Debug("NACKed messages no longer queued", "from", first, "oldest queued", qFirst, "last bulk", n.lastBegin)
			}
			first = qFirst
		}
		for s := first; s <= last && budget > 0; s++ {
			e := n.queue.get(s)
			if e == nil {
				continue
			}
			if e.resentTo == pr.id && now.Sub(e.resentAt) < n.opt.AckInterval {
				continue // a duplicate NACK: the resend is on its way
			}
			pr.resendBudget.refill(now, float64(n.opt.ResendRate), n.resendBurst())
			if pr.resendBudget.tokens <= 0 {
				// Over the byte budget: the peer NACKs again later.
				pr.stats.ResendsRefused++
				budget = 0
				break
			}
			e.resentTo, e.resentAt = pr.id, now
			budget--
			pr.stats.Resends++
			pr.resendBudget.tokens -= float64(n.resend(pr, e))
		}
	}
	if lost {
		pr.stats.FullResyncs++
		n.log.Info("peer lost messages no longer queued: bulk follows", "peer", pr.name)
		n.requestedBulk(now)
	}
}

// resendBurst is the byte budget a peer's resends may use at once.
func (n *Node) resendBurst() float64 { return max(float64(n.opt.ResendRate)/4, 4*float64(n.opt.MTU)) }

// resend sends a queued message again to pr and returns its size.
func (n *Node) resend(pr *peer, e *queued) int {
	if e.typ == MsgExpect {
		return n.resendExpect(pr, e)
	}
	if e.typ == MsgDataNow {
		return n.sendTo(pr, &message{Type: MsgDataNow, Seq: e.seq, Changes: e.chs})
	}
	if e.typ != MsgData {
		return n.sendTo(pr, &message{Type: e.typ, Seq: e.seq, Bulk: e.bulk})
	}
	chs := make([]cache.Change, len(e.keys))
	for i, k := range e.keys {
		chs[i] = n.internal.Current(k)
	}
	return n.sendTo(pr, &message{Type: MsgData, Seq: e.seq, Changes: chs})
}

// trimQueue forgets the messages every live peer acknowledged.
func (n *Node) trimQueue(now time.Time) {
	upTo := uint64(0)
	found := false
	for _, pr := range n.peers {
		if !pr.ackKnown || now.Sub(pr.seen) >= n.opt.PeerTimeout {
			continue
		}
		if !found || pr.acked < upTo {
			upTo = pr.acked
		}
		found = true
	}
	if found {
		n.queue.trim(upTo)
	}
}

// seal encodes and seals m as this node's next datagram into n.out,
// addressed to the node to in its epoch toEpoch (0, 0: every peer).
func (n *Node) seal(m *message, to, toEpoch uint64) []byte {
	n.scratch = appendBody(n.scratch[:0], m)
	n.counter++
	h := header{Type: m.Type, Node: n.id, Epoch: n.epoch, Counter: n.counter, To: to, ToEpoch: toEpoch}
	if streamExt(m.Type) {
		h.Flags = flagStreamExt
	}
	n.out = seal(n.out[:0], h, n.scratch, n.aead)
	return n.out
}

// sendAll sends m to every peer.
func (n *Node) sendAll(m *message) {
	b := n.seal(m, 0, 0)
	if len(b) > MaxDatagram {
		n.log.Error("message too large, not sent", "type", m.Type, "bytes", len(b))
		return
	}
	if err := n.tr.Send(b); err != nil {
		n.log.Debug("send failed", "type", m.Type, "err", err)
	}
	for _, pr := range n.peers {
		pr.stats.MsgsOut++
		pr.stats.BytesOut += uint64(len(b))
	}
}

// sendTo sends m to the accepted peer pr, addressed to it in the header,
// and returns the datagram's size.
func (n *Node) sendTo(pr *peer, m *message) int {
	b := n.transmit(pr.addr, pr.id, pr.epoch, m)
	pr.stats.MsgsOut++
	pr.stats.BytesOut += uint64(len(b))
	return len(b)
}

// sendHandshake sends a CHALLENGE or RESPONSE to the node to in its epoch
// toEpoch, at addr (a transport peer) or, addr "", to every peer.
func (n *Node) sendHandshake(addr string, to, toEpoch uint64, m *message) {
	n.transmit(addr, to, toEpoch, m)
}

// transmit seals m addressed to (to, toEpoch) and sends it to addr, or to
// every peer when addr is "" (the receiver named in the header is the only
// one to accept it).
func (n *Node) transmit(addr string, to, toEpoch uint64, m *message) []byte {
	b := n.seal(m, to, toEpoch)
	if len(b) > MaxDatagram {
		n.log.Error("message too large, not sent", "type", m.Type, "bytes", len(b))
		return nil
	}
	var err error
	if addr == "" {
		err = n.tr.Send(b)
	} else {
		err = n.tr.SendTo(addr, b)
	}
	if err != nil {
		n.log.Debug("send failed", "type", m.Type, "to", addr, "err", err)
	}
	return b
}
