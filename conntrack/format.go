package conntrack

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ctsyncd/ctsyncd/flow"
)

// AppendFlow appends fl as `conntrack -L` prints it, or as `conntrack -L
// -o extended` (the family first) when extended is set, without a
// newline:
//
//	tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=192.0.2.1 sport=40000 dport=22 src=192.0.2.1 dst=10.0.0.1 sport=22 dport=40000 [ASSURED] mark=0 zone=7
//
// conntrack(8) ends the line with use=N, the entry's reference count,
// which the decoder does not keep; it is left out. Labels are printed as
// bit numbers (labels=1,5), which conntrack(8) prints only as names and
// only with a connlabel.conf.
func AppendFlow(b []byte, fl *Flow, extended bool) []byte {
	pad := func(s string, n int) {
		b = append(b, s...)
		for i := len(s); i < n; i++ {
			b = append(b, ' ')
		}
	}
	if extended {
		pad(familyName(fl.Family), 8)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(fl.Family), 10)
		b = append(b, ' ')
	}
	pad(flow.ProtoName(fl.Proto), 8)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(fl.Proto), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(fl.Timeout), 10)
	b = append(b, ' ')
	if fl.Proto == flow.ProtoTCP {
		b = append(b, flow.TCPStateName(fl.TCP.State)...)
		b = append(b, ' ')
	}
	b = appendTuple(b, fl.Family, fl.Proto, &fl.Orig)
	if fl.Status&flow.StatusSeenReply == 0 {
		b = append(b, "[UNREPLIED] "...)
	}
	b = appendTuple(b, fl.Family, fl.Proto, &fl.Reply)
	if fl.Status&flow.StatusAssured != 0 {
		b = append(b, "[ASSURED] "...)
	}
	b = append(b, "mark="...)
	b = strconv.AppendUint(b, uint64(fl.Mark), 10)
	if fl.Zone != 0 {
		b = append(b, " zone="...)
		b = strconv.AppendUint(b, uint64(fl.Zone), 10)
	}
	if fl.Extra != nil && fl.Extra.Helper != "" {
		b = append(b, " helper="...)
		b = append(b, fl.Extra.Helper...)
	}
	if fl.Extra != nil && fl.Extra.Labels != ([16]byte{}) {
		b = append(b, " labels="...)
		b = append(b, labelsString(fl.Extra.Labels)...)
	}
	return b
}

func appendTuple(b []byte, family, proto uint8, t *flow.Tuple) []byte {
	b = append(b, "src="...)
	b = flow.Addr(family, t.Src).AppendTo(b)
	b = append(b, " dst="...)
	b = flow.Addr(family, t.Dst).AppendTo(b)
	b = append(b, ' ')
	switch {
	case isICMP(proto):
		b = append(b, "type="...)
		b = strconv.AppendUint(b, uint64(t.DstPort>>8), 10)
		b = append(b, " code="...)
		b = strconv.AppendUint(b, uint64(t.DstPort&0xff), 10)
		b = append(b, " id="...)
		b = strconv.AppendUint(b, uint64(t.SrcPort), 10)
	case proto == flow.ProtoGRE:
		b = append(b, "srckey=0x"...)
		b = strconv.AppendUint(b, uint64(t.SrcPort), 16)
		b = append(b, " dstkey=0x"...)
		b = strconv.AppendUint(b, uint64(t.DstPort), 16)
	case hasPorts(proto):
		b = append(b, "sport="...)
		b = strconv.AppendUint(b, uint64(t.SrcPort), 10)
		b = append(b, " dport="...)
		b = strconv.AppendUint(b, uint64(t.DstPort), 10)
	default:
		return b
	}
	return append(b, ' ')
}

// FormatFlow returns AppendFlow's line as a string.
func FormatFlow(fl *Flow, extended bool) string { return string(AppendFlow(nil, fl, extended)) }

// KeyString formats a flow key as conntrack(8) options that select it:
// "-p tcp -s 10.0.0.1 -d 192.0.2.1 --sport 40000 --dport 22 -w 7".
func KeyString(k *flow.Key) string {
	var b strings.Builder
	fmt.Fprintf(&b, "-p %s -s %s -d %s", protoString(k.Proto), flow.Addr(k.Family, k.Orig.Src), flow.Addr(k.Family, k.Orig.Dst))
	switch {
	case isICMP(k.Proto):
		fmt.Fprintf(&b, " --icmp-type %d --icmp-code %d --icmp-id %d", k.Orig.DstPort>>8, k.Orig.DstPort&0xff, k.Orig.SrcPort)
	case hasPorts(k.Proto):
		fmt.Fprintf(&b, " --sport %d --dport %d", k.Orig.SrcPort, k.Orig.DstPort)
	}
	if k.Zone != 0 {
		fmt.Fprintf(&b, " -w %d", k.Zone)
	}
	return b.String()
}

// Key returns the flow key that a filter names completely, as `conntrack
// -G` and `-D` with a full tuple take it: single original source and
// destination addresses, the protocol, both ports (or the ICMP type, code
// and id), and the zone (0 when not set).
func (f *Filter) Key() (flow.Key, error) {
	var k flow.Key
	missing := func(opt string) error {
		return &OptionError{Option: opt, Err: fmt.Errorf("%w: a flow is named by -s, -d, -p and its ports (or --icmp-type, --icmp-code, --icmp-id)", ErrMissingValue)}
	}
	if !f.OrigSrc.IsValid() || !f.OrigSrc.IsSingleIP() {
		return k, missing("--orig-src")
	}
	if !f.OrigDst.IsValid() || !f.OrigDst.IsSingleIP() {
		return k, missing("--orig-dst")
	}
	if f.Proto == 0 {
		return k, missing("--proto")
	}
	k.Family = prefixFamily(f.OrigSrc)
	k.Proto = f.Proto
	k.Orig.Src = flow.AddrFrom(f.OrigSrc.Addr())
	k.Orig.Dst = flow.AddrFrom(f.OrigDst.Addr())
	switch {
	case isICMP(f.Proto):
		if !f.ICMPType.Valid {
			return k, missing("--icmp-type")
		}
		if !f.ICMPCode.Valid {
			return k, missing("--icmp-code")
		}
		if !f.ICMPID.Valid {
			return k, missing("--icmp-id")
		}
		k.Orig.SrcPort = f.ICMPID.Value
		k.Orig.DstPort = uint16(f.ICMPType.Value)<<8 | uint16(f.ICMPCode.Value)
	case hasPorts(f.Proto):
		if !f.OrigSrcPort.Valid {
			return k, missing("--orig-port-src")
		}
		if !f.OrigDstPort.Valid {
			return k, missing("--orig-port-dst")
		}
		k.Orig.SrcPort, k.Orig.DstPort = f.OrigSrcPort.Value, f.OrigDstPort.Value
	}
	if f.Zone.Valid {
		k.Zone = f.Zone.Value
	}
	return k, nil
}

// FlowFrom builds the flow that `conntrack -I` would create from the same
// options: the original tuple as Key requires it; the reply tuple from
// -r, -q, --reply-port-src and --reply-port-dst, each defaulting to the
// inverse of the original (a different one means NAT); the TCP state
// (--state, one state, required for TCP); the status bits (-u); the mark
// (-m, without a mask); labels (-l); the helper; and timeout seconds.
func FlowFrom(spec Filter, timeout uint32) (Flow, error) {
	var fl Flow
	k, err := spec.Key()
	if err != nil {
		return fl, err
	}
	fl.Key = k
	fl.Timeout = timeout
	fl.Reply = k.Orig.Invert(k.Proto)
	setAddr := func(dst *[16]byte, p netip.Prefix, opt string) error {
		if !p.IsValid() {
			return nil
		}
		if !p.IsSingleIP() || prefixFamily(p) != k.Family {
			return &OptionError{Option: opt, Value: p.String(), Err: fmt.Errorf("%w: one address of the original tuple's family", ErrBadValue)}
		}
		*dst = flow.AddrFrom(p.Addr())
		return nil
	}
	if err := setAddr(&fl.Reply.Src, spec.ReplySrc, "--reply-src"); err != nil {
		return fl, err
	}
	if err := setAddr(&fl.Reply.Dst, spec.ReplyDst, "--reply-dst"); err != nil {
		return fl, err
	}
	if spec.ReplySrcPort.Valid {
		fl.Reply.SrcPort = spec.ReplySrcPort.Value
	}
	if spec.ReplyDstPort.Valid {
		fl.Reply.DstPort = spec.ReplyDstPort.Value
	}
	if k.Proto == flow.ProtoTCP {
		st := spec.TCPStates
		if st == 0 || st&(st-1) != 0 {
			return fl, &OptionError{Option: "--state", Err: fmt.Errorf("%w: a TCP flow needs one --state", ErrMissingValue)}
		}
		for s := uint8(0); s < 16; s++ {
			if st == StateBit(s) {
				fl.TCP.State = s
			}
		}
	}
	fl.Status = spec.Status
	if spec.Mark.Valid {
		if spec.MarkMask != 0 {
			return fl, &OptionError{Option: "--mark", Value: strconv.FormatUint(uint64(spec.Mark.Value), 10), Err: fmt.Errorf("%w: a new flow's mark takes no mask", ErrBadValue)}
		}
		fl.Mark = spec.Mark.Value
	}
	if spec.Labels != ([16]byte{}) || spec.Helper != "" {
		fl.Extra = &flow.Extra{Labels: spec.Labels, Helper: spec.Helper}
	}
	return fl, nil
}
