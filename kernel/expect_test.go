package kernel

import (
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"

	"github.com/ctsyncd/ctsyncd/flow"
)

func expAddr(s string) [16]byte { return flow.AddrFrom(netip.MustParseAddr(s)) }

// testExpects are expectations with every attribute the codec carries:
// FTP (IPv4, no NAT), FTP through SNAT (NAT, expectfn), SIP RTP (class,
// UDP expected on a TCP master, flags), and IPv6 in a zone.
func testExpects() []flow.Expect {
	ones := expAddr("255.255.255.255")
	ones6 := expAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
	return []flow.Expect{
		{
			ExpectKey:   flow.ExpectKey{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Tuple: flow.Tuple{Src: expAddr("10.0.1.2"), Dst: expAddr("10.0.2.2"), DstPort: 40123}},
			Mask:        flow.Tuple{Src: ones, Dst: ones, DstPort: 0xffff},
			Master:      flow.Tuple{Src: expAddr("10.0.1.2"), Dst: expAddr("10.0.2.2"), SrcPort: 50000, DstPort: 21},
			MasterProto: flow.ProtoTCP, Timeout: 300, Helper: "ftp",
		},
		{
			ExpectKey:   flow.ExpectKey{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Tuple: flow.Tuple{Src: expAddr("10.0.1.2"), Dst: expAddr("10.0.2.2"), DstPort: 40124}},
			Mask:        flow.Tuple{Src: ones, Dst: ones, DstPort: 0xffff},
			Master:      flow.Tuple{Src: expAddr("10.0.1.2"), Dst: expAddr("10.0.2.2"), SrcPort: 50001, DstPort: 21},
			MasterProto: flow.ProtoTCP, Timeout: 299, Helper: "ftp", Fn: "nat-follow-master",
			HasNAT: true, NAT: flow.ExpectNAT{Dir: 1, Tuple: flow.Tuple{SrcPort: 40124}},
		},
		{
			ExpectKey:   flow.ExpectKey{Family: flow.FamilyIPv4, Proto: flow.ProtoUDP, Tuple: flow.Tuple{Src: expAddr("10.0.2.2"), Dst: expAddr("10.0.1.2"), DstPort: 20000}},
			Mask:        flow.Tuple{Src: ones, Dst: ones, DstPort: 0xffff},
			Master:      flow.Tuple{Src: expAddr("10.0.1.2"), Dst: expAddr("10.0.2.2"), SrcPort: 5060, DstPort: 5060},
			MasterProto: flow.ProtoTCP, Timeout: 180, Helper: "sip", Class: 1, Flags: flow.ExpectPermanent | flow.ExpectInactive,
		},
		{
			ExpectKey:   flow.ExpectKey{Family: flow.FamilyIPv6, Proto: flow.ProtoUDP, Zone: 7, Tuple: flow.Tuple{Src: expAddr("fd00:2::2"), Dst: expAddr("fd00:1::2"), DstPort: 33000}},
			Mask:        flow.Tuple{Dst: ones6, DstPort: 0xffff},
			Master:      flow.Tuple{Src: expAddr("fd00:1::2"), Dst: expAddr("fd00:2::2"), SrcPort: 33000, DstPort: 69},
			MasterProto: flow.ProtoUDP, Timeout: 5, Helper: "tftp",
		},
	}
}

// What appendExpect writes, decodeExpect reads back, but for what create
// does not carry: the helper name (sent only with a class; the kernel
// reports the master's) and the USERSPACE flag (the kernel clears it).
func TestExpectCodecRoundTrip(t *testing.T) {
	for i, want := range testExpects() {
		want.Flags |= flow.ExpectUserspace
		msg := appendExpect(nil, &want, want.Timeout, 1, netlink.Create)
		var got flow.Expect
		if !decodeExpect(netlink.Message{Data: msg[nlmsgHdrLen:]}, &got) {
			t.Fatalf("expectation %d: refused", i)
		}
		want.Flags &^= flow.ExpectUserspace
		if want.Class == 0 {
			want.Helper = ""
		}
		if got != want {
			t.Errorf("expectation %d:\n got %+v\nwant %+v", i, got, want)
		}
		if got.MasterKey() != (flow.Key{Orig: want.Master, Family: want.Family, Proto: want.MasterProto, Zone: want.Zone}) {
			t.Errorf("expectation %d: master key %+v", i, got.MasterKey())
		}
	}
}

func TestExpectKeyMsg(t *testing.T) {
	e := testExpects()[3]
	msg := appendExpectKeyMsg(nil, msgExpDelete, &e.ExpectKey, 1, 0)
	var got flow.Expect
	// A key message has no master: it does not decode as an expectation,
	// but its tuple and zone are there.
	if decodeExpect(netlink.Message{Data: msg[nlmsgHdrLen:]}, &got) {
		t.Fatal("a key message decoded as an expectation")
	}
	if got.Tuple != e.Tuple || got.Zone != e.Zone || got.Proto != e.Proto {
		t.Errorf("key: got %+v, want %+v", got.ExpectKey, e.ExpectKey)
	}
}

func TestExpectEventType(t *testing.T) {
	for _, c := range []struct {
		typ   uint16
		flags netlink.HeaderFlags
		want  EventType
		ok    bool
	}{
		{expType(msgExpNew), netlink.Create | netlink.Excl, EventNew, true},
		{expType(msgExpDelete), 0, EventDestroy, true},
		{ctType(msgCTNew), netlink.Create, 0, false},
	} {
		got, ok := expectEventType(netlink.Header{Type: netlink.HeaderType(c.typ), Flags: c.flags})
		if got != c.want || ok != c.ok {
			t.Errorf("type %#x: %v %v, want %v %v", c.typ, got, ok, c.want, c.ok)
		}
	}
}

func TestExpectString(t *testing.T) {
	e := testExpects()[1]
	s := e.String()
	for _, want := range []string{"299 proto=6 src=10.0.1.2 dst=10.0.2.2 sport=0 dport=40124", "master-src=10.0.1.2", "helper=ftp", "fn=nat-follow-master", "nat-dir=1"} {
		if !contains(s, want) {
			t.Errorf("%q lacks %q", s, want)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func FuzzDecodeExpect(f *testing.F) {
	for _, e := range testExpects() {
		f.Add(appendExpect(nil, &e, e.Timeout, 1, 0)[nlmsgHdrLen:])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var e flow.Expect
		if !decodeExpect(netlink.Message{Data: data}, &e) {
			return
		}
		if e.Family != flow.FamilyIPv4 && e.Family != flow.FamilyIPv6 {
			t.Fatalf("family %d", e.Family)
		}
		// What decodes encodes and decodes to the same.
		msg := appendExpect(nil, &e, e.Timeout, 1, 0)
		var again flow.Expect
		if !decodeExpect(netlink.Message{Data: msg[nlmsgHdrLen:]}, &again) {
			t.Fatalf("re-encoded %+v does not decode", e)
		}
	})
}

func BenchmarkDecodeExpect(b *testing.B) {
	e := testExpects()[1]
	msg := appendExpect(nil, &e, e.Timeout, 1, 0)
	m := netlink.Message{Data: msg[nlmsgHdrLen:]}
	b.ReportAllocs()
	var got flow.Expect
	for b.Loop() {
		decodeExpect(m, &got)
	}
}
