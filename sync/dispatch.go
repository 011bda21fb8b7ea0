package sync

// Receiving a datagram: verification (handle) and the one place where a
// message type is mapped to what the node does with it (dispatch).
//
// To add a message type: append its number in wire.go (ONLY APPEND, and
// move msgTypeEnd, name it in msgTypeNames), give it an encoding in appendBody/decodeBody (or a
// codec of its own), then add a case to dispatch below that calls a method
// in a file of its own. Messages of epochs not (yet) accepted never reach
// dispatch.

import (
	"slices"
	"time"
)

// handle processes one received datagram. Order: size and header; the
// receiver named in the header; the key (rate limited for epochs not
// accepted); authentication; epoch and replay checks; body decoding; then
// effects (the handshake here, everything else in dispatch).
func (n *Node) handle(p Packet) {
	now := n.now()
	if len(p.Data) > n.opt.MaxDatagramIn {
		n.statsFor(0, p.From).Drops.TooLarge++
		return
	}
	h, err := parseHeader(p.Data)
	if err != nil {
		n.statsFor(0, p.From).Drops.Malformed++
		n.log.Debug("dropped malformed datagram", "from", p.From, "err", err)
		return
	}
	if h.Node == n.id && h.Epoch == n.epoch {
		return // our own, looped back by multicast
	}
	if h.To != 0 && (h.To != n.id || h.ToEpoch != n.epoch) {
		n.statsFor(h.Node, p.From).Drops.NotForUs++
		return
	}
	st := n.statsFor(h.Node, p.From)
	aead, cached, ok := n.peerAEAD(h.Node, h.Epoch, now)
	if !ok {
		st.Drops.RateLimited++
		return
	}
	body, err := open(p.Data, &h, aead)
	if err != nil {
		st.Drops.Auth++
		n.log.Debug("dropped datagram failing authentication", "from", p.From, "err", err)
		return
	}
	if h.Node == n.id {
		// Authentic, from another epoch of our own id: another node uses
		// this node's name (or a capture of our previous start).
		if now.Sub(n.lastTwinWarn) > time.Minute {
			n.lastTwinWarn = now
			n.log.Error("another node uses this node's name, or an earlier start of it is replayed; its datagrams are ignored", "from", p.From)
		}
		return
	}
	if !cached {
		n.keep(h.Node, h.Epoch, aead)
	}
	pr := n.peers[h.Node]
	accepted := pr != nil && pr.epoch == h.Epoch
	if accepted && !pr.window.check(h.Counter) {
		st.Drops.Replay++
		return
	}
	if !accepted && pr != nil && slices.Contains(pr.retired, h.Epoch) {
		st.Drops.OldEpoch++
		return
	}
	var m *message
	if !known(h.Type) && h.Flags&flagStreamExt == 0 {
		m = &message{Type: h.Type} // a newer peer's message beside the stream: ignored
	} else {
		m, err = decodeBodyReuse(h.Type, body, n.freeChanges)
		n.freeChanges = nil
	}
	if err != nil {
		st.Drops.Malformed++
		n.log.Debug("dropped malformed message", "from", p.From, "err", err)
		return
	}
	st.MsgsIn++
	st.BytesIn += uint64(len(p.Data))
	if accepted {
		pr.window.mark(h.Counter)
		pr.seen = now
		if p.From != pr.lastFrom {
			pr.lastFrom = p.From
			if a := n.replyAddr(p.From); a != "" {
				pr.addr = a
			}
		}
	}
	switch m.Type {
	case MsgChallenge:
		n.respond(&h, m, p.From, now)
		if !accepted {
			n.challenge(&h, p.From, now)
		}
		return
	case MsgResponse:
		if !accepted {
			n.verifyResponse(&h, m, p.From, now)
		}
		return
	}
	if !accepted {
		st.Drops.Unverified++
		n.challenge(&h, p.From, now)
		return
	}
	n.dispatch(pr, m, int64(len(p.Data)), now)
}

// dispatch acts on a message of pr's accepted epoch, authenticated and
// checked against the replay window.
func (n *Node) dispatch(pr *peer, m *message, size int64, now time.Time) {
	switch m.Type {
	case MsgData, MsgDataNow, MsgBulkBegin, MsgBulkEnd, MsgExpect:
		n.receiveSeq(pr, m, size, now)
	case MsgHeartbeat:
		if m.Seq > pr.rx.maxSeen {
			pr.rx.maxSeen = m.Seq
		}
	case MsgAck:
		pr.stats.AcksIn++
		if m.Seq < n.nextSeq && (!pr.ackKnown || m.Seq > pr.acked) {
			pr.acked, pr.ackKnown = m.Seq, true
			n.trimQueue(now)
			n.releaseWaiters(now)
		}
	case MsgNack:
		pr.stats.NacksIn++
		n.repair(pr, m.Ranges)
	case MsgResyncRequest:
		pr.stats.ResyncRequestsIn++
		n.log.Info("peer requests a resync", "peer", pr.name)
		n.requestedBulk(now)
	case MsgHello:
		// Known already; nothing to do.
	case MsgDigest, MsgDigestRequest, MsgRepair, MsgRepairEnd:
		n.handleDigest(pr, m, now)
	case MsgNodeInfo:
		n.receiveInfo(pr, m, now)
	default:
		if m.Seq != 0 {
			// A newer peer's stream message (flagStreamExt): take its
			// sequence number; its content is not for this version.
			n.receiveSeq(pr, m, size, now)
		}
	}
}
