package conntrack

import (
	"net/netip"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Flow is one conntrack entry: package flow's compact record, the same the
// daemon caches and replicates.
type Flow = flow.Flow

// Opt is an optional filter value: the zero Opt matches anything.
type Opt[T comparable] struct {
	Value T
	Valid bool
}

// Some returns an Opt holding v.
func Some[T comparable](v T) Opt[T] { return Opt[T]{Value: v, Valid: true} }

// Filter selects flows. The zero Filter matches every flow; each field that
// is set narrows the selection (all of them must match). It is comparable
// and safe to copy.
//
// Addresses are prefixes: 10.0.0.1/32 (or just 10.0.0.1 when parsed) is one
// address, 10.0.0.0/8 a network. An address also fixes the family: an IPv4
// prefix never matches an IPv6 flow.
type Filter struct {
	// Family is flow.FamilyIPv4 or flow.FamilyIPv6; 0 is both.
	Family uint8
	// Proto is the layer 4 protocol number (flow.ProtoTCP, ...); 0 is any.
	Proto uint8

	// OrigSrc, OrigDst, ReplySrc and ReplyDst match the addresses of the
	// original and reply tuples (they differ under NAT).
	OrigSrc, OrigDst, ReplySrc, ReplyDst netip.Prefix

	// Ports of the original and reply tuples. They match only flows of
	// protocols that have ports (TCP, UDP, UDP-Lite, SCTP, DCCP).
	OrigSrcPort, OrigDstPort, ReplySrcPort, ReplyDstPort Opt[uint16]

	// ICMPType, ICMPCode and ICMPID match the original tuple of ICMP and
	// ICMPv6 flows only.
	ICMPType, ICMPCode Opt[uint8]
	ICMPID             Opt[uint16]

	// TCPStates is a set of TCP states, bit s for state s
	// (1<<flow.TCPEstablished, ...); 0 is any. A flow of another protocol
	// never matches a state filter.
	TCPStates uint16

	// Status bits that must all be set (flow.StatusAssured, ...).
	Status uint32

	// Mark matches flows whose mark, masked with MarkMask, equals
	// Mark.Value & MarkMask. A MarkMask of 0 means all bits.
	Mark     Opt[uint32]
	MarkMask uint32

	// Zone matches the conntrack zone.
	Zone Opt[uint16]

	// Labels are connlabel bits that must all be set (bit 0 is the least
	// significant bit of byte 0, as in flow.Extra.Labels).
	Labels [16]byte

	// Helper is the name of the helper assigned to the flow ("ftp").
	Helper string
}

// IsZero reports whether f matches every flow.
func (f *Filter) IsZero() bool { return *f == Filter{} }

// StateBit returns the TCPStates bit of a TCP state.
func StateBit(state uint8) uint16 {
	if state > 15 {
		return 0
	}
	return 1 << state
}

// markMask returns the effective mark mask.
func (f *Filter) markMask() uint32 {
	if f.MarkMask == 0 {
		return ^uint32(0)
	}
	return f.MarkMask
}

// hasPorts reports whether flows of proto carry ports in their tuples.
func hasPorts(proto uint8) bool {
	switch proto {
	case flow.ProtoTCP, flow.ProtoUDP, flow.ProtoUDPLite, flow.ProtoSCTP, flow.ProtoDCCP:
		return true
	}
	return false
}

func isICMP(proto uint8) bool { return proto == flow.ProtoICMP || proto == flow.ProtoICMPv6 }

// prefixFamily returns the flow family of a valid prefix.
func prefixFamily(p netip.Prefix) uint8 {
	if p.Addr().Is4() {
		return flow.FamilyIPv4
	}
	return flow.FamilyIPv6
}

func matchPrefix(p netip.Prefix, family uint8, a [16]byte) bool {
	if !p.IsValid() {
		return true
	}
	if prefixFamily(p) != family {
		return false
	}
	return p.Contains(flow.Addr(family, a))
}

func matchOpt[T comparable](o Opt[T], v T) bool { return !o.Valid || o.Value == v }

// Match reports whether fl is selected by f.
func (f *Filter) Match(fl *Flow) bool {
	if f.Family != 0 && fl.Family != f.Family {
		return false
	}
	if f.Proto != 0 && fl.Proto != f.Proto {
		return false
	}
	if !matchPrefix(f.OrigSrc, fl.Family, fl.Orig.Src) || !matchPrefix(f.OrigDst, fl.Family, fl.Orig.Dst) ||
		!matchPrefix(f.ReplySrc, fl.Family, fl.Reply.Src) || !matchPrefix(f.ReplyDst, fl.Family, fl.Reply.Dst) {
		return false
	}
	if f.OrigSrcPort.Valid || f.OrigDstPort.Valid || f.ReplySrcPort.Valid || f.ReplyDstPort.Valid {
		if !hasPorts(fl.Proto) ||
			!matchOpt(f.OrigSrcPort, fl.Orig.SrcPort) || !matchOpt(f.OrigDstPort, fl.Orig.DstPort) ||
			!matchOpt(f.ReplySrcPort, fl.Reply.SrcPort) || !matchOpt(f.ReplyDstPort, fl.Reply.DstPort) {
			return false
		}
	}
	if f.ICMPType.Valid || f.ICMPCode.Valid || f.ICMPID.Valid {
		if !isICMP(fl.Proto) ||
			!matchOpt(f.ICMPType, uint8(fl.Orig.DstPort>>8)) || !matchOpt(f.ICMPCode, uint8(fl.Orig.DstPort)) ||
			!matchOpt(f.ICMPID, fl.Orig.SrcPort) {
			return false
		}
	}
	if f.TCPStates != 0 && (fl.Proto != flow.ProtoTCP || f.TCPStates&StateBit(fl.TCP.State) == 0) {
		return false
	}
	if fl.Status&f.Status != f.Status {
		return false
	}
	if f.Mark.Valid {
		m := f.markMask()
		if fl.Mark&m != f.Mark.Value&m {
			return false
		}
	}
	if f.Zone.Valid && fl.Zone != f.Zone.Value {
		return false
	}
	if f.Labels != ([16]byte{}) {
		if fl.Extra == nil {
			return false
		}
		for i, b := range f.Labels {
			if fl.Extra.Labels[i]&b != b {
				return false
			}
		}
	}
	if f.Helper != "" && (fl.Extra == nil || fl.Extra.Helper != f.Helper) {
		return false
	}
	return true
}

// family returns the family the filter implies: its own, or that of its
// addresses (0 when it allows both).
func (f *Filter) family() uint8 {
	if f.Family != 0 {
		return f.Family
	}
	for _, p := range []netip.Prefix{f.OrigSrc, f.OrigDst, f.ReplySrc, f.ReplyDst} {
		if p.IsValid() {
			return prefixFamily(p)
		}
	}
	switch f.Proto {
	case flow.ProtoICMP:
		return flow.FamilyIPv4
	case flow.ProtoICMPv6:
		return flow.FamilyIPv6
	}
	return 0
}
