// Package flow is ctsyncd's compact record of one conntrack entry: what is
// cached, replicated and committed. It holds both tuples (they differ under
// NAT), the L3/L4 protocol, zone, status bits, timeout, mark and the TCP
// state; rarely used attributes (labels, helper, sequence adjustment,
// synproxy, SCTP/DCCP state) live behind one pointer so that the common
// flow stays small.
//
// Package flow does not talk to the kernel; package kernel converts between
// Flow and github.com/ti-mo/conntrack's Flow. Values are plain data: a Flow
// is safe to copy, and safe for concurrent reads.
package flow

import (
	"net/netip"
)

// Address families (AF_INET, AF_INET6).
const (
	FamilyIPv4 uint8 = 2  // AF_INET
	FamilyIPv6 uint8 = 10 // AF_INET6
)

// Layer 4 protocol numbers (IPPROTO_*).
const (
	ProtoICMP    uint8 = 1   // IPPROTO_ICMP
	ProtoTCP     uint8 = 6   // IPPROTO_TCP
	ProtoUDP     uint8 = 17  // IPPROTO_UDP
	ProtoDCCP    uint8 = 33  // IPPROTO_DCCP
	ProtoGRE     uint8 = 47  // IPPROTO_GRE
	ProtoICMPv6  uint8 = 58  // IPPROTO_ICMPV6
	ProtoSCTP    uint8 = 132 // IPPROTO_SCTP
	ProtoUDPLite uint8 = 136 // IPPROTO_UDPLITE
)

// Status bits of a conntrack entry (enum ip_conntrack_status).
const (
	StatusExpected     uint32 = 1 << 0  // IPS_EXPECTED
	StatusSeenReply    uint32 = 1 << 1  // IPS_SEEN_REPLY
	StatusAssured      uint32 = 1 << 2  // IPS_ASSURED
	StatusConfirmed    uint32 = 1 << 3  // IPS_CONFIRMED
	StatusSrcNAT       uint32 = 1 << 4  // IPS_SRC_NAT
	StatusDstNAT       uint32 = 1 << 5  // IPS_DST_NAT
	StatusSeqAdjust    uint32 = 1 << 6  // IPS_SEQ_ADJUST
	StatusSrcNATDone   uint32 = 1 << 7  // IPS_SRC_NAT_DONE
	StatusDstNATDone   uint32 = 1 << 8  // IPS_DST_NAT_DONE
	StatusDying        uint32 = 1 << 9  // IPS_DYING
	StatusFixedTimeout uint32 = 1 << 10 // IPS_FIXED_TIMEOUT
	StatusTemplate     uint32 = 1 << 11 // IPS_TEMPLATE
	StatusUntracked    uint32 = 1 << 12 // IPS_UNTRACKED
	StatusHelper       uint32 = 1 << 13 // IPS_HELPER
	StatusOffload      uint32 = 1 << 14 // IPS_OFFLOAD
)

// TCP conntrack states (enum tcp_conntrack).
const (
	TCPNone        uint8 = 0 // TCP_CONNTRACK_NONE
	TCPSynSent     uint8 = 1 // TCP_CONNTRACK_SYN_SENT
	TCPSynRecv     uint8 = 2 // TCP_CONNTRACK_SYN_RECV
	TCPEstablished uint8 = 3 // TCP_CONNTRACK_ESTABLISHED
	TCPFinWait     uint8 = 4 // TCP_CONNTRACK_FIN_WAIT
	TCPCloseWait   uint8 = 5 // TCP_CONNTRACK_CLOSE_WAIT
	TCPLastAck     uint8 = 6 // TCP_CONNTRACK_LAST_ACK
	TCPTimeWait    uint8 = 7 // TCP_CONNTRACK_TIME_WAIT
	TCPClose       uint8 = 8 // TCP_CONNTRACK_CLOSE
	TCPSynSent2    uint8 = 9 // TCP_CONNTRACK_SYN_SENT2 (listen in the kernel's table)
)

// TCP window-tracking flags (IP_CT_TCP_FLAG_*), carried per direction.
const (
	TCPFlagWindowScale     uint8 = 0x01 // IP_CT_TCP_FLAG_WINDOW_SCALE
	TCPFlagSACKPerm        uint8 = 0x02 // IP_CT_TCP_FLAG_SACK_PERM
	TCPFlagCloseInit       uint8 = 0x04 // IP_CT_TCP_FLAG_CLOSE_INIT
	TCPFlagBeLiberal       uint8 = 0x08 // IP_CT_TCP_FLAG_BE_LIBERAL
	TCPFlagDataUnacked     uint8 = 0x10 // IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED
	TCPFlagMaxackSet       uint8 = 0x20 // IP_CT_TCP_FLAG_MAXACK_SET
	TCPFlagExpChallengeAck uint8 = 0x40 // IP_CT_EXP_CHALLENGE_ACK
)

var tcpStateNames = [...]string{
	TCPNone:        "NONE",
	TCPSynSent:     "SYN_SENT",
	TCPSynRecv:     "SYN_RECV",
	TCPEstablished: "ESTABLISHED",
	TCPFinWait:     "FIN_WAIT",
	TCPCloseWait:   "CLOSE_WAIT",
	TCPLastAck:     "LAST_ACK",
	TCPTimeWait:    "TIME_WAIT",
	TCPClose:       "CLOSE",
	TCPSynSent2:    "SYN_SENT2",
}

// TCPStateName returns the conntrack name of a TCP state ("ESTABLISHED").
func TCPStateName(s uint8) string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return "UNKNOWN"
}

// TCPStateByName maps a lower-case state name as used in the config
// ("established", "syn_sent", ...) to its number.
func TCPStateByName(name string) (uint8, bool) {
	for i, n := range tcpStateNames {
		if n != "" && equalFoldASCII(n, name) {
			return uint8(i), true
		}
	}
	return 0, false
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// Tuple is one direction of a flow. Addresses are 16 bytes; an IPv4 address
// sits in the first four (the family is kept on the Flow). For ICMP and
// ICMPv6, SrcPort holds the ICMP id and DstPort the type (high byte) and
// code (low byte), as conntrack itself keys echo flows; for GRE the ports
// hold the keys.
type Tuple struct {
	Src, Dst         [16]byte
	SrcPort, DstPort uint16
}

// Key identifies a flow: the original tuple, the protocols and the zone.
// It is comparable and used as a map key.
type Key struct {
	Orig   Tuple
	Family uint8
	Proto  uint8
	Zone   uint16
}

// TCPInfo is the TCP protocol state of a flow (CTA_PROTOINFO_TCP).
type TCPInfo struct {
	State                 uint8
	WScaleOrig, WScaleRep uint8
	FlagsOrig, FlagsRep   uint8 // IP_CT_TCP_FLAG_* of each direction
}

// SeqAdj is one direction's NAT sequence adjustment (CTA_SEQ_ADJ_*).
type SeqAdj struct {
	CorrectionPos uint32
	OffsetBefore  int32
	OffsetAfter   int32
}

// Extra holds the attributes most flows do not have. A nil *Extra means all
// of them are zero.
type Extra struct {
	Labels      [16]byte // CTA_LABELS, 128 bits
	Helper      string   // CTA_HELP name, e.g. "ftp"
	SeqAdjOrig  SeqAdj
	SeqAdjReply SeqAdj
	SynProxy    SynProxy
	SCTP        SCTPInfo
	DCCP        DCCPInfo
}

// SynProxy is the synproxy state of a flow (CTA_SYNPROXY).
type SynProxy struct {
	ISN, ITS, TSOff uint32
}

// SCTPInfo is the SCTP protocol state (CTA_PROTOINFO_SCTP).
type SCTPInfo struct {
	State                   uint8
	VTagOriginal, VTagReply uint32
}

// DCCPInfo is the DCCP protocol state (CTA_PROTOINFO_DCCP).
type DCCPInfo struct {
	State, Role  uint8
	HandshakeSeq uint64
}

// IsZero reports whether x holds nothing worth keeping.
func (x *Extra) IsZero() bool {
	return x == nil || *x == Extra{}
}

// Flow is one conntrack entry as ctsyncd keeps it. Timeout is the remaining
// lifetime in seconds as the kernel reported it when the flow was read.
type Flow struct {
	Key
	Reply   Tuple
	Status  uint32
	Timeout uint32
	Mark    uint32
	TCP     TCPInfo
	Extra   *Extra
}

// AddrFrom converts a netip.Addr into the 16-byte form of a Tuple.
func AddrFrom(a netip.Addr) [16]byte {
	var b [16]byte
	if a.Is4() || a.Is4In6() {
		v := a.Unmap().As4()
		copy(b[:], v[:])
		return b
	}
	return a.As16()
}

// Addr converts a tuple address back into a netip.Addr of the given family.
func Addr(family uint8, b [16]byte) netip.Addr {
	if family == FamilyIPv4 {
		return netip.AddrFrom4([4]byte{b[0], b[1], b[2], b[3]})
	}
	return netip.AddrFrom16(b)
}

// Invert returns the tuple seen from the other direction.
func (t Tuple) Invert(proto uint8) Tuple {
	r := Tuple{Src: t.Dst, Dst: t.Src, SrcPort: t.DstPort, DstPort: t.SrcPort}
	if proto == ProtoICMP || proto == ProtoICMPv6 {
		// ICMP: the id stays; the type turns into its reply type.
		r.SrcPort = t.SrcPort
		r.DstPort = uint16(icmpReplyType(proto, uint8(t.DstPort>>8)))<<8 | t.DstPort&0xff
	}
	return r
}

func icmpReplyType(proto, typ uint8) uint8 {
	if proto == ProtoICMP {
		switch typ {
		case 8: // echo request
			return 0
		case 0:
			return 8
		case 13: // timestamp
			return 14
		case 14:
			return 13
		case 15: // info request
			return 16
		case 16:
			return 15
		case 17: // address mask
			return 18
		case 18:
			return 17
		}
		return typ
	}
	switch typ {
	case 128: // echo request
		return 129
	case 129:
		return 128
	case 139: // node information query
		return 140
	case 140:
		return 139
	}
	return typ
}

// NATed reports whether the reply tuple is not the plain inverse of the
// original, i.e. the kernel translates this flow.
func (f *Flow) NATed() bool {
	return f.Reply != f.Orig.Invert(f.Proto)
}

// SrcAddr, DstAddr and friends return the original tuple's addresses.
func (f *Flow) SrcAddr() netip.Addr { return Addr(f.Family, f.Orig.Src) }

// DstAddr is the original destination.
func (f *Flow) DstAddr() netip.Addr { return Addr(f.Family, f.Orig.Dst) }

// ReplySrcAddr is the reply direction's source.
func (f *Flow) ReplySrcAddr() netip.Addr { return Addr(f.Family, f.Reply.Src) }

// ReplyDstAddr is the reply direction's destination.
func (f *Flow) ReplyDstAddr() netip.Addr { return Addr(f.Family, f.Reply.Dst) }

// Equal reports whether two flows carry the same state, Extra compared by
// value. Timeout is compared too; use SameState to ignore it.
func (f *Flow) Equal(g *Flow) bool {
	return f.SameState(g) && f.Timeout == g.Timeout
}

// SameState reports whether two flows are equal but for the timeout.
func (f *Flow) SameState(g *Flow) bool {
	if f.Key != g.Key || f.Reply != g.Reply || f.Status != g.Status ||
		f.Mark != g.Mark || f.TCP != g.TCP {
		return false
	}
	if f.Extra.IsZero() || g.Extra.IsZero() {
		return f.Extra.IsZero() == g.Extra.IsZero()
	}
	return *f.Extra == *g.Extra
}
