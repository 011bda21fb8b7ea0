// Package timoconv converts between ti-mo/conntrack flows and ctsyncd's
// flows. Only tests and tools use it (the ti-mo cross-checks of the
// kernel package, cmd/ctgen): it keeps ti-mo/conntrack out of the daemon.
package timoconv

import (
	"github.com/ti-mo/conntrack"

	"github.com/ctsyncd/ctsyncd/flow"
)

// FromConntrack converts a ti-mo/conntrack flow into ctsyncd's compact flow.
// ok is false when the flow has no usable original tuple (e.g. a DESTROY
// event for an entry the kernel already half tore down).
func FromConntrack(c *conntrack.Flow) (f flow.Flow, ok bool) {
	src := c.TupleOrig.IP.SourceAddress
	if !src.IsValid() {
		return f, false
	}
	f.Family = flow.FamilyIPv4
	if src.Is6() && !src.Is4In6() {
		f.Family = flow.FamilyIPv6
	}
	f.Proto = c.TupleOrig.Proto.Protocol
	f.Zone = c.Zone
	f.Orig = tupleFrom(&c.TupleOrig)
	if c.TupleReply.IP.SourceAddress.IsValid() {
		f.Reply = tupleFrom(&c.TupleReply)
	} else {
		f.Reply = f.Orig.Invert(f.Proto)
	}
	f.Status = uint32(c.Status)
	f.Timeout = c.Timeout
	f.Mark = c.Mark
	if t := c.ProtoInfo.TCP; t != nil {
		f.TCP = flow.TCPInfo{
			State:      t.State,
			WScaleOrig: t.OriginalWindowScale,
			WScaleRep:  t.ReplyWindowScale,
			FlagsOrig:  tcpFlagsByte(t.OriginalFlags),
			FlagsRep:   tcpFlagsByte(t.ReplyFlags),
		}
	}
	var x flow.Extra
	if len(c.Labels) > 0 {
		copy(x.Labels[:], c.Labels)
	}
	x.Helper = c.Helper.Name
	if c.SeqAdjOrig != (conntrack.SequenceAdjust{}) {
		x.SeqAdjOrig = seqAdjFrom(c.SeqAdjOrig)
	}
	if c.SeqAdjReply != (conntrack.SequenceAdjust{}) {
		x.SeqAdjReply = seqAdjFrom(c.SeqAdjReply)
	}
	x.SynProxy = flow.SynProxy{ISN: c.SynProxy.ISN, ITS: c.SynProxy.ITS, TSOff: c.SynProxy.TSOff}
	if s := c.ProtoInfo.SCTP; s != nil {
		x.SCTP = flow.SCTPInfo{State: s.State, VTagOriginal: s.VTagOriginal, VTagReply: s.VTagReply}
	}
	if d := c.ProtoInfo.DCCP; d != nil {
		x.DCCP = flow.DCCPInfo{State: d.State, Role: d.Role, HandshakeSeq: d.HandshakeSeq}
	}
	if !x.IsZero() {
		f.Extra = &x
	}
	return f, true
}

// tcpFlagsByte extracts the flags byte of a struct nf_ct_tcp_flags {u8 flags;
// u8 mask;}, which ti-mo decodes as one big-endian uint16: flags is the
// high byte.
func tcpFlagsByte(v uint16) uint8 {
	return uint8(v >> 8)
}

// tcpFlagsWord builds the struct nf_ct_tcp_flags for flags with the mask set
// to the same bits, as ti-mo encodes it (big endian).
func tcpFlagsWord(flags uint8) uint16 {
	return uint16(flags)<<8 | uint16(flags)
}

func seqAdjFrom(s conntrack.SequenceAdjust) flow.SeqAdj {
	return flow.SeqAdj{CorrectionPos: s.Position, OffsetBefore: int32(s.OffsetBefore), OffsetAfter: int32(s.OffsetAfter)}
}

func tupleFrom(t *conntrack.Tuple) flow.Tuple {
	r := flow.Tuple{
		Src: flow.AddrFrom(t.IP.SourceAddress),
		Dst: flow.AddrFrom(t.IP.DestinationAddress),
	}
	switch {
	case t.Proto.ICMPv4 || t.Proto.ICMPv6 ||
		t.Proto.Protocol == flow.ProtoICMP || t.Proto.Protocol == flow.ProtoICMPv6:
		r.SrcPort = t.Proto.ICMPID
		r.DstPort = uint16(t.Proto.ICMPType)<<8 | uint16(t.Proto.ICMPCode)
	default:
		r.SrcPort = t.Proto.SourcePort
		r.DstPort = t.Proto.DestinationPort
	}
	return r
}

func tupleTo(family, proto uint8, zone uint16, t flow.Tuple) conntrack.Tuple {
	var r conntrack.Tuple
	r.IP.SourceAddress = flow.Addr(family, t.Src)
	r.IP.DestinationAddress = flow.Addr(family, t.Dst)
	r.Proto.Protocol = proto
	r.Zone = zone
	switch proto {
	case flow.ProtoICMP:
		r.Proto.ICMPv4 = true
	case flow.ProtoICMPv6:
		r.Proto.ICMPv6 = true
	}
	if r.Proto.ICMPv4 || r.Proto.ICMPv6 {
		r.Proto.ICMPID = t.SrcPort
		r.Proto.ICMPType = uint8(t.DstPort >> 8)
		r.Proto.ICMPCode = uint8(t.DstPort)
	} else {
		r.Proto.SourcePort = t.SrcPort
		r.Proto.DestinationPort = t.DstPort
	}
	return r
}

// ToConntrack converts a flow into ti-mo/conntrack's form, for lookups,
// updates and deletes. It does not apply the kernel's create rules (status
// bits, liberal TCP, NAT attributes): that is the writer's job.
func ToConntrack(f *flow.Flow) conntrack.Flow {
	var c conntrack.Flow
	c.TupleOrig = tupleTo(f.Family, f.Proto, 0, f.Orig)
	c.TupleReply = tupleTo(f.Family, f.Proto, 0, f.Reply)
	c.Zone = f.Zone
	c.Status = conntrack.Status(f.Status)
	c.Timeout = f.Timeout
	c.Mark = f.Mark
	if f.Proto == flow.ProtoTCP {
		c.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{
			State:               f.TCP.State,
			OriginalWindowScale: f.TCP.WScaleOrig,
			ReplyWindowScale:    f.TCP.WScaleRep,
			OriginalFlags:       tcpFlagsWord(f.TCP.FlagsOrig),
			ReplyFlags:          tcpFlagsWord(f.TCP.FlagsRep),
		}
	}
	if x := f.Extra; x != nil {
		if x.Labels != ([16]byte{}) {
			c.Labels = append([]byte(nil), x.Labels[:]...)
			c.LabelsMask = make([]byte, 16)
			for i := range c.LabelsMask {
				c.LabelsMask[i] = 0xff
			}
		}
		c.Helper.Name = x.Helper
		if f.Proto == flow.ProtoSCTP {
			c.ProtoInfo.SCTP = &conntrack.ProtoInfoSCTP{State: x.SCTP.State, VTagOriginal: x.SCTP.VTagOriginal, VTagReply: x.SCTP.VTagReply}
		}
		if f.Proto == flow.ProtoDCCP {
			c.ProtoInfo.DCCP = &conntrack.ProtoInfoDCCP{State: x.DCCP.State, Role: x.DCCP.Role, HandshakeSeq: x.DCCP.HandshakeSeq}
		}
	}
	return c
}
