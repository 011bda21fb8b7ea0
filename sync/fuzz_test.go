package sync

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/ctsyncd/ctsyncd/cache"
)

func FuzzDecodeHeader(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(appendHeader(nil, &header{Type: m.Type, Node: 1, Epoch: 2, Counter: 3}))
	}
	f.Add([]byte{magic0, magic1, Version})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err != nil {
			return
		}
		if got := appendHeader(nil, &h); !bytes.Equal(got, b[:HeaderLen]) {
			t.Fatalf("re-encoded header %x, decoded from %x", got, b[:HeaderLen])
		}
	})
}

// FuzzDecodeBody covers the body decoder of every message type: the first
// byte picks the type.
func FuzzDecodeBody(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(byte(m.Type), appendBody(nil, m))
	}
	f.Add(byte(MsgData), []byte{1, 0xff, 0xff, 0xff, 0x0f})
	f.Add(byte(MsgHello), []byte{0x91, 0xdb, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, typ byte, b []byte) {
		m, err := decodeBody(MsgType(typ), b)
		if err != nil || !known(m.Type) {
			// An unknown stream message keeps only its sequence number:
			// there is nothing to re-encode.
			return
		}
		again, err := decodeBody(m.Type, appendBody(nil, m))
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", m.Type, err)
		}
		if !sameMessage(m, again) {
			t.Fatalf("round trip of %s\n got %+v\nwant %+v", m.Type, again, m)
		}
	})
}

func FuzzDecodeChange(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 20 {
		ch := randChange(r)
		f.Add(appendChange(nil, &ch))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ch cache.Change
		n, err := decodeChange(b, &ch)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("used %d of %d bytes", n, len(b))
		}
		var again cache.Change
		if _, err := decodeChange(appendChange(nil, &ch), &again); err != nil || !sameChange(&ch, &again) {
			t.Fatalf("round trip: %v\n got %+v\nwant %+v", err, again, ch)
		}
	})
}

// fuzzNode returns an insecure node, not running, that accepted the epoch 1
// of node "x".
func fuzzNode(t testing.TB) *Node {
	net := NewMemNetwork(1)
	n, err := New(Options{NodeName: "fuzz"}, cache.NewInternal(nil), cache.NewExternal(), net.Endpoint("fuzz"))
	if err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.handle(Packet{From: "x", Data: datagram("x", 1, 1, &message{Type: MsgHello, Name: "x"})})
	c := n.challenges[[2]uint64{NodeID("x"), 1}]
	if c == nil {
		t.Fatal("no challenge sent")
	}
	n.handle(Packet{From: "x", Data: datagramTo("x", 1, 2, n.id, n.epoch, &message{Type: MsgResponse, Name: "x", Nonce: c.nonce[:], Seq: 1})})
	if n.peers[NodeID("x")] == nil {
		t.Fatal("epoch not accepted")
	}
	return n
}

// datagram encodes an insecure datagram from node name, addressed to
// every peer (or to the node "fuzz", epoch 0, when its type must name a
// receiver; such a datagram tests the drop of what is not for us).
func datagram(name string, epoch, counter uint64, m *message) []byte {
	if addressed(m.Type) {
		return datagramTo(name, epoch, counter, NodeID("fuzz"), 1, m)
	}
	return datagramTo(name, epoch, counter, 0, 0, m)
}

// datagramTo encodes an insecure datagram from node name to node to in its
// epoch toEpoch.
func datagramTo(name string, epoch, counter, to, toEpoch uint64, m *message) []byte {
	return seal(nil, header{Type: m.Type, Node: NodeID(name), Epoch: epoch, Counter: counter, To: to, ToEpoch: toEpoch}, appendBody(nil, m), nil)
}

// FuzzNodeHandle feeds datagrams to a node's receive path: whatever
// arrives, it must not panic.
func FuzzNodeHandle(f *testing.F) {
	for i, m := range sampleMessages() {
		f.Add(datagram("x", 1, uint64(10+i), m))
		f.Add(datagram("y", 7, uint64(10+i), m))
	}
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := fuzzNode(t)
		n.mu.Lock()
		defer n.mu.Unlock()
		n.handle(Packet{From: "x", Data: b})
		n.handle(Packet{From: "x", Data: readdress(b, n)})
		n.ackTick()
	})
}

// readdress returns b with its receiver set to n, when b is long enough to
// have a header: so that fuzzed addressed messages reach dispatch.
func readdress(b []byte, n *Node) []byte {
	if len(b) < HeaderLen {
		return b
	}
	c := append([]byte(nil), b...)
	binary.BigEndian.PutUint64(c[32:], n.id)
	binary.BigEndian.PutUint64(c[40:], n.epoch)
	return c
}
