package kernel

import (
	"encoding/binary"

	"github.com/ctsyncd/ctsyncd/flow"
)

// flowFromHeaders builds the conntrack entry a queued packet belongs to
// from its IP and transport headers, for kernels that do not hand the
// entry over (NFQA_CT needs CONFIG_NETFILTER_NETLINK_GLUE_CT). It knows the
// packets a defer ruleset queues: a TCP SYN (the flow in SYN_SENT), a TCP
// SYN-ACK (the reply: the flow in SYN_RECV, reply seen), the first UDP
// datagram and an ICMP echo request or reply. The zone, mark and NAT are
// not in the headers: a DNATed packet yields its translated tuple. ok is
// false for anything else.
func flowFromHeaders(family uint8, b []byte) (f flow.Flow, reply, ok bool) {
	var l4 []byte
	switch family {
	case flow.FamilyIPv4:
		if len(b) < 20 || b[0]>>4 != 4 {
			return f, false, false
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl || binary.BigEndian.Uint16(b[6:])&0x1fff != 0 {
			return f, false, false // a later fragment has no transport header
		}
		f.Proto = b[9]
		copy(f.Orig.Src[:4], b[12:16])
		copy(f.Orig.Dst[:4], b[16:20])
		l4 = b[ihl:]
	case flow.FamilyIPv6:
		if len(b) < 40 || b[0]>>4 != 6 {
			return f, false, false
		}
		f.Proto = b[6] // extension headers are not followed
		copy(f.Orig.Src[:], b[8:24])
		copy(f.Orig.Dst[:], b[24:40])
		l4 = b[40:]
	default:
		return f, false, false
	}
	f.Family = family
	switch f.Proto {
	case flow.ProtoTCP:
		if len(l4) < 14 {
			return f, false, false
		}
		f.Orig.SrcPort = binary.BigEndian.Uint16(l4)
		f.Orig.DstPort = binary.BigEndian.Uint16(l4[2:])
		const syn, ack, rst, fin = 0x02, 0x10, 0x04, 0x01
		switch l4[13] & (syn | ack | rst | fin) {
		case syn:
			f.TCP.State, f.Timeout = flow.TCPSynSent, 120
		case syn | ack:
			reply = true
			f.TCP.State, f.Timeout = flow.TCPSynRecv, 60
		default:
			return f, false, false
		}
	case flow.ProtoUDP:
		if len(l4) < 8 {
			return f, false, false
		}
		f.Orig.SrcPort = binary.BigEndian.Uint16(l4)
		f.Orig.DstPort = binary.BigEndian.Uint16(l4[2:])
		f.Timeout = 30
	case flow.ProtoICMP, flow.ProtoICMPv6:
		if len(l4) < 8 || (f.Proto == flow.ProtoICMP) != (family == flow.FamilyIPv4) {
			return f, false, false
		}
		typ := l4[0]
		switch {
		case f.Proto == flow.ProtoICMP && typ == 8, f.Proto == flow.ProtoICMPv6 && typ == 128:
		case f.Proto == flow.ProtoICMP && typ == 0, f.Proto == flow.ProtoICMPv6 && typ == 129:
			reply = true
		default:
			return f, false, false
		}
		f.Orig.SrcPort = binary.BigEndian.Uint16(l4[4:]) // the echo id
		f.Orig.DstPort = uint16(typ)<<8 | uint16(l4[1])
		f.Timeout = 30
	default:
		return f, false, false
	}
	if reply {
		// The packet travels the reply tuple: the flow's original tuple is
		// its inverse, and the reply was seen.
		f.Reply = f.Orig
		f.Orig = f.Reply.Invert(f.Proto)
		f.Status |= flow.StatusSeenReply
	} else {
		f.Reply = f.Orig.Invert(f.Proto)
	}
	return f, reply, true
}
