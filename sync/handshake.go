package sync

// The epoch handshake: a peer's epoch is accepted only after it answered
// a fresh challenge sealed under that epoch.

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"slices"
	"time"
)

// challenge is one outstanding challenge, to one epoch of one node. Its
// nonce stays the same until it expires, so that a RESPONSE to an earlier
// copy still counts when the challenge is sent again.
type challenge struct {
	nonce   [NonceLen]byte
	created time.Time
	sent    time.Time
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

// peerAEAD returns the key of a peer's epoch, nil when insecure. The key of
// an accepted epoch lives with the peer and is never evicted; other keys
// are derived at most deriveRate times per second (ok false: rate limited)
// and cached only once a datagram authenticated under them (see keep).
func (n *Node) peerAEAD(id, epoch uint64, now time.Time) (a cipher.AEAD, cached, ok bool) {
	if n.opt.Key == nil {
		return nil, true, true
	}
	if pr := n.peers[id]; pr != nil && pr.epoch == epoch && pr.aead != nil {
		return pr.aead, true, true
	}
	if a, ok := n.keys[[2]uint64{id, epoch}]; ok {
		return a, true, true
	}
	if !n.derive.take(now, deriveRate, deriveBurst, 1) {
		return nil, false, false
	}
	a, err := epochAEAD(n.opt.Key, id, epoch)
	if err != nil {
		return nil, false, false
	}
	return a, false, true
}

// keep caches the key of an epoch not accepted yet, after a datagram
// authenticated under it. A full cache forgets an arbitrary entry: only
// keys of epochs not accepted live here.
func (n *Node) keep(id, epoch uint64, a cipher.AEAD) {
	if a == nil {
		return
	}
	if len(n.keys) >= maxKeyCache {
		for k := range n.keys {
			delete(n.keys, k)
			break
		}
	}
	n.keys[[2]uint64{id, epoch}] = a
}

// replyAddr is where a reply to a datagram from src goes: src when it is
// one of the transport's peers (configured, or members the transport
// learned), otherwise "" (sent to every peer, named in the header). A
// datagram's source address is not authenticated: a reply never goes to
// an address the transport does not know.
func (n *Node) replyAddr(src string) string {
	if slices.Contains(n.tr.Peers(), src) {
		return src
	}
	return ""
}

// challenge asks the sender of an unproven epoch to prove it. One
// challenge per (node, epoch), several outstanding; each sent at most once
// per two ack intervals, and within the per-source and global limits.
func (n *Node) challenge(h *header, src string, now time.Time) {
	k := [2]uint64{h.Node, h.Epoch}
	c, ok := n.challenges[k]
	if ok && now.Sub(c.sent) < 2*n.opt.AckInterval {
		return
	}
	if !n.handshakeAllowed(src, now) {
		n.statsFor(h.Node, src).Drops.RateLimited++
		return
	}
	if !ok || now.Sub(c.created) > n.challengeTTL() {
		if !ok && len(n.challenges) >= maxChallenges {
			n.evictChallenge()
		}
		c = &challenge{created: now}
		rand.Read(c.nonce[:])
		n.challenges[k] = c
	}
	c.sent = now
	n.sendHandshake(n.replyAddr(src), h.Node, h.Epoch, &message{Type: MsgChallenge, Name: n.opt.NodeName, Nonce: c.nonce[:]})
}

// challengeTTL is how long a challenge's nonce stays valid.
func (n *Node) challengeTTL() time.Duration { return n.opt.PeerTimeout }

// evictChallenge forgets the oldest outstanding challenge.
func (n *Node) evictChallenge() {
	var oldest [2]uint64
	var at time.Time
	first := true
	for k, c := range n.challenges {
		if first || c.created.Before(at) {
			oldest, at, first = k, c.created, false
		}
	}
	delete(n.challenges, oldest)
}

// handshakeAllowed charges one CHALLENGE or RESPONSE to src and to the
// global budget.
func (n *Node) handshakeAllowed(src string, now time.Time) bool {
	return n.hsSource.allow(src, now) && n.hsGlobal.take(now, handshakeGlobalRate, handshakeGlobalBurst, 1)
}

// respond answers a CHALLENGE: the RESPONSE proves that this node holds the
// key and lives in its epoch. It is addressed to the challenger's node id
// and epoch (a replay to another node or epoch is refused there), and rate
// limited per challenger and per source.
func (n *Node) respond(h *header, m *message, src string, now time.Time) {
	if !n.hsChallenger.allow([2]uint64{h.Node, h.Epoch}, now) || !n.handshakeAllowed(src, now) {
		n.statsFor(h.Node, src).Drops.RateLimited++
		return
	}
	n.sendHandshake(n.replyAddr(src), h.Node, h.Epoch,
		&message{Type: MsgResponse, Name: n.opt.NodeName, Nonce: m.Nonce, Seq: n.nextSeq})
}

// verifyResponse accepts a peer's epoch when it answered our challenge to
// that very epoch: only a holder of the key living in that epoch can seal
// the nonce under it, and the header names us (and our epoch) as its
// receiver.
func (n *Node) verifyResponse(h *header, m *message, src string, now time.Time) {
	k := [2]uint64{h.Node, h.Epoch}
	c, ok := n.challenges[k]
	if !ok || subtle.ConstantTimeCompare(c.nonce[:], m.Nonce) != 1 || now.Sub(c.created) > n.challengeTTL() {
		n.statsFor(h.Node, src).Drops.Unverified++
		return
	}
	if NodeID(m.Name) != h.Node {
		n.statsFor(h.Node, src).Drops.Malformed++
		n.log.Warn("peer's name does not match its node id", "name", Escape(m.Name), "from", src)
		return
	}
	if err := ValidateName(m.Name); err != nil {
		n.statsFor(h.Node, src).Drops.Malformed++
		n.log.Warn("peer's name refused", "name", Escape(m.Name), "from", src, "err", err)
		return
	}
	pr, ok := n.peers[h.Node]
	if !ok && len(n.peers) >= n.opt.MaxPeers {
		n.statsFor(h.Node, src).Drops.Overflow++
		n.log.Warn("peer refused: too many peers", "peer", m.Name, "max_peers", n.opt.MaxPeers)
		return
	}
	delete(n.challenges, k)
	aead := n.keys[k]
	delete(n.keys, k)
	if aead == nil && n.opt.Key != nil {
		a, err := epochAEAD(n.opt.Key, h.Node, h.Epoch)
		if err != nil {
			n.statsFor(h.Node, src).Drops.Auth++
			return
		}
		aead = a
	}
	if !ok {
		pr = &peer{id: h.Node}
		if s, ok := n.anon[src]; ok {
			pr.stats = *s
			delete(n.anon, src)
		}
		n.peers[h.Node] = pr
	} else if pr.epoch != 0 {
		pr.retired = append(pr.retired, pr.epoch)
		if len(pr.retired) > maxRetired {
			pr.retired = pr.retired[1:]
		}
	}
	if pr.name != "" && pr.name != m.Name {
		n.log.Warn("peer changed its name", "old", pr.name, "new", m.Name)
	}
	pr.name, pr.epoch, pr.seen, pr.aead = m.Name, h.Epoch, now, aead
	pr.addr, pr.lastFrom = n.replyAddr(src), src
	pr.window.reset(h.Counter)
	next := max(m.Seq, 1)
	pr.rx = rxState{next: next, buf: make(map[uint64]buffered), maxSeen: next - 1,
		ackedOut: next - 1, lastProgress: now}
	pr.acked, pr.ackKnown = 0, false
	n.log.Info("peer epoch accepted", "peer", pr.name, "addr", src, "epoch", fmt.Sprintf("%016x", h.Epoch))
	n.sendInfo() // the new epoch learns our version and ruleset at once
	pr.rx.resyncWanted = true
	n.requestResync(pr, now)
	n.sendAck(pr)
}
