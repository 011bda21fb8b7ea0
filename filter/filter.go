// Package filter decides which flows a node caches and replicates: by
// protocol, by TCP state, and by address — a flow is ignored when its
// original source or its reply source is an ignored address (traffic the
// firewall itself originates or answers), as conntrackd's address filter
// does, so forwarded flows NATed to a virtual IP still replicate — and by
// the exclusions of Exclude: original destination port ranges, marks under a
// mask, zones and helpers.
//
// The node's own addresses are ignored the same way; the set is replaced
// whole with SetOwn as addresses come and go. Match is safe for concurrent
// use with SetOwn.
package filter

import (
	"net/netip"
	"sync/atomic"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Filter is an immutable rule set plus the node's current own addresses.
type Filter struct {
	protos   [256]bool
	states   [16]bool
	prefixes []netip.Prefix
	ex       Exclude
	own      atomic.Pointer[map[netip.Addr]struct{}]
}

// PortRange is an inclusive range of ports.
type PortRange struct{ Lo, Hi uint16 }

// MarkMask matches a flow whose mark&Mask equals Value.
type MarkMask struct{ Value, Mask uint32 }

// Exclude lists flows that are not replicated although the protocol, state
// and address rules accept them. The zero value excludes nothing.
type Exclude struct {
	// Ports are original destination ports; they apply to the protocols
	// with ports (TCP, UDP, UDP-Lite, SCTP, DCCP), not to ICMP or GRE.
	Ports   []PortRange
	Marks   []MarkMask
	Zones   []uint16
	Helpers []string
}

// New builds a filter. An empty protos or states list allows all.
func New(protos, tcpStates []uint8, ignore []netip.Prefix, ex Exclude) *Filter {
	f := &Filter{prefixes: ignore, ex: ex}
	for _, p := range protos {
		f.protos[p] = true
	}
	if len(protos) == 0 {
		for i := range f.protos {
			f.protos[i] = true
		}
	}
	for _, s := range tcpStates {
		if int(s) < len(f.states) {
			f.states[s] = true
		}
	}
	if len(tcpStates) == 0 {
		for i := range f.states {
			f.states[i] = true
		}
	}
	empty := map[netip.Addr]struct{}{}
	f.own.Store(&empty)
	return f
}

// SetOwn replaces the set of the node's own addresses.
func (f *Filter) SetOwn(addrs []netip.Addr) {
	m := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		m[a.Unmap()] = struct{}{}
	}
	f.own.Store(&m)
}

// Own returns the node's own addresses as the filter knows them.
func (f *Filter) Own() []netip.Addr {
	m := *f.own.Load()
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	return out
}

// Match reports whether fl is to be cached and replicated.
func (f *Filter) Match(fl *flow.Flow) bool {
	if !f.protos[fl.Proto] {
		return false
	}
	if fl.Proto == flow.ProtoTCP && int(fl.TCP.State) < len(f.states) && !f.states[fl.TCP.State] {
		return false
	}
	if f.excluded(fl) {
		return false
	}
	return !f.ignored(fl.SrcAddr()) && !f.ignored(fl.ReplySrcAddr())
}

// hasPorts reports whether proto's tuples carry ports.
func hasPorts(proto uint8) bool {
	switch proto {
	case flow.ProtoTCP, flow.ProtoUDP, flow.ProtoUDPLite, flow.ProtoSCTP, flow.ProtoDCCP:
		return true
	}
	return false
}

func (f *Filter) excluded(fl *flow.Flow) bool {
	ex := &f.ex
	if len(ex.Ports) > 0 && hasPorts(fl.Proto) {
		p := fl.Orig.DstPort
		for _, r := range ex.Ports {
			if r.Lo <= p && p <= r.Hi {
				return true
			}
		}
	}
	for _, m := range ex.Marks {
		if fl.Mark&m.Mask == m.Value {
			return true
		}
	}
	for _, z := range ex.Zones {
		if fl.Zone == z {
			return true
		}
	}
	if len(ex.Helpers) > 0 && fl.Extra != nil && fl.Extra.Helper != "" {
		for _, h := range ex.Helpers {
			if fl.Extra.Helper == h {
				return true
			}
		}
	}
	return false
}

func (f *Filter) ignored(a netip.Addr) bool {
	if _, ok := (*f.own.Load())[a]; ok {
		return true
	}
	for _, p := range f.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
