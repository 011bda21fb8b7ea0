package sync

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

func expTestAddr(s string) [16]byte { return flow.AddrFrom(netip.MustParseAddr(s)) }

func testExpectChanges() []cache.ExpectChange {
	ftp := flow.Expect{
		ExpectKey:   flow.ExpectKey{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Tuple: flow.Tuple{Src: expTestAddr("10.0.1.2"), Dst: expTestAddr("10.0.2.2"), DstPort: 40000}},
		Mask:        flow.Tuple{Src: expTestAddr("255.255.255.255"), Dst: expTestAddr("255.255.255.255"), DstPort: 0xffff},
		Master:      flow.Tuple{Src: expTestAddr("10.0.1.2"), Dst: expTestAddr("10.0.2.2"), SrcPort: 50000, DstPort: 21},
		MasterProto: flow.ProtoTCP, Timeout: 300, Helper: "ftp", Fn: "nat-follow-master",
		HasNAT: true, NAT: flow.ExpectNAT{Dir: 1, Tuple: flow.Tuple{SrcPort: 40000}},
	}
	sip := flow.Expect{
		ExpectKey:   flow.ExpectKey{Family: flow.FamilyIPv6, Proto: flow.ProtoUDP, Zone: 3, Tuple: flow.Tuple{Src: expTestAddr("fd00:2::2"), Dst: expTestAddr("fd00:1::2"), DstPort: 20000}},
		Master:      flow.Tuple{Src: expTestAddr("fd00:1::2"), Dst: expTestAddr("fd00:2::2"), SrcPort: 5060, DstPort: 5060},
		MasterProto: flow.ProtoUDP, Timeout: 180, Helper: "sip", Class: 2, Flags: flow.ExpectPermanent,
	}
	return []cache.ExpectChange{{Expect: ftp}, {Expect: sip}, {Expect: flow.Expect{ExpectKey: ftp.ExpectKey}, Deleted: true}}
}

func TestExpectBodyRoundTrip(t *testing.T) {
	m := &message{Type: MsgExpect, Seq: 77, Expects: testExpectChanges()}
	b := appendBody(nil, m)
	got, err := decodeBody(MsgExpect, b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != 77 || !reflect.DeepEqual(got.Expects, m.Expects) {
		t.Errorf("got %+v\nwant %+v", got, m)
	}
	// Cut anywhere, it is refused, never a panic.
	for i := range len(b) {
		if _, err := decodeBody(MsgExpect, b[:i]); err == nil {
			t.Errorf("a body cut to %d of %d bytes decoded", i, len(b))
		}
	}
}

// A stream message of a type from EXPECT on that this version does not
// know is taken for its sequence number and ignored.
func TestUnknownStreamType(t *testing.T) {
	h := header{Type: 200, Node: 1, Epoch: 2, Counter: 3}
	if _, err := parseHeader(appendHeader(nil, &h)); err != nil {
		t.Fatalf("type 200 refused: %v", err)
	}
	m, err := decodeBody(200, []byte{5, 0xde, 0xad})
	if err != nil || m.Seq != 5 {
		t.Fatalf("unknown stream body: %+v %v", m, err)
	}
	if _, err := decodeBody(200, nil); err == nil {
		t.Error("an unknown stream message without a sequence number decoded")
	}
	if firstStreamExt != MsgExpect || msgTypeEnd <= firstStreamExt {
		t.Errorf("the stream extension rule must start at EXPECT")
	}
	// The flag: allowed on unknown types and on EXPECT, refused on the old
	// types, whose bodies do not begin with a sequence number.
	for _, c := range []struct {
		typ MsgType
		ok  bool
	}{{200, true}, {MsgExpect, true}, {MsgData, false}, {MsgAck, false}, {MsgBulkBegin, false}} {
		h := header{Type: c.typ, Flags: flagStreamExt, Node: 1, Epoch: 2, Counter: 3}
		if c.typ == MsgAck {
			h.To, h.ToEpoch = 4, 5
		}
		if _, err := parseHeader(appendHeader(nil, &h)); (err == nil) != c.ok {
			t.Errorf("%s with flagStreamExt: err %v, want accepted %v", c.typ, err, c.ok)
		}
	}
	if h := (header{Type: 1, Flags: 0x04, Node: 1, Epoch: 2, Counter: 3}); true {
		if _, err := parseHeader(appendHeader(nil, &h)); err == nil {
			t.Error("a reserved flag bit accepted")
		}
	}
}

// End to end over the in-memory network: expectations replicate with their
// changes and removals, a bulk carries them, and a helper the receiver does
// not accept is refused there.
func TestNodeReplicatesExpectations(t *testing.T) {
	net := NewMemNetwork(1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mk := func(name string, accept func(string) bool) (*Node, *cache.InternalExpect, *cache.External) {
		in, ext, ie := cache.NewInternal(nil), cache.NewExternal(), cache.NewInternalExpect()
		n, err := New(Options{NodeName: name, AckInterval: 5 * time.Millisecond, HeartbeatInterval: 20 * time.Millisecond}, in, ext, net.Endpoint(name))
		if err != nil {
			t.Fatal(err)
		}
		n.SetExpectations(ie, nil, accept)
		go n.Run(ctx)
		return n, ie, ext
	}
	nA, ieA, _ := mk("a", nil)
	_, _, extB := mk("b", func(h string) bool { return h != "sip" })

	chs := testExpectChanges()
	ftp, sip := chs[0].Expect, chs[1].Expect
	ieA.Upsert(&ftp)
	ieA.Upsert(&sip)
	waitFor(t, "ftp expectation on b", func() bool { return extB.ExpectLen() == 1 })
	snap := extB.ExpectSnapshot()
	if snap[0].Origin != "a" || snap[0].Expect.Helper != "ftp" || snap[0].Expect.Master != ftp.Master || !snap[0].Expect.HasNAT {
		t.Errorf("b holds %+v", snap[0])
	}
	ieA.Delete(ftp.ExpectKey)
	waitFor(t, "the removal on b", func() bool { return extB.ExpectLen() == 0 })

	// A bulk carries the expectations a holds.
	ieA.Upsert(&ftp)
	waitFor(t, "ftp expectation on b again", func() bool { return extB.ExpectLen() == 1 })
	extB.FlushExpects("")
	nA.Bulk()
	waitFor(t, "the bulk's expectation on b", func() bool { return extB.ExpectLen() == 1 })
}

func FuzzDecodeExpectBody(f *testing.F) {
	f.Add(appendBody(nil, &message{Type: MsgExpect, Seq: 1, Expects: testExpectChanges()}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeBody(MsgExpect, b)
		if err != nil {
			return
		}
		// What decodes encodes back to the same bytes.
		if again := appendBody(nil, m); string(again) != string(b) {
			m2, err := decodeBody(MsgExpect, again)
			if err != nil || !reflect.DeepEqual(m2.Expects, m.Expects) {
				t.Fatalf("re-encoding differs: %v", err)
			}
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
