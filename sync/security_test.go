package sync

import (
	"testing"
	"time"
)

// handled counts the datagrams of origin that to processed: applied or
// dropped for any reason.
func handled(to *tnode, origin string) uint64 {
	s := to.n.Stats()[origin]
	d := s.Drops
	return s.MsgsIn + d.Auth + d.Malformed + d.Replay + d.OldEpoch + d.Unverified + d.Duplicate + d.Window +
		d.NotForUs + d.RateLimited + d.Overflow + d.TooLarge
}

// injectAndWait injects b into to's endpoint as if from src and waits until
// to processed one more datagram of origin.
func injectAndWait(t *testing.T, net *MemNetwork, src string, to *tnode, origin string, b []byte) {
	t.Helper()
	before := handled(to, origin)
	if err := net.Inject(src, to.name, b); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the injected datagram to be handled", func() bool { return handled(to, origin) > before })
}

// TestCrossReceiverReplay: in a three-node cluster, what a sends to b alone
// (RESYNC_REQUEST, NACK, ACK) is captured and replayed to c from a spoofed
// source. c must act on none of it: no bulk, no resends (to the spoofed
// source or anywhere), no change of its view of a's progress.
func TestCrossReceiverReplay(t *testing.T) {
	net := NewMemNetwork(31)
	type capt struct {
		typ MsgType
		b   []byte
	}
	capture := make(chan capt, 4096)
	dropOnce := true
	net.SetFilter(func(from, to string, p []byte) bool {
		h, err := parseHeader(p)
		if err != nil {
			return true
		}
		if to == "c" && h.Type == MsgAck {
			return false // c's resend queue is never trimmed: a replayed NACK finds what it asks for
		}
		if from == "b" && to == "a" && h.Type == MsgData && dropOnce {
			dropOnce = false // a gap in b's stream at a: a NACKs it to b
			return false
		}
		if from == "a" && to == "b" {
			switch h.Type {
			case MsgResyncRequest, MsgNack, MsgAck:
				select {
				case capture <- capt{h.Type, append([]byte(nil), p...)}:
				default:
				}
			}
		}
		return true
	})
	a := start(t, net, testOptions("a", &testKey), nil)
	b := start(t, net, testOptions("b", &testKey), nil)
	c := start(t, net, testOptions("c", &testKey), nil)
	established(t, a, b)
	established(t, a, c)
	established(t, b, c)
	for i := range 100 {
		f := tcpFlow(i)
		b.in.Upsert(&f)
		f = tcpFlow(1000 + i)
		c.in.Upsert(&f)
	}
	converged(t, b, a, 10*time.Second)
	converged(t, c, a, 10*time.Second)
	a.n.RequestResync()
	got := map[MsgType][]byte{}
	eventually(t, 10*time.Second, "a's RESYNC_REQUEST, NACK and ACK to b", func() bool {
		for {
			select {
			case x := <-capture:
				got[x.typ] = x.b // the last: after c's acceptance of a, with the most progress
				continue
			default:
			}
			return len(got) == 3
		}
	})
	converged(t, b, a, 10*time.Second)
	converged(t, c, a, 10*time.Second)
	a.stop()
	for len(capture) > 0 {
		x := <-capture
		got[x.typ] = x.b
	}
	net.SetFilter(func(from, to string, p []byte) bool {
		h, err := parseHeader(p)
		return err != nil || to != "c" || h.Type != MsgAck
	})

	// c's queue must hold what the captured NACK asks for, or c would
	// have nothing to resend whatever the fix.
	decode := func(b []byte) *message {
		h, _ := parseHeader(b)
		aead, err := epochAEAD(&testKey, h.Node, h.Epoch)
		if err != nil {
			t.Fatal(err)
		}
		body, err := open(b, &h, aead)
		if err != nil {
			t.Fatal(err)
		}
		m, err := decodeBody(h.Type, body)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	nack := decode(got[MsgNack])
	last := max(nack.Ranges[len(nack.Ranges)-1].Last, decode(got[MsgAck]).Seq)
	for i := 0; ; i++ {
		c.n.mu.Lock()
		enough := c.n.nextSeq > last
		c.n.mu.Unlock()
		if enough {
			break
		}
		f := tcpFlow(5000 + i)
		c.in.Upsert(&f)
		time.Sleep(time.Millisecond)
	}
	eventually(t, 10*time.Second, "c's bulks to end", func() bool {
		c.n.mu.Lock()
		defer c.n.mu.Unlock()
		return c.n.bulk == nil && !c.n.bulkPending
	})
	// Count what c sends to b and to the attacker's endpoint: both get what
	// c sends to every peer; only a reply to the spoofed source makes the
	// attacker get more than b.
	sent := map[string]int{}
	net.SetFilter(func(from, to string, p []byte) bool {
		h, err := parseHeader(p)
		if from == "c" {
			sent[to]++
		}
		return err != nil || to != "c" || h.Type != MsgAck
	})
	atk := net.Endpoint("attacker")

	lock := func(f func()) { c.n.mu.Lock(); defer c.n.mu.Unlock(); f() }
	var bulks uint64
	var acked uint64
	var ackKnown bool
	lock(func() {
		pa := c.n.peers[NodeID("a")]
		bulks = pa.stats.BulksSent
		acked, ackKnown = pa.acked, pa.ackKnown
	})

	injectAndWait(t, net, "attacker", c, "a", got[MsgResyncRequest])
	injectAndWait(t, net, "attacker", c, "a", got[MsgNack])
	injectAndWait(t, net, "attacker", c, "a", got[MsgAck])
	lock(func() {
		pa := c.n.peers[NodeID("a")]
		if pa.stats.BulksSent != bulks {
			t.Errorf("a's RESYNC_REQUEST to b, replayed to c, made c start a bulk (%d → %d)", bulks, pa.stats.BulksSent)
		}
		if pa.stats.Resends != 0 {
			t.Errorf("a's NACK to b, replayed to c, made c resend %d messages", pa.stats.Resends)
		}
		if pa.acked != acked || pa.ackKnown != ackKnown {
			t.Errorf("a's ACK to b, replayed to c, moved c's view of a's progress: %d,%v → %d,%v", acked, ackKnown, pa.acked, pa.ackKnown)
		}
		if pa.stats.Drops.NotForUs != 3 {
			t.Errorf("c counted %d datagrams not for it, want 3", pa.stats.Drops.NotForUs)
		}
	})
	net.SetFilter(nil)
	if n := len(atk.Packets()); n > sent["b"] {
		t.Errorf("c sent %d datagrams to the spoofed source, %d to b", n, sent["b"])
	}
}
