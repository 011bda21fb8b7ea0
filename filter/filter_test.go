package filter

import (
	"net/netip"
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

func mk(proto uint8, state uint8, src, dst, replySrc string) *flow.Flow {
	f := &flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: proto}}
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	if s.Is6() {
		f.Family = flow.FamilyIPv6
	}
	f.Orig.Src, f.Orig.Dst = flow.AddrFrom(s), flow.AddrFrom(d)
	f.Orig.SrcPort, f.Orig.DstPort = 40000, 80
	f.Reply = f.Orig.Invert(proto)
	if replySrc != "" {
		f.Reply.Src = flow.AddrFrom(netip.MustParseAddr(replySrc))
	}
	f.TCP.State = state
	return f
}

func TestMatch(t *testing.T) {
	f := New([]uint8{flow.ProtoTCP, flow.ProtoUDP}, []uint8{flow.TCPEstablished},
		[]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, Exclude{})
	f.SetOwn([]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")})
	est := flow.TCPEstablished
	tests := []struct {
		name string
		fl   *flow.Flow
		want bool
	}{
		{"forwarded tcp", mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), true},
		{"forwarded udp", mk(flow.ProtoUDP, 0, "10.0.0.1", "10.0.1.1", ""), true},
		{"icmp not listed", mk(flow.ProtoICMP, 0, "10.0.0.1", "10.0.1.1", ""), false},
		{"tcp state not listed", mk(flow.ProtoTCP, flow.TCPSynSent, "10.0.0.1", "10.0.1.1", ""), false},
		{"loopback source", mk(flow.ProtoTCP, est, "127.0.0.1", "127.0.0.1", ""), false},
		{"v6 loopback", mk(flow.ProtoTCP, est, "::1", "::1", ""), false},
		{"from own address", mk(flow.ProtoTCP, est, "192.0.2.1", "10.0.1.1", ""), false},
		{"to own address (reply source)", mk(flow.ProtoTCP, est, "10.0.0.1", "192.0.2.1", ""), false},
		{"to own v6 address", mk(flow.ProtoTCP, est, "2001:db8::5", "2001:db8::1", ""), false},
		{"DNAT from a VIP to a server still replicates", mk(flow.ProtoTCP, est, "10.0.0.1", "198.51.100.1", "10.0.1.1"), true},
	}
	for _, tt := range tests {
		if got := f.Match(tt.fl); got != tt.want {
			t.Errorf("%s: Match = %v, want %v", tt.name, got, tt.want)
		}
	}
	// Once the own address is gone, its flows are no longer ignored.
	f.SetOwn(nil)
	if !f.Match(mk(flow.ProtoTCP, est, "192.0.2.1", "10.0.1.1", "")) {
		t.Error("flow from a removed own address still ignored")
	}
}

func TestEmptyListsAllowAll(t *testing.T) {
	f := New(nil, nil, nil, Exclude{})
	if !f.Match(mk(flow.ProtoSCTP, 0, "10.0.0.1", "10.0.1.1", "")) || !f.Match(mk(flow.ProtoTCP, flow.TCPTimeWait, "10.0.0.1", "10.0.1.1", "")) {
		t.Error("empty filter rejected a flow")
	}
}

func TestExclude(t *testing.T) {
	f := New(nil, nil, nil, Exclude{
		Ports:   []PortRange{{53, 53}, {8000, 8100}},
		Marks:   []MarkMask{{Value: 0x10, Mask: 0xf0}},
		Zones:   []uint16{7},
		Helpers: []string{"tftp"},
	})
	est := flow.TCPEstablished
	with := func(fl *flow.Flow, set func(*flow.Flow)) *flow.Flow { set(fl); return fl }
	tests := []struct {
		name string
		fl   *flow.Flow
		want bool
	}{
		{"port 80", mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), true},
		{"udp 53", with(mk(flow.ProtoUDP, 0, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Orig.DstPort = 53 }), false},
		{"tcp 8000 (range start)", with(mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Orig.DstPort = 8000 }), false},
		{"tcp 8100 (range end)", with(mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Orig.DstPort = 8100 }), false},
		{"tcp 8101", with(mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Orig.DstPort = 8101 }), true},
		{"source port 53 is not the destination", with(mk(flow.ProtoUDP, 0, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Orig.SrcPort = 53 }), true},
		// ICMP keeps type/code where ports are: 53<<8|0 must not match by accident.
		{"icmp is not port-filtered", with(mk(flow.ProtoICMP, 0, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Orig.DstPort = 53 }), true},
		{"mark 0x1f under mask 0xf0", with(mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Mark = 0x1f }), false},
		{"mark 0x20", with(mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Mark = 0x20 }), true},
		{"zone 7", with(mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Zone = 7 }), false},
		{"zone 8", with(mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Zone = 8 }), true},
		{"helper tftp", with(mk(flow.ProtoUDP, 0, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Orig.DstPort = 69; f.Extra = &flow.Extra{Helper: "tftp"} }), false},
		{"helper ftp", with(mk(flow.ProtoTCP, est, "10.0.0.1", "10.0.1.1", ""), func(f *flow.Flow) { f.Orig.DstPort = 21; f.Extra = &flow.Extra{Helper: "ftp"} }), true},
	}
	for _, tt := range tests {
		if got := f.Match(tt.fl); got != tt.want {
			t.Errorf("%s: Match = %v, want %v", tt.name, got, tt.want)
		}
	}
}
