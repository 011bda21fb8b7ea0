package sync

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ctsyncd/ctsyncd/cache"
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

// addressedType reports whether messages of type t go to one peer.
func addressedType(t MsgType) bool {
	switch t {
	case MsgAck, MsgNack, MsgChallenge, MsgResponse, MsgResyncRequest:
		return true
	}
	return false
}

// TestCrossReceiverReplay: in a three-node cluster, what a sends to b alone
// (RESYNC_REQUEST, NACK, ACK) is captured and replayed to c from a spoofed
// source. c must act on none of it: no bulk, no resends (to the spoofed
// source or anywhere), no change of its view of a's progress.
func TestCrossReceiverReplay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
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
		repliedToAttacker := 0
		net.SetFilter(func(from, to string, p []byte) bool {
			h, err := parseHeader(p)
			if from == "c" {
				sent[to]++
				if to == "attacker" && err == nil && addressedType(h.Type) {
					repliedToAttacker++
				}
			}
			return err != nil || to != "c" || h.Type != MsgAck
		})
		net.Endpoint("attacker")

		lock := func(f func()) { c.n.mu.Lock(); defer c.n.mu.Unlock(); f() }
		// What a sent before it stopped is handled first: every goroutine
		// of the bubble is idle after it.
		synctest.Wait()
		// a is stopped: a resync request c takes as a's from now on is the
		// replay (b's genuine requests may still start bulks on c, so bulks
		// are not counted).
		var requests uint64
		var acked uint64
		var ackKnown bool
		lock(func() {
			pa := c.n.peers[NodeID("a")]
			requests = pa.stats.ResyncRequestsIn
			acked, ackKnown = pa.acked, pa.ackKnown
		})

		injectAndWait(t, net, "attacker", c, "a", got[MsgResyncRequest])
		injectAndWait(t, net, "attacker", c, "a", got[MsgNack])
		injectAndWait(t, net, "attacker", c, "a", got[MsgAck])
		lock(func() {
			pa := c.n.peers[NodeID("a")]
			if pa.stats.ResyncRequestsIn != requests {
				t.Errorf("a's RESYNC_REQUEST to b, replayed to c, was taken by c (%d → %d requests from a)", requests, pa.stats.ResyncRequestsIn)
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
		if repliedToAttacker != 0 {
			t.Errorf("c sent %d ACK/NACK/CHALLENGE/RESPONSE/RESYNC_REQUEST datagrams to the spoofed source", repliedToAttacker)
		}
		if n := sent["attacker"]; n > sent["b"] {
			t.Errorf("c sent %d datagrams to the spoofed source, %d to b", n, sent["b"])
		}
	})
}

// captureOne starts capturing the first datagram of type typ from → to on
// net; the returned function waits for it.
func captureOne(t *testing.T, net *MemNetwork, from, to string, typ MsgType) func() []byte {
	ch := make(chan []byte, 1)
	net.SetFilter(func(f, tt string, p []byte) bool {
		if f == from && tt == to {
			if h, err := parseHeader(p); err == nil && h.Type == typ {
				select {
				case ch <- append([]byte(nil), p...):
				default:
				}
			}
		}
		return true
	})
	return func() []byte {
		t.Helper()
		select {
		case b := <-ch:
			net.SetFilter(nil)
			return b
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s from %s to %s", typ, from, to)
			return nil
		}
	}
}

// flood injects b into to's endpoint from src every millisecond until the
// test ends.
func flood(t *testing.T, net *MemNetwork, src, to string, b []byte) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				net.Inject(src, to, b)
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

// TestChallengeStarvation: a heartbeat of a's previous epoch, replayed at
// 1 kHz from a spoofed source to a restarted b, must not keep b from
// accepting a's current epoch.
func TestChallengeStarvation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := NewMemNetwork(32)
		wait := captureOne(t, net, "a", "b", MsgHeartbeat)
		a := start(t, net, testOptions("a", &testKey), nil)
		b := start(t, net, testOptions("b", &testKey), nil)
		upsertFlows(a.in, 50)
		old := wait()
		established(t, a, b)
		a.stop()
		b.stop()
		b2 := start(t, net, testOptions("b", &testKey), nil)
		// No time passes on b2 while the replays run: they always win the race
		// with a's real datagrams (the worst case of a fast flood).
		thaw := freeze(b2.n)
		flood(t, net, "attacker", "b", old)
		eventually(t, 5*time.Second, "b to handle the replays", func() bool { return handled(b2, "attacker") > 10 })
		a2 := start(t, net, testOptions("a", &testKey), a.in)
		eventually(t, 5*time.Second, "b to accept a's new epoch", func() bool { return b2.n.Stats()["a"].Epoch == a2.n.Epoch() })
		thaw()
		converged(t, a2, b2, 10*time.Second)
		if got := b2.n.Stats()["a"]; got.Epoch != a2.n.Epoch() {
			t.Fatalf("b accepted epoch %x, want %x", got.Epoch, a2.n.Epoch())
		}
	})
}

// freeze stops n's clock at its current reading (rate limits earn
// nothing) and returns a function that restarts it.
func freeze(n *Node) func() {
	n.mu.Lock()
	defer n.mu.Unlock()
	at := n.now()
	n.now = func() time.Time { return at }
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.now = time.Now
	}
}

// TestResponseRateLimit: a CHALLENGE replayed 1000 times to a (from a
// spoofed source) is answered at most handshakeBurst times while no time
// passes.
func TestResponseRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := NewMemNetwork(33)
		// a never gets b's RESPONSEs, so it never accepts b's epoch and has no
		// replay window for it.
		chals := make(chan []byte, 1)
		net.SetFilter(func(from, to string, p []byte) bool {
			h, err := parseHeader(p)
			if err != nil || from != "b" || to != "a" {
				return true
			}
			if h.Type == MsgChallenge {
				select {
				case chals <- append([]byte(nil), p...):
				default:
				}
			}
			return h.Type != MsgResponse
		})
		a := start(t, net, testOptions("a", &testKey), nil)
		b := start(t, net, testOptions("b", &testKey), nil)
		chal := <-chals
		b.stop()
		net.Endpoint("attacker") // the spoofed source exists: replies to it are delivered (and counted)
		var responses int
		net.SetFilter(func(from, to string, p []byte) bool {
			if h, err := parseHeader(p); err == nil && from == "a" && h.Type == MsgResponse {
				responses++
			}
			return true
		})
		defer freeze(a.n)()
		before := handled(a, "attacker")
		for range 1000 {
			net.Inject("attacker", "a", chal)
		}
		eventually(t, 10*time.Second, "1000 replays handled", func() bool { return handled(a, "attacker") >= before+1000 })
		net.SetFilter(nil)
		if responses > handshakeBurst {
			t.Fatalf("a answered a replayed CHALLENGE %d times, want at most %d", responses, handshakeBurst)
		}
		t.Logf("1000 replays, %d RESPONSEs", responses)
	})
}

// heapInUse returns the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestMemoryBoundOutOfOrder: a peer sends 24 MB of the largest messages a
// node accepts, all ahead of a gap it never fills. The messages held must
// stay within the per-peer bound (16 MiB by default), whatever the count.
func TestMemoryBoundOutOfOrder(t *testing.T) {
	n := fuzzNode(t)
	n.mu.Lock()
	defer n.mu.Unlock()
	// As many removals as fit in the default MTU's datagram (and 4x that:
	// a peer may send up to the largest datagram accepted).
	perMsg := (4*1400 - 64) / minChangeLen
	chs := make([]cache.Change, perMsg)
	for i := range chs {
		chs[i] = cache.Change{Flow: tcpFlow(i), Deleted: true}
	}
	d := datagram("x", 1, 3, &message{Type: MsgData, Seq: 2, Changes: chs})
	t.Logf("%d changes per message, %d bytes", perMsg, len(d))
	before := heapInUse()
	sent := 0
	for i := 0; sent < 24<<20; i++ {
		d := datagram("x", 1, uint64(3+i), &message{Type: MsgData, Seq: uint64(2 + i), Changes: chs})
		n.handle(Packet{From: "x", Data: d})
		sent += len(d)
	}
	after := heapInUse()
	grew := int64(after) - int64(before)
	t.Logf("sent %d MB out of order; heap grew by %.1f MB; %+v", sent>>20, float64(grew)/(1<<20), n.peers[NodeID("x")].stats.Drops)
	if grew > 32<<20 {
		t.Fatalf("heap grew by %d MB holding one peer's out-of-order messages, want at most 32", grew>>20)
	}
	runtime.KeepAlive(n)
}

// TestSkipBounded: an unknown trailing msgpack element that claims a
// megabyte in an 8-byte body is refused without allocating it.
func TestSkipBounded(t *testing.T) {
	body := []byte{0x92, 0x05, 0xdb, 0x00, 0x10, 0x00, 0x00, 'x'} // [5, str32 of 1 MiB]
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	for range 10 {
		if _, err := decodeBody(MsgAck, body); err == nil {
			t.Fatal("a truncated element was accepted")
		}
	}
	runtime.ReadMemStats(&ms1)
	if per := (ms1.TotalAlloc - ms0.TotalAlloc) / 10; per > 64<<10 {
		t.Fatalf("decoding an 8-byte body allocated %d KB", per>>10)
	}
}

// TestSkipValue: skipValue skips exactly one element of every kind msgpack
// encodes, so unknown trailing fields of a later version still decode.
func TestSkipValue(t *testing.T) {
	vals := []any{nil, true, 1, -1, 200, -200, 70000, -70000, int64(1 << 40), int64(-(1 << 40)), 1.5, float32(2.5),
		"", "short", string(make([]byte, 300)), string(make([]byte, 70000)), []byte{1, 2}, make([]byte, 300),
		[]any{1, "x", []any{2}}, make([]int, 20), make([]int, 70000), map[string]any{"a": 1, "b": []any{1}},
		time.Unix(1, 2)}
	for _, v := range vals {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, 0x01) // something after it
		r := bytes.NewReader(b)
		if err := skipValue(r, 0); err != nil || r.Len() != 1 {
			t.Errorf("%T: skip = %v, %d bytes left, want 1", v, err, r.Len())
		}
	}
}

// sealedFrom encodes a datagram of node name in epoch, sealed under the
// test key, addressed to n (for the types that name a receiver).
func sealedFrom(n *Node, name string, epoch, counter uint64, m *message) []byte {
	aead, err := epochAEAD(&testKey, NodeID(name), epoch)
	if err != nil {
		panic(err)
	}
	h := header{Type: m.Type, Node: NodeID(name), Epoch: epoch, Counter: counter}
	if addressed(m.Type) {
		h.To, h.ToEpoch = n.id, n.epoch
	}
	return seal(nil, h, appendBody(nil, m), aead)
}

// TestStrangersRateLimited: forged datagrams with random node ids and
// epochs cost at most deriveBurst key derivations while no time passes, and
// an accepted peer's datagrams still authenticate after them (its key is
// never evicted by strangers).
func TestStrangersRateLimited(t *testing.T) {
	net := NewMemNetwork(34)
	n, err := New(Options{NodeName: "b", Key: &testKey}, cache.NewInternal(nil), cache.NewExternal(), net.Endpoint("b"))
	if err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.handle(Packet{From: "x", Data: sealedFrom(n, "x", 1, 1, &message{Type: MsgHello, Name: "x"})})
	c := n.challenges[[2]uint64{NodeID("x"), 1}]
	if c == nil {
		t.Fatal("no challenge")
	}
	n.handle(Packet{From: "x", Data: sealedFrom(n, "x", 1, 2, &message{Type: MsgResponse, Name: "x", Nonce: c.nonce[:], Seq: 1})})
	if n.peers[NodeID("x")] == nil {
		t.Fatal("x not accepted")
	}
	at := n.now()
	n.now = func() time.Time { return at }
	var other [KeyLen]byte
	other[0] = 1
	for i := range 1000 {
		aead, _ := epochAEAD(&other, uint64(i+100), uint64(i+7))
		h := header{Type: MsgHeartbeat, Node: uint64(i + 100), Epoch: uint64(i + 7), Counter: 1}
		n.handle(Packet{From: "y", Data: seal(nil, h, appendBody(nil, &message{Type: MsgHeartbeat}), aead)})
	}
	d := n.statsFor(0, "y").Drops
	t.Logf("1000 forgeries: %+v", d)
	if d.RateLimited < 1000-deriveBurst {
		t.Errorf("%d of 1000 forgeries rate limited, want at least %d", d.RateLimited, 1000-deriveBurst)
	}
	if d.Auth+d.RateLimited != 1000 {
		t.Errorf("auth %d + rate limited %d, want 1000", d.Auth, d.RateLimited)
	}
	f := tcpFlow(1)
	n.handle(Packet{From: "x", Data: sealedFrom(n, "x", 1, 3, &message{Type: MsgData, Seq: 1, Changes: []cache.Change{{Flow: f}}})})
	if got := n.peers[NodeID("x")].stats.FlowsIn; got != 1 {
		t.Fatalf("x's flow after the forgeries: %d applied, want 1 (drops %+v)", got, n.peers[NodeID("x")].stats.Drops)
	}
}

// TestPeerNameValidated: a peer whose name carries a newline and a
// terminal escape is not accepted; names print escaped.
func TestPeerNameValidated(t *testing.T) {
	net := NewMemNetwork(35)
	n, err := New(Options{NodeName: "b", Key: &testKey}, cache.NewInternal(nil), cache.NewExternal(), net.Endpoint("b"))
	if err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, name := range []string{"evil\n\x1b[2Jfw-a", "a b", "", string(make([]byte, 65))} {
		if ValidateName(name) == nil {
			t.Errorf("%q accepted", name)
		}
	}
	bad := "evil\n\x1b[2Jfw-a"
	n.handle(Packet{From: "x", Data: sealedFrom(n, bad, 1, 1, &message{Type: MsgHello, Name: bad})})
	c := n.challenges[[2]uint64{NodeID(bad), 1}]
	if c == nil {
		t.Fatal("no challenge")
	}
	n.handle(Packet{From: "x", Data: sealedFrom(n, bad, 1, 2, &message{Type: MsgResponse, Name: bad, Nonce: c.nonce[:], Seq: 1})})
	if n.peers[NodeID(bad)] != nil {
		t.Fatal("a peer named with control characters was accepted")
	}
	if got := Escape(bad); strings.ContainsAny(got, "\n\x1b") {
		t.Errorf("Escape(%q) = %q", bad, got)
	}
	if got := Escape("fw-a"); got != "fw-a" {
		t.Errorf("Escape(fw-a) = %q", got)
	}
}
