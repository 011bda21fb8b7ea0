// Package peerpolicy decides what a peer may put into this node's kernel:
// the flows a peer replicates pass it before they enter the external cache
// (sync.Options.Policy) and again when they are committed. A peer holds the
// cluster key, but a key stolen from one firewall, or a peer that is
// compromised or buggy, must not be able to program this node's conntrack
// table with anything the node would not create itself.
//
// A flow is refused when this node's own filter would not replicate it
// (the filter the node applies to its own flows, own addresses included),
// when it names a helper not on the allow-list (none by default: list the
// helpers this node itself uses, e.g. "ftp", "sip"), or when a mode below
// refuses it. An admitted flow is sanitized: status bits a replicated flow
// has no business carrying (FIXED_TIMEOUT, DYING, TEMPLATE, UNTRACKED,
// OFFLOAD, HW_OFFLOAD, unknown ones, and HELPER on a flow without an
// allowed helper) are cleared, and its
// timeout is capped per protocol and state at Linux's default timeout for
// that state times TimeoutFactor.
//
// Concurrency: a Policy is immutable after New, apart from the filter it
// holds (safe for concurrent use itself); Admit is safe to call from many
// goroutines.
package peerpolicy

import (
	"fmt"
	"slices"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Mode says what happens to a flow that has an attribute (a mark, labels,
// a zone, NAT).
type Mode uint8

// Modes. Not every attribute has every mode: a zone is part of a flow's
// identity and cannot be stripped.
const (
	Allow   Mode = iota // kept as is (the default)
	Strip               // cleared (marks and labels only)
	Refuse              // a flow that has it is refused
	Require             // a flow that lacks it is refused
)

var modeNames = [...]string{Allow: "allow", Strip: "strip", Refuse: "refuse", Require: "require"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode parses a mode name; strip is allowed only when strippable.
func ParseMode(s string, strippable bool) (Mode, error) {
	for i, n := range modeNames {
		if n == s && (Mode(i) != Strip || strippable) {
			return Mode(i), nil
		}
	}
	if strippable {
		return 0, fmt.Errorf("%q is not one of allow, strip, refuse, require", s)
	}
	return 0, fmt.Errorf("%q is not one of allow, refuse, require", s)
}

// Matcher is the local filter (package filter): whether this node would
// replicate a flow of its own.
type Matcher interface {
	Match(f *flow.Flow) bool
}

// Options configure a Policy. The zero value allows marks, labels, zones
// and NAT, no helper, and caps timeouts at Linux's defaults.
type Options struct {
	// Filter, when set, must match a peer's flow for it to be admitted.
	Filter Matcher
	// Helpers are the helper names a peer's flow may carry; none by
	// default.
	Helpers []string
	// Mark, Labels, Zone and NAT say what to do with flows that carry a
	// mark, labels, a zone other than 0, or NAT.
	Mark, Labels, Zone, NAT Mode
	// TimeoutFactor multiplies the per-state timeout caps (for kernels
	// whose timeouts were raised); 0 means 1.
	TimeoutFactor uint32
	// KeepFixedTimeout keeps the FIXED_TIMEOUT status bit (a flow that
	// never expires by traffic); cleared by default.
	KeepFixedTimeout bool
}

// Policy is a receive policy; see the package documentation.
type Policy struct {
	opt Options
}

// New returns the policy of opt.
func New(opt Options) (*Policy, error) {
	if opt.Zone == Strip {
		return nil, fmt.Errorf("peer policy: a zone cannot be stripped")
	}
	if opt.TimeoutFactor == 0 {
		opt.TimeoutFactor = 1
	}
	opt.Helpers = slices.Clone(opt.Helpers)
	return &Policy{opt: opt}, nil
}

// allowedStatus are the status bits a replicated flow may carry.
const allowedStatus = flow.StatusExpected | flow.StatusSeenReply | flow.StatusAssured | flow.StatusConfirmed |
	flow.StatusSrcNAT | flow.StatusDstNAT | flow.StatusSeqAdjust | flow.StatusSrcNATDone | flow.StatusDstNATDone

// Admit reports whether origin's flow f may enter this node, sanitizing f
// in place. A removal needs no admission.
func (p *Policy) Admit(origin string, f *flow.Flow) bool {
	return p.Check(f) == nil
}

// Check is Admit with the reason of a refusal.
func (p *Policy) Check(f *flow.Flow) error {
	o := &p.opt
	if o.Filter != nil && !o.Filter.Match(f) {
		return fmt.Errorf("not replicated by this node's filter")
	}
	if err := o.Zone.check("zone", f.Zone != 0); err != nil {
		return err
	}
	if err := o.NAT.check("NAT", f.NATed() || f.Status&(flow.StatusSrcNAT|flow.StatusDstNAT) != 0); err != nil {
		return err
	}
	if err := o.Mark.check("mark", f.Mark != 0); err != nil {
		return err
	}
	var labels bool
	if f.Extra != nil {
		labels = f.Extra.Labels != [16]byte{}
	}
	if err := o.Labels.check("labels", labels); err != nil {
		return err
	}
	if f.Extra != nil && f.Extra.Helper != "" && !slices.Contains(o.Helpers, f.Extra.Helper) {
		return fmt.Errorf("helper %q not allowed", f.Extra.Helper)
	}
	// Admitted: sanitize. Extra may be shared with the sender's copy in
	// tests; it is copied before a change.
	if o.Mark == Strip {
		f.Mark = 0
	}
	if o.Labels == Strip && labels {
		x := *f.Extra
		x.Labels = [16]byte{}
		f.Extra = &x
	}
	keep := allowedStatus
	if o.KeepFixedTimeout {
		keep |= flow.StatusFixedTimeout
	}
	if f.Extra != nil && f.Extra.Helper != "" {
		keep |= flow.StatusHelper // the helper passed the allow-list above
	}
	f.Status &= keep
	if c := timeoutCap(f) * uint64(o.TimeoutFactor); uint64(f.Timeout) > c {
		f.Timeout = uint32(min(c, 1<<32-1))
	}
	return nil
}

func (m Mode) check(what string, has bool) error {
	switch {
	case m == Refuse && has:
		return fmt.Errorf("%s refused", what)
	case m == Require && !has:
		return fmt.Errorf("%s required", what)
	}
	return nil
}

// Linux's default timeouts, in seconds (nf_conntrack_*_timeout*).
var tcpTimeouts = [...]uint64{
	flow.TCPNone:        120,
	flow.TCPSynSent:     120,
	flow.TCPSynRecv:     60,
	flow.TCPEstablished: 5 * 24 * 3600,
	flow.TCPFinWait:     120,
	flow.TCPCloseWait:   60,
	flow.TCPLastAck:     30,
	flow.TCPTimeWait:    120,
	flow.TCPClose:       10,
	flow.TCPSynSent2:    120,
}

// sctpEstablished is the longest SCTP timeout (ESTABLISHED, 210 s); the
// other SCTP and DCCP states are capped by their protocol's longest.
const (
	sctpMax    = 210
	dccpMax    = 12 * 3600 // DCCP OPEN: 12 hours
	udpStream  = 180       // assured UDP (nf_conntrack_udp_timeout_stream, 180 s on older kernels)
	udpMax     = 30
	icmpMax    = 30
	greStream  = 180
	genericMax = 600
)

// timeoutCap returns the cap of f's timeout at factor 1.
func timeoutCap(f *flow.Flow) uint64 {
	switch f.Proto {
	case flow.ProtoTCP:
		if int(f.TCP.State) < len(tcpTimeouts) {
			return tcpTimeouts[f.TCP.State]
		}
		return tcpTimeouts[flow.TCPNone]
	case flow.ProtoUDP, flow.ProtoUDPLite:
		if f.Status&flow.StatusAssured != 0 {
			return udpStream
		}
		return udpMax
	case flow.ProtoICMP, flow.ProtoICMPv6:
		return icmpMax
	case flow.ProtoSCTP:
		return sctpMax
	case flow.ProtoDCCP:
		return dccpMax
	case flow.ProtoGRE:
		return greStream
	}
	return genericMax
}
