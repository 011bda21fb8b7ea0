package kernel

import (
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
)

// attrs splits the attributes after a message's nlmsghdr and nfgenmsg.
func queueAttrs(t *testing.T, b []byte) (hdr netlink.Header, nfgen []byte, attrs map[uint16][]byte) {
	t.Helper()
	var msgs []netlink.Message
	if err := parseMessages(b, func(m netlink.Message) error {
		m.Data = append([]byte(nil), m.Data...)
		msgs = append(msgs, m)
		return nil
	}); err != nil || len(msgs) != 1 {
		t.Fatalf("want one message, got %d (%v)", len(msgs), err)
	}
	m := msgs[0]
	attrs = map[uint16][]byte{}
	for rest := m.Data[4:]; len(rest) > 0; {
		typ, v, r, ok := nextAttr(rest)
		if !ok {
			t.Fatalf("bad attribute in % x", m.Data)
		}
		attrs[typ] = v
		rest = r
	}
	return m.Header, m.Data[:4], attrs
}

func TestQueueConfigEncoding(t *testing.T) {
	b := appendQueueConfig(nil, 7, 513, nfqnlCfgCmdBind, QueueConfig{})
	h, nfgen, a := queueAttrs(t, b)
	if uint16(h.Type) != 3<<8|2 || h.Sequence != 7 || h.Flags&netlink.Acknowledge == 0 {
		t.Fatalf("header %+v: want NFNL_SUBSYS_QUEUE/CONFIG, seq 7, ACK", h)
	}
	if nfgen[0] != unix.AF_UNSPEC || binary.BigEndian.Uint16(nfgen[2:]) != 513 {
		t.Fatalf("nfgenmsg % x: want family 0, res_id 513", nfgen)
	}
	if c := a[nfqaCfgCmd]; len(c) != 4 || c[0] != nfqnlCfgCmdBind {
		t.Fatalf("cmd attribute % x: want BIND", c)
	}

	b = appendQueueConfig(nil, 8, 2, 0, QueueConfig{CopyRange: 96, MaxLen: 1000})
	_, _, a = queueAttrs(t, b)
	p := a[nfqaCfgParams]
	if len(p) != 5 || binary.BigEndian.Uint32(p) != 96 || p[4] != nfqnlCopyPacket {
		t.Fatalf("params % x: want copy_range 96, NFQNL_COPY_PACKET", p)
	}
	if v := binary.BigEndian.Uint32(a[nfqaCfgMaxLen]); v != 1000 {
		t.Fatalf("maxlen %d", v)
	}
	fl, mask := binary.BigEndian.Uint32(a[nfqaCfgFlags]), binary.BigEndian.Uint32(a[nfqaCfgMask])
	if fl != nfqaCfgFFailOpen|nfqaCfgFConntrack || mask != fl {
		t.Fatalf("flags %#x mask %#x: want FAIL_OPEN|CONNTRACK in both", fl, mask)
	}
	if len(b)%4 != 0 {
		t.Fatalf("message of %d bytes is not aligned", len(b))
	}
}

func TestQueueVerdictEncoding(t *testing.T) {
	b := appendVerdict(nil, 9, 4, 0xdeadbeef, nfAccept)
	h, nfgen, a := queueAttrs(t, b)
	if uint16(h.Type) != 3<<8|1 {
		t.Fatalf("type %#x: want NFNL_SUBSYS_QUEUE/VERDICT", uint16(h.Type))
	}
	if binary.BigEndian.Uint16(nfgen[2:]) != 4 {
		t.Fatalf("res_id: want queue 4")
	}
	v := a[nfqaVerdictHdr]
	if len(v) != 8 || binary.BigEndian.Uint32(v) != nfAccept || binary.BigEndian.Uint32(v[4:]) != 0xdeadbeef {
		t.Fatalf("verdict header % x", v)
	}
}

// packetMsg builds a PACKET message as the kernel sends it, with the
// conntrack entry of f in NFQA_CT when f is not nil.
func packetMsg(family uint8, id uint32, f *flow.Flow, ctinfo uint32) netlink.Message {
	e := msgEncoder{}
	start := e.begin(queueMsgType(nfqnlMsgPacket), 0, 0, family)
	e.hdr(nfqaPacketHdr, 7)
	e.b = binary.BigEndian.AppendUint32(e.b, id)
	e.b = binary.BigEndian.AppendUint16(e.b, 0x0800)
	e.b = append(e.b, 2) // NF_INET_FORWARD
	e.pad()
	e.be32(nfqaIfIndexIn, 3)
	if f != nil {
		create := appendCreate(nil, f, 0, 1, 0)
		n := e.nest(nfqaCT)
		e.b = append(e.b, create[nlmsgHdrLen+4:]...)
		e.unnest(n)
		e.be32(nfqaCTInfo, ctinfo)
	}
	e.bytes(nfqaPayload, []byte{0x45, 0, 0, 20})
	e.pad()
	e.end(start)
	var m netlink.Message
	_ = parseMessages(e.b, func(x netlink.Message) error { m = x; return nil })
	return m
}

func TestDecodeQueuePacket(t *testing.T) {
	for i := range 50 {
		want := testFlow(i)
		if want.NATed() {
			continue
		}
		fam := uint8(unix.AF_INET)
		if want.Family == flow.FamilyIPv6 {
			fam = unix.AF_INET6
		}
		var p QueuePacket
		if err := decodeQueuePacket(packetMsg(fam, uint32(1000+i), &want, ctInfoNew), &p); err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		if p.ID != uint32(1000+i) || p.Hook != 2 || p.InDev != 3 || !p.HasFlow || p.Reply || p.FromHeaders {
			t.Fatalf("flow %d: %+v", i, p)
		}
		if p.Flow.Key != want.Key || p.Flow.TCP.State != want.TCP.State {
			t.Errorf("flow %d: got %s, want %s", i, p.Flow.String(), want.String())
		}
		if len(p.Payload) != 4 {
			t.Errorf("payload % x", p.Payload)
		}
	}
	var p QueuePacket
	if err := decodeQueuePacket(packetMsg(unix.AF_INET, 5, nil, 0), &p); err != nil || p.HasFlow || p.ID != 5 {
		t.Fatalf("packet without conntrack: %v %+v", err, p)
	}
	f := testFlow(0)
	if err := decodeQueuePacket(packetMsg(unix.AF_INET, 6, &f, ctInfoEstablishedReply), &p); err != nil || !p.Reply {
		t.Fatalf("reply packet: %v, reply %v", err, p.Reply)
	}
}

func TestDecodeQueuePacketRefuses(t *testing.T) {
	var p QueuePacket
	bad := []netlink.Message{
		{Header: netlink.Header{Type: netlink.HeaderType(queueMsgType(nfqnlMsgConfig))}, Data: []byte{2, 0, 0, 0}},
		{Header: netlink.Header{Type: netlink.HeaderType(queueMsgType(nfqnlMsgPacket))}, Data: []byte{2}},
		{Header: netlink.Header{Type: netlink.HeaderType(queueMsgType(nfqnlMsgPacket))}, Data: []byte{2, 0, 0, 0}},
		{Header: netlink.Header{Type: netlink.HeaderType(queueMsgType(nfqnlMsgPacket))}, Data: []byte{2, 0, 0, 0, 200, 0, 1, 0}},
	}
	for i, m := range bad {
		if err := decodeQueuePacket(m, &p); err == nil {
			t.Errorf("message %d decoded", i)
		}
	}
}

func FuzzDecodeQueuePacket(f *testing.F) {
	fl := testFlow(1)
	f.Add(packetMsg(unix.AF_INET, 1, &fl, ctInfoNew).Data)
	f.Add([]byte{2, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p QueuePacket
		m := netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(queueMsgType(nfqnlMsgPacket))}, Data: b}
		_ = decodeQueuePacket(m, &p)
	})
}

func TestFlowFromHeaders(t *testing.T) {
	ip4 := func(proto byte, l4 []byte) []byte {
		b := []byte{0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 0, 1, 2, 10, 0, 2, 2}
		return append(b, l4...)
	}
	tcp := func(sport, dport uint16, flags byte) []byte {
		b := binary.BigEndian.AppendUint16(nil, sport)
		b = binary.BigEndian.AppendUint16(b, dport)
		b = append(b, make([]byte, 9)...)
		return append(b, flags, 0, 0, 0, 0, 0, 0)
	}
	f, reply, ok := flowFromHeaders(flow.FamilyIPv4, ip4(6, tcp(40000, 80, 0x02)))
	if !ok || reply || f.TCP.State != flow.TCPSynSent || f.Orig.SrcPort != 40000 || f.Orig.DstPort != 80 ||
		f.SrcAddr().String() != "10.0.1.2" || f.Reply.SrcPort != 80 {
		t.Fatalf("SYN: %v %v %s", ok, reply, f.String())
	}
	// A SYN-ACK from 10.0.1.2:40000 is the reply of the flow opened by
	// 10.0.2.2:80... here the packet's source is the server.
	f, reply, ok = flowFromHeaders(flow.FamilyIPv4, ip4(6, tcp(40000, 80, 0x12)))
	if !ok || !reply || f.TCP.State != flow.TCPSynRecv || f.Status&flow.StatusSeenReply == 0 ||
		f.SrcAddr().String() != "10.0.2.2" || f.Orig.SrcPort != 80 || f.Orig.DstPort != 40000 {
		t.Fatalf("SYN-ACK: %v %v %s", ok, reply, f.String())
	}
	if _, _, ok := flowFromHeaders(flow.FamilyIPv4, ip4(6, tcp(1, 2, 0x10))); ok {
		t.Error("a bare ACK was taken")
	}
	udp := []byte{0x9c, 0x40, 0, 53, 0, 8, 0, 0}
	f, reply, ok = flowFromHeaders(flow.FamilyIPv4, ip4(17, udp))
	if !ok || reply || f.Orig.SrcPort != 40000 || f.Orig.DstPort != 53 || f.Timeout == 0 {
		t.Fatalf("UDP: %v %v %s", ok, reply, f.String())
	}
	echo := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1}
	f, reply, ok = flowFromHeaders(flow.FamilyIPv4, ip4(1, echo))
	if !ok || reply || f.Orig.SrcPort != 0x1234 || f.Orig.DstPort != 8<<8 || f.Reply.DstPort != 0 {
		t.Fatalf("echo: %v %v %s", ok, reply, f.String())
	}
	v6 := make([]byte, 40)
	v6[0], v6[6] = 0x60, 17
	v6[23], v6[39] = 1, 2
	f, _, ok = flowFromHeaders(flow.FamilyIPv6, append(v6, udp...))
	if !ok || f.Family != flow.FamilyIPv6 || f.Orig.Src[15] != 1 || f.Orig.DstPort != 53 {
		t.Fatalf("UDP6: %v %s", ok, f.String())
	}
	frag := ip4(17, udp)
	frag[7] = 8 // fragment offset 64
	for i, b := range [][]byte{nil, {0x45}, frag, ip4(47, udp), ip4(6, tcp(1, 2, 0x02))[:30]} {
		if _, _, ok := flowFromHeaders(flow.FamilyIPv4, b); ok {
			t.Errorf("case %d decoded", i)
		}
	}
}
