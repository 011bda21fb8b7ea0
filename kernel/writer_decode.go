package kernel

import (
	"encoding/binary"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Attribute walking shared by decodeFlow (decode.go), which reads events,
// dumps and the entries the writer's commit reads back, without the
// allocations of ti-mo's decoder.

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
