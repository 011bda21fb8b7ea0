package kernel

import (
	"github.com/ctsyncd/ctsyncd/flow"
)

// natRange is one CTA_NAT_SRC or CTA_NAT_DST: a single address and, for
// protocols with ports (or an ICMP id), a single port.
type natRange struct {
	ok      bool
	addr    [16]byte
	port    uint16
	hasPort bool
}

// natPorts reports whether NAT of proto maps ports (CTA_PROTONAT_PORT_*
// carries the port, or for ICMP the echo id).
func natPorts(proto uint8) bool {
	switch proto {
	case flow.ProtoTCP, flow.ProtoUDP, flow.ProtoUDPLite, flow.ProtoSCTP, flow.ProtoDCCP,
		flow.ProtoICMP, flow.ProtoICMPv6:
		return true
	}
	return false
}

// natOf derives the NAT to request for f from its reply tuple:
//
//   - SNAT when the reply's destination differs from the original source
//     (address or port): the kernel maps the source to reply.Dst:DstPort.
//   - DNAT when the reply's source differs from the original destination:
//     the kernel maps the destination to reply.Src:SrcPort.
//
// A flow whose status carries SRC_NAT or DST_NAT gets that NAT even when it
// maps to the same address (a null mapping), so that the committed entry
// has the same NAT status bits. For ICMP the id lives in SrcPort of both
// tuples; a changed id is requested with the SNAT (or the DNAT when only
// the destination is translated).
func natOf(f *flow.Flow) (src, dst natRange) {
	o, r := &f.Orig, &f.Reply
	ports := natPorts(f.Proto)
	icmp := f.Proto == flow.ProtoICMP || f.Proto == flow.ProtoICMPv6
	if icmp {
		idChanged := r.SrcPort != o.SrcPort
		src.ok = r.Dst != o.Src || f.Status&flow.StatusSrcNAT != 0
		dst.ok = r.Src != o.Dst || f.Status&flow.StatusDstNAT != 0
		if idChanged && !src.ok && !dst.ok {
			src.ok = true
		}
		src.addr, src.port, src.hasPort = r.Dst, r.SrcPort, true
		dst.addr, dst.port, dst.hasPort = r.Src, r.SrcPort, true
		return src, dst
	}
	src.ok = r.Dst != o.Src || (ports && r.DstPort != o.SrcPort) || f.Status&flow.StatusSrcNAT != 0
	dst.ok = r.Src != o.Dst || (ports && r.SrcPort != o.DstPort) || f.Status&flow.StatusDstNAT != 0
	src.addr, src.port, src.hasPort = r.Dst, r.DstPort, ports
	dst.addr, dst.port, dst.hasPort = r.Src, r.SrcPort, ports
	return src, dst
}

// natStatus is the NAT status the kernel will set for f when created by
// appendCreate (IPS_SRC_NAT / IPS_DST_NAT).
func natStatus(f *flow.Flow) uint32 {
	src, dst := natOf(f)
	var s uint32
	if src.ok {
		s |= flow.StatusSrcNAT
	}
	if dst.ok {
		s |= flow.StatusDstNAT
	}
	return s
}

// sameNAT reports whether the kernel's existing entry cur already has the
// reply tuple and NAT that committing f would give it; if not, the entry
// must be deleted and created anew, as update cannot change NAT.
func sameNAT(f, cur *flow.Flow) bool {
	const natBits = flow.StatusSrcNAT | flow.StatusDstNAT
	return cur.Key == f.Key && cur.Reply == f.Reply && cur.Status&natBits == natStatus(f)
}

// nat encodes a CTA_NAT_SRC or CTA_NAT_DST.
func (e *msgEncoder) nat(typ uint16, family uint8, r *natRange) {
	n := e.nest(typ)
	if family == flow.FamilyIPv4 {
		e.bytes(ctaNATV4MinIP, r.addr[:4])
		e.bytes(ctaNATV4MaxIP, r.addr[:4])
	} else {
		e.bytes(ctaNATV6MinIP, r.addr[:])
		e.bytes(ctaNATV6MaxIP, r.addr[:])
	}
	if r.hasPort {
		p := e.nest(ctaNATProto)
		e.be16(ctaProtoNATPortMin, r.port)
		e.be16(ctaProtoNATPortMax, r.port)
		e.unnest(p)
	}
	e.unnest(n)
}
