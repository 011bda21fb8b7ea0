package sync

import (
	"github.com/ctsyncd/ctsyncd/flow"
)

// Risk is how much of this node's table its peers do not hold yet.
type Risk struct {
	// Total counts the flows (states or removals) that at least one known
	// peer has not acknowledged: what a takeover by that peer would lose.
	Total uint64
	// ByPeer counts, by peer name, the flows that peer has not
	// acknowledged.
	ByPeer map[string]uint64
}

// AtRisk returns the flows of this node some peer does not hold yet: the
// distinct flows of the messages in the resend queue after the peer's last
// acknowledgement. Every peer whose epoch was accepted counts, alive or not
// (a peer behind a cut sync link is the case to see). When a peer's
// acknowledgement is older than the resend queue, or it never acknowledged
// anything, every flow of the internal cache counts for it: only a bulk
// transfer will bring it up to date.
//
// The cost is one pass over the queued messages' keys (at most
// ResendQueue messages of about 20 flows each), under the node's lock.
func (n *Node) AtRisk() Risk {
	n.mu.Lock()
	defer n.mu.Unlock()
	r := Risk{ByPeer: make(map[string]uint64, len(n.peers))}
	last := n.nextSeq - 1
	qFirst := n.queue.first(n.nextSeq)
	all := -1 // internal cache size, read once when needed
	whole := func() uint64 {
		if all < 0 {
			all = n.internal.Len()
		}
		return uint64(all)
	}
	// The union over peers of their unacknowledged suffixes is the suffix
	// after the smallest acknowledgement.
	minAck, any, everything := last, false, false
	for _, pr := range n.peers {
		if pr.name == "" {
			continue
		}
		switch {
		case pr.ackKnown && pr.acked >= last:
			r.ByPeer[pr.name] = 0
			continue
		case !pr.ackKnown || pr.acked+1 < qFirst:
			r.ByPeer[pr.name] = whole()
			everything = true
		default:
			r.ByPeer[pr.name] = distinctKeys(&n.queue, pr.acked+1, last)
		}
		any = true
		if pr.ackKnown {
			minAck = min(minAck, pr.acked)
		}
	}
	switch {
	case everything:
		r.Total = whole()
	case any:
		r.Total = distinctKeys(&n.queue, minAck+1, last)
	}
	return r
}

// distinctKeys counts the distinct flow keys of the queued messages with
// sequence numbers from..to.
func distinctKeys(q *resendQueue, from, to uint64) uint64 {
	seen := make(map[flow.Key]struct{})
	for s := from; s <= to; s++ {
		if e := q.get(s); e != nil {
			for _, k := range e.keys {
				seen[k] = struct{}{}
			}
		}
	}
	return uint64(len(seen))
}
