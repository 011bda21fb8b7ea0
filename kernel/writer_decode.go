package kernel

import (
	"encoding/binary"

	"github.com/mdlayher/netlink"

	"github.com/ctsyncd/ctsyncd/flow"
)

// The writer's commit reads back every entry that already exists, to
// compare its reply tuple and NAT with the flow to write. Decoding those
// replies with ti-mo (a full Flow, allocations per attribute) cost as much
// CPU as the kernel's own work on a large fail-back; decodeExisting reads
// only what the comparison needs, without allocating.

// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const nlaTypeMask = ^uint16(nlaFNested | nlaFNetByteorder)

// nextAttr splits the first attribute off b. ok is false at the end or on a
// malformed attribute.
func nextAttr(b []byte) (typ uint16, payload, rest []byte, ok bool) {
	if len(b) < 4 {
		return 0, nil, nil, false
	}
	l := int(binary.NativeEndian.Uint16(b[0:2]))
	if l < 4 || l > len(b) {
		return 0, nil, nil, false
	}
	typ = binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
	adv := min((l+3)&^3, len(b))
	return typ, b[4:l], b[adv:], true
}

// decodeExisting decodes the original and reply tuples, protocol, zone and
// status of a conntrack message (a GET's answer) into f. Other fields of f
// are left alone.
func decodeExisting(m netlink.Message, f *flow.Flow) bool {
	if len(m.Data) < 4 {
		return false
	}
	f.Family = m.Data[0]
	f.Zone = 0
	var haveOrig, haveReply bool
	for b := m.Data[4:]; len(b) > 0; {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return false
		}
		b = rest
		switch typ {
		case ctaTupleOrig:
			haveOrig = decodeTuple(p, &f.Orig, &f.Proto)
		case ctaTupleReply:
			var proto uint8
			haveReply = decodeTuple(p, &f.Reply, &proto)
		case ctaStatus:
			if len(p) >= 4 {
				f.Status = binary.BigEndian.Uint32(p)
			}
		case ctaZone:
			if len(p) >= 2 {
				f.Zone = binary.BigEndian.Uint16(p)
			}
		}
	}
	return haveOrig && haveReply
}

func decodeTuple(b []byte, t *flow.Tuple, proto *uint8) bool {
	*t = flow.Tuple{}
	var haveIP bool
	for len(b) > 0 {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return false
		}
		b = rest
		switch typ {
		case ctaTupleIP:
			haveIP = decodeIP(p, t)
		case ctaTupleProto:
			decodeProto(p, t, proto)
		}
	}
	return haveIP
}

func decodeIP(b []byte, t *flow.Tuple) bool {
	n := 0
	for len(b) > 0 {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return false
		}
		b = rest
		switch typ {
		case ctaIPv4Src, ctaIPv6Src:
			copy(t.Src[:], p)
			n++
		case ctaIPv4Dst, ctaIPv6Dst:
			copy(t.Dst[:], p)
			n++
		}
	}
	return n == 2
}

func decodeProto(b []byte, t *flow.Tuple, proto *uint8) {
	for len(b) > 0 {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return
		}
		b = rest
		switch {
		case typ == ctaProtoNum && len(p) >= 1:
			*proto = p[0]
		case (typ == ctaProtoSrcPort || typ == ctaProtoICMPID || typ == ctaProtoICMPv6ID) && len(p) >= 2:
			t.SrcPort = binary.BigEndian.Uint16(p)
		case typ == ctaProtoDstPort && len(p) >= 2:
			t.DstPort = binary.BigEndian.Uint16(p)
		case (typ == ctaProtoICMPType || typ == ctaProtoICMPv6Ty) && len(p) >= 1:
			t.DstPort = uint16(p[0])<<8 | t.DstPort&0xff
		case (typ == ctaProtoICMPCode || typ == ctaProtoICMPv6Co) && len(p) >= 1:
			t.DstPort = t.DstPort&0xff00 | uint16(p[0])
		}
	}
}
