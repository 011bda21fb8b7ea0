package kernel

import (
	"encoding/binary"

	"github.com/mdlayher/netlink"

	"github.com/ctsyncd/ctsyncd/flow"
)

// This file is the writer's attribute encoder. ti-mo/conntrack's marshal is
// unexported and cannot express NAT, and the netfilter.Attribute tree
// allocates per attribute; the writer encodes hundreds of thousands of
// messages a second, so it appends netlink messages straight into a reused
// buffer. The layout is plain netlink: struct nlmsghdr, struct nfgenmsg, then
// struct nlattr TLVs padded to 4 bytes, nested ones flagged NLA_F_NESTED.
// Multi-byte integers are big endian (ctnetlink reads them with
// nla_get_be16/be32/be64) and flagged NLA_F_NET_BYTEORDER; the kernel masks
// both flags off the type. Unit tests decode the result with ti-mo's
// Event.Unmarshal.

// Attribute flags (struct nlattr nla_type).
const (
	nlaFNested       = 1 << 15 // NLA_F_NESTED
	nlaFNetByteorder = 1 << 14 // NLA_F_NET_BYTEORDER
)

// enum ctattr_type (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig   = 1  // CTA_TUPLE_ORIG
	ctaTupleReply  = 2  // CTA_TUPLE_REPLY
	ctaStatus      = 3  // CTA_STATUS
	ctaProtoinfo   = 4  // CTA_PROTOINFO
	ctaHelp        = 5  // CTA_HELP
	ctaNATSrc      = 6  // CTA_NAT_SRC
	ctaTimeout     = 7  // CTA_TIMEOUT
	ctaMark        = 8  // CTA_MARK
	ctaNATDst      = 13 // CTA_NAT_DST
	ctaSeqAdjOrig  = 15 // CTA_SEQ_ADJ_ORIG
	ctaSeqAdjReply = 16 // CTA_SEQ_ADJ_REPLY
	ctaZone        = 18 // CTA_ZONE
	ctaLabels      = 22 // CTA_LABELS
	ctaLabelsMask  = 23 // CTA_LABELS_MASK
	ctaSynproxy    = 24 // CTA_SYNPROXY
)

// enum ctattr_tuple, ctattr_ip, ctattr_l4proto.
const (
	ctaTupleIP    = 1 // CTA_TUPLE_IP
	ctaTupleProto = 2 // CTA_TUPLE_PROTO

	ctaIPv4Src = 1 // CTA_IP_V4_SRC
	ctaIPv4Dst = 2 // CTA_IP_V4_DST
	ctaIPv6Src = 3 // CTA_IP_V6_SRC
	ctaIPv6Dst = 4 // CTA_IP_V6_DST

	ctaProtoNum      = 1 // CTA_PROTO_NUM
	ctaProtoSrcPort  = 2 // CTA_PROTO_SRC_PORT
	ctaProtoDstPort  = 3 // CTA_PROTO_DST_PORT
	ctaProtoICMPID   = 4 // CTA_PROTO_ICMP_ID
	ctaProtoICMPType = 5 // CTA_PROTO_ICMP_TYPE
	ctaProtoICMPCode = 6 // CTA_PROTO_ICMP_CODE
	ctaProtoICMPv6ID = 7 // CTA_PROTO_ICMPV6_ID
	ctaProtoICMPv6Ty = 8 // CTA_PROTO_ICMPV6_TYPE
	ctaProtoICMPv6Co = 9 // CTA_PROTO_ICMPV6_CODE
)

// enum ctattr_protoinfo and its per-protocol children.
const (
	ctaProtoinfoTCP  = 1 // CTA_PROTOINFO_TCP
	ctaProtoinfoDCCP = 2 // CTA_PROTOINFO_DCCP
	ctaProtoinfoSCTP = 3 // CTA_PROTOINFO_SCTP

	ctaTCPState       = 1 // CTA_PROTOINFO_TCP_STATE
	ctaTCPWScaleOrig  = 2 // CTA_PROTOINFO_TCP_WSCALE_ORIGINAL
	ctaTCPWScaleReply = 3 // CTA_PROTOINFO_TCP_WSCALE_REPLY
	ctaTCPFlagsOrig   = 4 // CTA_PROTOINFO_TCP_FLAGS_ORIGINAL
	ctaTCPFlagsReply  = 5 // CTA_PROTOINFO_TCP_FLAGS_REPLY

	ctaDCCPState        = 1 // CTA_PROTOINFO_DCCP_STATE
	ctaDCCPRole         = 2 // CTA_PROTOINFO_DCCP_ROLE
	ctaDCCPHandshakeSeq = 3 // CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ

	ctaSCTPState     = 1 // CTA_PROTOINFO_SCTP_STATE
	ctaSCTPVTagOrig  = 2 // CTA_PROTOINFO_SCTP_VTAG_ORIGINAL
	ctaSCTPVTagReply = 3 // CTA_PROTOINFO_SCTP_VTAG_REPLY
)

// enum ctattr_help, ctattr_seqadj, ctattr_synproxy.
const (
	ctaHelpName = 1 // CTA_HELP_NAME

	ctaSeqAdjCorrectionPos = 1 // CTA_SEQADJ_CORRECTION_POS
	ctaSeqAdjOffsetBefore  = 2 // CTA_SEQADJ_OFFSET_BEFORE
	ctaSeqAdjOffsetAfter   = 3 // CTA_SEQADJ_OFFSET_AFTER

	ctaSynproxyISN   = 1 // CTA_SYNPROXY_ISN
	ctaSynproxyITS   = 2 // CTA_SYNPROXY_ITS
	ctaSynproxyTSOff = 3 // CTA_SYNPROXY_TSOFF
)

// enum ctattr_nat and ctattr_protonat.
const (
	ctaNATV4MinIP = 1 // CTA_NAT_V4_MINIP
	ctaNATV4MaxIP = 2 // CTA_NAT_V4_MAXIP
	ctaNATProto   = 3 // CTA_NAT_PROTO
	ctaNATV6MinIP = 4 // CTA_NAT_V6_MINIP
	ctaNATV6MaxIP = 5 // CTA_NAT_V6_MAXIP

	ctaProtoNATPortMin = 1 // CTA_PROTONAT_PORT_MIN
	ctaProtoNATPortMax = 2 // CTA_PROTONAT_PORT_MAX
)

const nlmsgHdrLen = 16 // sizeof(struct nlmsghdr)

// Status bits the writer passes on. The kernel sets CONFIRMED itself on
// create but refuses (EBUSY) a status word that would clear it, and refuses
// EXPECTED and DYING; NAT, NAT_DONE and SEQ_ADJUST follow from CTA_NAT_* and
// CTA_SEQ_ADJ_*; TEMPLATE, UNTRACKED, OFFLOAD, HELPER and the rest are the
// kernel's own bookkeeping. So only SEEN_REPLY, ASSURED and FIXED_TIMEOUT
// travel, plus CONFIRMED always (as libnetfilter_conntrack does).
const writableStatus = flow.StatusSeenReply | flow.StatusAssured | flow.StatusFixedTimeout

// commitStatus is the status word sent for f on create or update.
func commitStatus(f *flow.Flow) uint32 {
	return f.Status&writableStatus | flow.StatusConfirmed
}

// tcpFlags is the per-direction flag byte committed for TCP: the sender's
// flags plus BE_LIBERAL, as a standby has no window data
// (docs/ARCHITECTURE.md, "Kernel facts learned the hard way").
func tcpFlags(v uint8) uint8 {
	return v&^flow.TCPFlagExpChallengeAck | flow.TCPFlagBeLiberal
}

// msgEncoder appends netlink messages and attributes to a byte slice.
// Every message and attribute ends 4-byte aligned, so the slice stays aligned
// when it starts empty.
type msgEncoder struct{ b []byte }

func (e *msgEncoder) begin(typ uint16, flags netlink.HeaderFlags, seq uint32, family uint8) int {
	start := len(e.b)
	e.b = binary.NativeEndian.AppendUint32(e.b, 0) // nlmsg_len, patched in end
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = binary.NativeEndian.AppendUint16(e.b, uint16(flags))
	e.b = binary.NativeEndian.AppendUint32(e.b, seq)
	e.b = binary.NativeEndian.AppendUint32(e.b, 0) // nlmsg_pid: the kernel
	// struct nfgenmsg: family, NFNETLINK_V0, res_id (big endian) 0.
	e.b = append(e.b, family, 0, 0, 0)
	return start
}

func (e *msgEncoder) end(start int) {
	binary.NativeEndian.PutUint32(e.b[start:], uint32(len(e.b)-start))
}

func (e *msgEncoder) hdr(typ uint16, payload int) {
	e.b = binary.NativeEndian.AppendUint16(e.b, uint16(4+payload))
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
}

func (e *msgEncoder) pad() {
	for len(e.b)&3 != 0 {
		e.b = append(e.b, 0)
	}
}

func (e *msgEncoder) nest(typ uint16) int {
	start := len(e.b)
	e.hdr(typ|nlaFNested, 0)
	return start
}

func (e *msgEncoder) unnest(start int) {
	binary.NativeEndian.PutUint16(e.b[start:], uint16(len(e.b)-start))
}

func (e *msgEncoder) u8(typ uint16, v uint8) {
	e.hdr(typ, 1)
	e.b = append(e.b, v, 0, 0, 0)
}

func (e *msgEncoder) be16(typ uint16, v uint16) {
	e.hdr(typ|nlaFNetByteorder, 2)
	e.b = binary.BigEndian.AppendUint16(e.b, v)
	e.b = append(e.b, 0, 0)
}

func (e *msgEncoder) be32(typ uint16, v uint32) {
	e.hdr(typ|nlaFNetByteorder, 4)
	e.b = binary.BigEndian.AppendUint32(e.b, v)
}

func (e *msgEncoder) be64(typ uint16, v uint64) {
	e.hdr(typ|nlaFNetByteorder, 8)
	e.b = binary.BigEndian.AppendUint64(e.b, v)
}

func (e *msgEncoder) bytes(typ uint16, v []byte) {
	e.hdr(typ, len(v))
	e.b = append(e.b, v...)
	e.pad()
}

// str encodes a NUL-terminated string.
func (e *msgEncoder) str(typ uint16, s string) {
	e.hdr(typ, len(s)+1)
	e.b = append(e.b, s...)
	e.b = append(e.b, 0)
	e.pad()
}

// tuple encodes a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY.
func (e *msgEncoder) tuple(typ uint16, family, proto uint8, t *flow.Tuple) {
	n := e.nest(typ)
	ip := e.nest(ctaTupleIP)
	if family == flow.FamilyIPv4 {
		e.bytes(ctaIPv4Src, t.Src[:4])
		e.bytes(ctaIPv4Dst, t.Dst[:4])
	} else {
		e.bytes(ctaIPv6Src, t.Src[:])
		e.bytes(ctaIPv6Dst, t.Dst[:])
	}
	e.unnest(ip)
	p := e.nest(ctaTupleProto)
	e.u8(ctaProtoNum, proto)
	switch proto {
	case flow.ProtoICMP:
		e.be16(ctaProtoICMPID, t.SrcPort)
		e.u8(ctaProtoICMPType, uint8(t.DstPort>>8))
		e.u8(ctaProtoICMPCode, uint8(t.DstPort))
	case flow.ProtoICMPv6:
		e.be16(ctaProtoICMPv6ID, t.SrcPort)
		e.u8(ctaProtoICMPv6Ty, uint8(t.DstPort>>8))
		e.u8(ctaProtoICMPv6Co, uint8(t.DstPort))
	case flow.ProtoTCP, flow.ProtoUDP, flow.ProtoUDPLite, flow.ProtoSCTP, flow.ProtoDCCP, flow.ProtoGRE:
		// GRE keys travel in the port attributes too.
		e.be16(ctaProtoSrcPort, t.SrcPort)
		e.be16(ctaProtoDstPort, t.DstPort)
	}
	e.unnest(p)
	e.unnest(n)
}

// protoinfo encodes CTA_PROTOINFO for TCP (always, liberal), SCTP and DCCP
// (when the flow carries their state).
func (e *msgEncoder) protoinfo(f *flow.Flow) {
	switch f.Proto {
	case flow.ProtoTCP:
		n := e.nest(ctaProtoinfo)
		t := e.nest(ctaProtoinfoTCP)
		e.u8(ctaTCPState, f.TCP.State)
		e.u8(ctaTCPWScaleOrig, f.TCP.WScaleOrig)
		e.u8(ctaTCPWScaleReply, f.TCP.WScaleRep)
		// struct nf_ct_tcp_flags {__u8 flags; __u8 mask;}: set the bits we
		// send, leave the kernel's others alone (on update).
		fo, fr := tcpFlags(f.TCP.FlagsOrig), tcpFlags(f.TCP.FlagsRep)
		e.bytes(ctaTCPFlagsOrig, []byte{fo, fo})
		e.bytes(ctaTCPFlagsReply, []byte{fr, fr})
		e.unnest(t)
		e.unnest(n)
	case flow.ProtoSCTP:
		if f.Extra == nil {
			return
		}
		n := e.nest(ctaProtoinfo)
		s := e.nest(ctaProtoinfoSCTP)
		e.u8(ctaSCTPState, f.Extra.SCTP.State)
		e.be32(ctaSCTPVTagOrig, f.Extra.SCTP.VTagOriginal)
		e.be32(ctaSCTPVTagReply, f.Extra.SCTP.VTagReply)
		e.unnest(s)
		e.unnest(n)
	case flow.ProtoDCCP:
		if f.Extra == nil {
			return
		}
		n := e.nest(ctaProtoinfo)
		d := e.nest(ctaProtoinfoDCCP)
		e.u8(ctaDCCPState, f.Extra.DCCP.State)
		e.u8(ctaDCCPRole, f.Extra.DCCP.Role)
		e.be64(ctaDCCPHandshakeSeq, f.Extra.DCCP.HandshakeSeq)
		e.unnest(d)
		e.unnest(n)
	}
}

func (e *msgEncoder) seqAdj(typ uint16, s *flow.SeqAdj) {
	n := e.nest(typ)
	e.be32(ctaSeqAdjCorrectionPos, s.CorrectionPos)
	e.be32(ctaSeqAdjOffsetBefore, uint32(s.OffsetBefore))
	e.be32(ctaSeqAdjOffsetAfter, uint32(s.OffsetAfter))
	e.unnest(n)
}

// zone encodes CTA_ZONE when the flow is not in the default zone.
func (e *msgEncoder) zone(z uint16) {
	if z != 0 {
		e.be16(ctaZone, z)
	}
}

func ctType(msg uint8) uint16 { return subsysCTNetlink<<8 | uint16(msg) }

// appendCreate appends an IPCTNL_MSG_CT_NEW that creates f with the given
// timeout. The reply tuple is the inverse of the original; for a NATed flow
// CTA_NAT_SRC/CTA_NAT_DST make the kernel derive the real reply tuple and
// the NAT status bits itself, as conntrackd does.
func appendCreate(b []byte, f *flow.Flow, timeout uint32, seq uint32, flags netlink.HeaderFlags) []byte {
	e := msgEncoder{b}
	m := e.begin(ctType(msgCTNew), flags, seq, f.Family)
	e.tuple(ctaTupleOrig, f.Family, f.Proto, &f.Orig)
	inv := f.Orig.Invert(f.Proto)
	e.tuple(ctaTupleReply, f.Family, f.Proto, &inv)
	e.zone(f.Zone)
	e.be32(ctaStatus, commitStatus(f))
	e.be32(ctaTimeout, timeout)
	if f.Mark != 0 {
		e.be32(ctaMark, f.Mark)
	}
	e.protoinfo(f)
	if x := f.Extra; x != nil {
		if x.Helper != "" {
			n := e.nest(ctaHelp)
			e.str(ctaHelpName, x.Helper)
			e.unnest(n)
		}
		if x.Labels != ([16]byte{}) {
			e.bytes(ctaLabels, x.Labels[:])
			e.bytes(ctaLabelsMask, allOnes16[:])
		}
		if x.SeqAdjOrig != (flow.SeqAdj{}) {
			e.seqAdj(ctaSeqAdjOrig, &x.SeqAdjOrig)
		}
		if x.SeqAdjReply != (flow.SeqAdj{}) {
			e.seqAdj(ctaSeqAdjReply, &x.SeqAdjReply)
		}
		if x.SynProxy != (flow.SynProxy{}) {
			n := e.nest(ctaSynproxy)
			e.be32(ctaSynproxyISN, x.SynProxy.ISN)
			e.be32(ctaSynproxyITS, x.SynProxy.ITS)
			e.be32(ctaSynproxyTSOff, x.SynProxy.TSOff)
			e.unnest(n)
		}
	}
	src, dst := natOf(f)
	if dst.ok {
		e.nat(ctaNATDst, f.Family, &dst)
	}
	if src.ok {
		e.nat(ctaNATSrc, f.Family, &src)
	}
	e.end(m)
	return e.b
}

var allOnes16 = [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// appendUpdate appends an IPCTNL_MSG_CT_NEW without NLM_F_CREATE that
// updates the existing entry of f: status, timeout (0: left alone), mark,
// protocol state (TCP liberal) and sequence adjustment. The kernel refuses
// NAT changes on update (EOPNOTSUPP) and cannot attach a helper, labels
// without a label extension, or synproxy state to an existing entry, so
// none of those are sent.
func appendUpdate(b []byte, f *flow.Flow, status, timeout uint32, seq uint32, flags netlink.HeaderFlags) []byte {
	e := msgEncoder{b}
	m := e.begin(ctType(msgCTNew), flags, seq, f.Family)
	e.tuple(ctaTupleOrig, f.Family, f.Proto, &f.Orig)
	e.zone(f.Zone)
	e.be32(ctaStatus, status)
	if timeout != 0 {
		e.be32(ctaTimeout, timeout)
	}
	e.be32(ctaMark, f.Mark)
	e.protoinfo(f)
	if x := f.Extra; x != nil {
		if x.SeqAdjOrig != (flow.SeqAdj{}) {
			e.seqAdj(ctaSeqAdjOrig, &x.SeqAdjOrig)
		}
		if x.SeqAdjReply != (flow.SeqAdj{}) {
			e.seqAdj(ctaSeqAdjReply, &x.SeqAdjReply)
		}
	}
	e.end(m)
	return e.b
}

// appendKeyMsg appends a message of type msg (GET or DELETE) that names
// one entry by its original tuple and zone.
func appendKeyMsg(b []byte, msg uint8, k *flow.Key, seq uint32, flags netlink.HeaderFlags) []byte {
	e := msgEncoder{b}
	m := e.begin(ctType(msg), flags, seq, k.Family)
	e.tuple(ctaTupleOrig, k.Family, k.Proto, &k.Orig)
	e.zone(k.Zone)
	e.end(m)
	return e.b
}

// appendFlush appends an IPCTNL_MSG_CT_DELETE without a tuple: it flushes
// the table of one family (all zones).
func appendFlush(b []byte, family uint8, seq uint32, flags netlink.HeaderFlags) []byte {
	e := msgEncoder{b}
	m := e.begin(ctType(msgCTDelete), flags, seq, family)
	e.end(m)
	return e.b
}
