package sync

// Bulk transfers: the whole internal cache, paced, between BULK_BEGIN and
// BULK_END.

import (
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// bulkState is a bulk transfer in progress.
type bulkState struct {
	id    uint64
	begin uint64
	keys  []flow.Key
	pos   int
}

// startBulk begins a bulk transfer of the internal cache. A bulk in
// progress continues, unless restart is set.
func (n *Node) startBulk(restart bool) {
	if n.bulk != nil && !restart {
		return
	}
	keys := n.internal.Keys()
	id := randUint64()
	begin := n.sendMarker(MsgBulkBegin, id)
	n.lastBegin = begin
	n.lastBulk = n.now()
	n.bulk = &bulkState{id: id, begin: begin, keys: keys}
	for _, pr := range n.peers {
		pr.stats.BulksSent++
	}
	n.log.Info("bulk transfer begins", "flows", len(keys))
}

// bulkStep sends the next datagrams of the bulk in progress, each change
// with the flow's state of now (flows destroyed since the bulk began are
// skipped: their removal went out as a change).
func (n *Node) bulkStep() {
	b := n.bulk
	if b == nil {
		return
	}
	budget := n.bodyBudget()
	for range n.opt.BulkBurst {
		var chs []cache.Change
		size := 0
		for b.pos < len(b.keys) {
			ch := n.internal.Current(b.keys[b.pos])
			if ch.Deleted {
				b.pos++
				continue
			}
			l := len(appendChange(n.scratch[:0], &ch))
			if len(chs) > 0 && size+l > budget {
				break
			}
			chs = append(chs, ch)
			size += l
			b.pos++
		}
		if len(chs) > 0 {
			n.sendData(chs)
		}
		if b.pos >= len(b.keys) {
			exps := n.bulkExpects()
			n.sendMarker(MsgBulkEnd, b.id)
			n.bulk = nil
			n.log.Info("bulk transfer sent", "flows", len(b.keys), "expectations", exps)
			return
		}
	}
}

// requestedBulk starts a bulk a peer asked for (a RESYNC_REQUEST, or a
// NACK of messages no longer queued), at most once per
// Options.MinBulkInterval: a request within it is held until the interval
// passed (ackTick starts it), so that requests, replayed or not, cannot
// keep a node sending its table. A bulk in progress serves the request.
func (n *Node) requestedBulk(now time.Time) {
	if n.bulk != nil {
		return
	}
	if !n.lastBulk.IsZero() && now.Sub(n.lastBulk) < n.opt.MinBulkInterval {
		n.bulkPending = true
		return
	}
	n.bulkPending = false
	n.startBulk(false)
}
