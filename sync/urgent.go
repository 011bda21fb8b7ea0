package sync

import (
	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"

	"time"
)

// First-packet defer: SendNow sends changes ahead of the internal cache's
// batch in a DATA_NOW message, a DATA that its receivers apply (in inject
// mode: write into their kernel) and acknowledge at once, and reports when
// every peer that was up at the time has acknowledged it. DATA_NOW is part
// of the sequenced stream, so it is repaired by NACK like DATA (resent with
// the changes as they were sent: a deferred flow is usually not in the
// internal cache yet) and keeps its order relative to the batch.

// maxWaiters bounds the SendNow calls waiting for acknowledgements; the
// oldest beyond it are given up.
const maxWaiters = 1 << 16

// nowWaiter is one SendNow waiting for acknowledgements.
type nowWaiter struct {
	seq   uint64
	peers []uint64 // ids of the peers that were up when it was sent
	sent  time.Time
	done  func(acked bool)
}

// SendNow sends chs to every peer now, ahead of the batch, and returns how
// many peers are up. When that is 0 nothing is sent and done is never
// called. Otherwise done is called once: acked true when each of those
// peers has acknowledged the message, false when one went down before it
// did or the node stops waiting (after a peer timeout, or beyond 65536
// waiting calls). done runs on the node's goroutine with the node locked:
// it must be quick and must not call the Node. At most MaxFlowsPerMessage
// changes fit in one call; a caller sends a few.
func (n *Node) SendNow(chs []cache.Change, done func(acked bool)) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.now()
	var up []uint64
	for id, pr := range n.peers {
		if now.Sub(pr.seen) < n.opt.PeerTimeout {
			up = append(up, id)
		}
	}
	if len(up) == 0 || len(chs) == 0 {
		return 0
	}
	chs = chs[:min(len(chs), MaxFlowsPerMessage)]
	keep := make([]cache.Change, len(chs))
	copy(keep, chs)
	keys := make([]flow.Key, len(keep))
	for i := range keep {
		keys[i] = keep[i].Flow.Key
	}
	seq := n.nextSeq
	n.nextSeq++
	n.queue.push(queued{seq: seq, typ: MsgDataNow, keys: keys, chs: keep, sent: now})
	n.sendAll(&message{Type: MsgDataNow, Seq: seq, Changes: keep})
	if len(n.waiters) >= maxWaiters {
		n.waiters[0].done(false)
		n.waiters = n.waiters[1:]
	}
	n.waiters = append(n.waiters, nowWaiter{seq: seq, peers: up, sent: now, done: done})
	return len(up)
}

// releaseWaiters calls the waiters whose message every awaited peer has
// acknowledged (acked) or that cannot be acknowledged any more: a peer
// went down or changed its epoch, or the wait outlived a peer timeout.
func (n *Node) releaseWaiters(now time.Time) {
	if len(n.waiters) == 0 {
		return
	}
	kept := n.waiters[:0]
	for _, w := range n.waiters {
		acked, lost := true, now.Sub(w.sent) >= n.opt.PeerTimeout
		for _, id := range w.peers {
			pr := n.peers[id]
			switch {
			case pr == nil || now.Sub(pr.seen) >= n.opt.PeerTimeout:
				lost = true
			case !pr.ackKnown || pr.acked < w.seq:
				acked = false
			}
		}
		switch {
		case acked && !lost:
			w.done(true)
		case lost:
			w.done(false)
		default:
			kept = append(kept, w)
		}
	}
	clear(n.waiters[len(kept):])
	n.waiters = kept
}
