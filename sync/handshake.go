package sync

// The epoch handshake: a peer's epoch is accepted only after it answered
// a fresh challenge sealed under that epoch.

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"time"
)

type challenge struct {
	nonce [NonceLen]byte
	sent  time.Time
}

// statsFor returns the counters to charge for a datagram from addr claiming
// node id.
func (n *Node) statsFor(id uint64, addr string) *PeerStats {
	if pr, ok := n.peers[id]; ok {
		return &pr.stats
	}
	s, ok := n.anon[addr]
	if !ok {
		if len(n.anon) >= maxAnon {
			clear(n.anon)
		}
		s = &PeerStats{Addr: addr}
		n.anon[addr] = s
	}
	return s
}

// peerAEAD returns the key of a peer's epoch, nil when insecure.
func (n *Node) peerAEAD(id, epoch uint64) (cipher.AEAD, error) {
	if n.opt.Key == nil {
		return nil, nil
	}
	k := [2]uint64{id, epoch}
	if a, ok := n.keys[k]; ok {
		return a, nil
	}
	a, err := epochAEAD(n.opt.Key, id, epoch)
	if err != nil {
		return nil, err
	}
	if len(n.keys) >= maxKeyCache {
		for k2 := range n.keys {
			delete(n.keys, k2)
		}
		for _, pr := range n.peers {
			if pr.epoch != 0 {
				if a2, err := epochAEAD(n.opt.Key, pr.id, pr.epoch); err == nil {
					n.keys[[2]uint64{pr.id, pr.epoch}] = a2
				}
			}
		}
	}
	n.keys[k] = a
	return a, nil
}

// challenge asks the sender of an unproven epoch to prove it, at most once
// per two ack intervals per node.
func (n *Node) challenge(id uint64, addr string, now time.Time) {
	c, ok := n.challenges[id]
	if ok && now.Sub(c.sent) < 2*n.opt.AckInterval {
		return
	}
	if !ok {
		if len(n.challenges) >= maxChallenges {
			clear(n.challenges)
		}
		c = &challenge{}
		n.challenges[id] = c
	}
	rand.Read(c.nonce[:])
	c.sent = now
	n.sendTo(addr, &message{Type: MsgChallenge, Name: n.opt.NodeName, Nonce: c.nonce[:]})
}

// verifyResponse accepts a peer's epoch when it answered our current
// challenge: only a holder of the key living in that epoch can seal the
// fresh nonce under it.
func (n *Node) verifyResponse(h *header, m *message, addr string, now time.Time) {
	c, ok := n.challenges[h.Node]
	if !ok || subtle.ConstantTimeCompare(c.nonce[:], m.Nonce) != 1 {
		n.statsFor(h.Node, addr).Drops.Unverified++
		return
	}
	if NodeID(m.Name) != h.Node {
		n.statsFor(h.Node, addr).Drops.Malformed++
		n.log.Warn("peer's name does not match its node id", "name", m.Name, "from", addr)
		return
	}
	delete(n.challenges, h.Node)
	pr, ok := n.peers[h.Node]
	if !ok {
		pr = &peer{id: h.Node}
		if s, ok := n.anon[addr]; ok {
			pr.stats = *s
			delete(n.anon, addr)
		}
		n.peers[h.Node] = pr
	} else if pr.epoch != 0 {
		pr.retired = append(pr.retired, pr.epoch)
		if len(pr.retired) > maxRetired {
			pr.retired = pr.retired[1:]
		}
		delete(n.keys, [2]uint64{pr.id, pr.epoch})
	}
	if pr.name != "" && pr.name != m.Name {
		n.log.Warn("peer changed its name", "old", pr.name, "new", m.Name)
	}
	pr.name, pr.addr, pr.epoch, pr.seen = m.Name, addr, h.Epoch, now
	pr.window.reset(h.Counter)
	next := max(m.Seq, 1)
	pr.rx = rxState{next: next, buf: make(map[uint64]*message), maxSeen: next - 1,
		ackedOut: next - 1, lastProgress: now}
	pr.acked, pr.ackKnown = 0, false
	n.log.Info("peer epoch accepted", "peer", pr.name, "addr", addr, "epoch", fmt.Sprintf("%016x", h.Epoch))
	pr.rx.resyncWanted = true
	n.requestResync(pr, now)
	n.sendAck(pr)
}
