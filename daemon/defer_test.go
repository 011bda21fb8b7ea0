package daemon

import (
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

type fakeQueue struct {
	mu       sync.Mutex
	accepted []uint32
	ch       chan uint32
}

func (q *fakeQueue) Accept(id uint32) error {
	q.mu.Lock()
	q.accepted = append(q.accepted, id)
	q.mu.Unlock()
	if q.ch != nil {
		q.ch <- id
	}
	return nil
}

func (q *fakeQueue) ids() []uint32 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]uint32(nil), q.accepted...)
}

// fakeSender answers SendNow as told: up peers, and whether (and how) the
// acknowledgement comes.
type fakeSender struct {
	up    int
	ack   bool // call done(true) at once
	sent  []cache.Change
	dones []func(bool)
}

func (s *fakeSender) SendNow(chs []cache.Change, done func(bool)) int {
	if s.up == 0 {
		return 0
	}
	s.sent = append(s.sent, chs...)
	if s.ack {
		done(true)
	} else {
		s.dones = append(s.dones, done)
	}
	return s.up
}

func newTestDeferrer(q verdicter, s nowSender, timeout time.Duration, max int64) *deferrer {
	return &deferrer{q: q, node: s, timeout: timeout, max: max, log: slog.New(slog.DiscardHandler),
		match: func(f *flow.Flow) bool { return f.Proto == flow.ProtoTCP }}
}

func pkt(id uint32, f flow.Flow) *kernel.QueuePacket {
	return &kernel.QueuePacket{ID: id, HasFlow: true, Flow: f}
}

func TestDeferAckedReleases(t *testing.T) {
	q := &fakeQueue{}
	s := &fakeSender{up: 1, ack: true}
	df := newTestDeferrer(q, s, time.Hour, 10)
	f := testTCP(1, flow.TCPSynSent)
	df.packet(pkt(7, f))
	if ids := q.ids(); len(ids) != 1 || ids[0] != 7 {
		t.Fatalf("accepted %v", ids)
	}
	if len(s.sent) != 1 || s.sent[0].Flow.Key != f.Key {
		t.Fatalf("sent %v", s.sent)
	}
	st := df.stats()
	if st.Deferred != 1 || st.Acked != 1 || st.TimedOut != 0 || st.Pending != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDeferTimesOut(t *testing.T) {
	q := &fakeQueue{ch: make(chan uint32, 1)}
	s := &fakeSender{up: 1}
	df := newTestDeferrer(q, s, time.Millisecond, 10)
	df.packet(pkt(8, testTCP(1, flow.TCPSynSent)))
	select {
	case id := <-q.ch:
		if id != 8 {
			t.Fatalf("accepted %d", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("never released")
	}
	s.dones[0](true) // the late acknowledgement changes nothing
	st := df.stats()
	if st.Deferred != 1 || st.TimedOut != 1 || st.Acked != 0 || len(q.ids()) != 1 {
		t.Fatalf("stats %+v, accepted %v", st, q.ids())
	}
}

func TestDeferPeerLost(t *testing.T) {
	q := &fakeQueue{}
	s := &fakeSender{up: 2}
	df := newTestDeferrer(q, s, time.Hour, 10)
	df.packet(pkt(9, testTCP(1, flow.TCPSynSent)))
	s.dones[0](false)
	if st := df.stats(); st.PeerLost != 1 || len(q.ids()) != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDeferPassesAtOnce(t *testing.T) {
	q := &fakeQueue{}
	df := newTestDeferrer(q, &fakeSender{up: 0}, time.Hour, 1)
	df.packet(pkt(1, testTCP(1, flow.TCPSynSent))) // no peer up
	udp := testTCP(2, 0)
	udp.Proto = flow.ProtoUDP
	df.packet(pkt(2, udp))                // filtered
	df.packet(&kernel.QueuePacket{ID: 3}) // no flow
	held := newTestDeferrer(q, &fakeSender{up: 1}, time.Hour, 1)
	held.packet(pkt(4, testTCP(4, flow.TCPSynSent))) // held
	held.packet(pkt(5, testTCP(5, flow.TCPSynSent))) // beyond max_pending
	if ids := q.ids(); len(ids) != 4 || ids[3] != 5 {
		t.Fatalf("accepted %v, want 1 2 3 5", ids)
	}
	if st := df.stats(); st.NoPeer != 1 || st.Passed != 2 || st.Deferred != 0 {
		t.Fatalf("stats %+v", st)
	}
	if st := held.stats(); st.Deferred != 1 || st.Overflow != 1 || st.Pending != 1 {
		t.Fatalf("held stats %+v", st)
	}
}
