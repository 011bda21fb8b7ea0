package sync

// The resend queue: a ring of the last sent stream messages.

import (
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// queued is a sent stream message kept for repair.
type queued struct {
	seq   uint64
	typ   MsgType
	keys  []flow.Key       // DATA: the flows it carried
	ekeys []flow.ExpectKey // EXPECT: the expectations it carried
	bulk  uint64           // BULK_BEGIN/END: the bulk id
	chs   []cache.Change   // DATA_NOW: the changes, resent as they were (the flows may not be in the internal cache yet)
	sent  time.Time

	resentTo uint64 // the peer it was last resent to, and when
	resentAt time.Time
}

// resendQueue holds the last max stream messages, in sequence order
// without holes (a ring).
type resendQueue struct {
	max   int
	items []queued
	head  int // index of the oldest
	n     int
}

func (q *resendQueue) push(e queued) {
	if q.items == nil {
		q.items = make([]queued, q.max)
	}
	if q.n == q.max {
		q.items[q.head] = queued{}
		q.head = (q.head + 1) % q.max
		q.n--
	}
	q.items[(q.head+q.n)%q.max] = e
	q.n++
}

func (q *resendQueue) get(seq uint64) *queued {
	if q.n == 0 {
		return nil
	}
	first := q.items[q.head].seq
	if seq < first || seq-first >= uint64(q.n) {
		return nil
	}
	return &q.items[(q.head+int(seq-first))%q.max]
}

// first returns the oldest queued sequence number, next when none is.
func (q *resendQueue) first(next uint64) uint64 {
	if q.n == 0 {
		return next
	}
	return q.items[q.head].seq
}

// trim drops the messages up to seq.
func (q *resendQueue) trim(seq uint64) {
	for q.n > 0 && q.items[q.head].seq <= seq {
		q.items[q.head] = queued{}
		q.head = (q.head + 1) % q.max
		q.n--
	}
}

// Len returns how many messages are queued.
func (q *resendQueue) Len() int { return q.n }
