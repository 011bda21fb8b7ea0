package kernel

import (
	"context"
	"encoding/binary"
	"strconv"
	"strings"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Attributes of a filtered dump (enum ctattr_type, enum ctattr_filter).
const (
	ctaMarkMask         = 21 // CTA_MARK_MASK
	ctaFilter           = 25 // CTA_FILTER
	ctaStatusMask       = 26 // CTA_STATUS_MASK
	ctaFilterOrigFlags  = 1  // CTA_FILTER_ORIG_FLAGS
	ctaFilterReplyFlags = 2  // CTA_FILTER_REPLY_FLAGS
)

// Flags of CTA_FILTER_ORIG_FLAGS and CTA_FILTER_REPLY_FLAGS
// (CTA_FILTER_F_*): which fields of the tuple the kernel compares.
const (
	FilterIPSrc      uint32 = 1 << 0  // CTA_FILTER_F_CTA_IP_SRC
	FilterIPDst      uint32 = 1 << 1  // CTA_FILTER_F_CTA_IP_DST
	FilterProtoNum   uint32 = 1 << 3  // CTA_FILTER_F_CTA_PROTO_NUM
	FilterSrcPort    uint32 = 1 << 4  // CTA_FILTER_F_CTA_PROTO_SRC_PORT
	FilterDstPort    uint32 = 1 << 5  // CTA_FILTER_F_CTA_PROTO_DST_PORT
	FilterICMPType   uint32 = 1 << 6  // CTA_FILTER_F_CTA_PROTO_ICMP_TYPE
	FilterICMPCode   uint32 = 1 << 7  // CTA_FILTER_F_CTA_PROTO_ICMP_CODE
	FilterICMPID     uint32 = 1 << 8  // CTA_FILTER_F_CTA_PROTO_ICMP_ID
	FilterICMPv6Type uint32 = 1 << 9  // CTA_FILTER_F_CTA_PROTO_ICMPV6_TYPE
	FilterICMPv6Code uint32 = 1 << 10 // CTA_FILTER_F_CTA_PROTO_ICMPV6_CODE
	FilterICMPv6ID   uint32 = 1 << 11 // CTA_FILTER_F_CTA_PROTO_ICMPV6_ID

	filterIP    = FilterIPSrc | FilterIPDst
	filterProto = FilterSrcPort | FilterDstPort | FilterICMPType | FilterICMPCode | FilterICMPID |
		FilterICMPv6Type | FilterICMPv6Code | FilterICMPv6ID
)

// TupleFilter is one direction of a CTA_FILTER: the kernel compares the
// fields Flags names (exact values) with the entry's tuple. Ports and ICMP
// fields need FilterProtoNum; addresses need the dump's Family.
type TupleFilter struct {
	Flags uint32
	Proto uint8
	Tuple flow.Tuple // addresses, ports; ICMP id in SrcPort, type<<8|code in DstPort
}

// DumpFilter is what a dump asks the kernel to filter. The kernel applies
// only what it supports (see FilterSupport); the caller must check the
// flows it gets again.
type DumpFilter struct {
	// Family is flow.FamilyIPv4 or flow.FamilyIPv6; 0 both.
	Family uint8
	// HasMark: entries whose mark & MarkMask equals Mark & MarkMask.
	HasMark        bool
	Mark, MarkMask uint32
	// Status: entries with all these status bits set; 0 none.
	Status uint32
	// HasZone: entries of Zone. The kernel cannot filter zone 0 (the
	// default zone); that one is dropped from the request.
	HasZone bool
	Zone    uint16
	// Orig and Reply are the tuple filters (CTA_FILTER).
	Orig, Reply TupleFilter
}

// FilterSupport says which dump filters the running kernel applies.
type FilterSupport struct {
	Mark   bool // CTA_MARK, CTA_MARK_MASK: Linux 3.1
	Family bool // nfgenmsg family honoured: Linux 4.20
	Tuple  bool // CTA_FILTER: Linux 5.10
	Status bool // CTA_STATUS, CTA_STATUS_MASK: Linux 5.15
	Zone   bool // CTA_ZONE: Linux 6.8
}

var (
	supportOnce sync.Once
	support     FilterSupport
)

// ProbeFilterSupport reports the dump filters of the running kernel, read
// from its release (uname) once per process. A kernel that predates an
// attribute ignores it, so a wrong guess costs speed, never correctness,
// as long as callers check the flows again.
func ProbeFilterSupport() FilterSupport {
	supportOnce.Do(func() {
		var u unix.Utsname
		if unix.Uname(&u) != nil {
			return
		}
		support = filterSupportOf(unix.ByteSliceToString(u.Release[:]))
	})
	return support
}

// filterSupportOf derives FilterSupport from a kernel release such as
// "6.8.0-45-generic".
func filterSupportOf(release string) FilterSupport {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return FilterSupport{}
	}
	major, err1 := strconv.Atoi(parts[0])
	minorStr := parts[1]
	if i := strings.IndexFunc(minorStr, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minorStr = minorStr[:i]
	}
	minor, err2 := strconv.Atoi(minorStr)
	if err1 != nil || err2 != nil {
		return FilterSupport{}
	}
	atLeast := func(ma, mi int) bool { return major > ma || major == ma && minor >= mi }
	return FilterSupport{
		Mark:   atLeast(3, 1),
		Family: atLeast(4, 20),
		Tuple:  atLeast(5, 10),
		Status: atLeast(5, 15),
		Zone:   atLeast(6, 8),
	}
}

// appendDumpRequest appends a dump request carrying the parts of df that
// sup says the kernel applies.
func appendDumpRequest(b []byte, df *DumpFilter, sup FilterSupport, seq uint32) []byte {
	family := uint8(unix.AF_UNSPEC)
	if sup.Family && df.Family != 0 {
		family = df.Family
	}
	e := msgEncoder{b}
	m := e.begin(ctType(msgCTGet), netlink.Request|netlink.Dump, seq, family)
	if sup.Mark && df.HasMark {
		mask := df.MarkMask
		if mask == 0 {
			mask = ^uint32(0)
		}
		e.be32(ctaMark, df.Mark&mask)
		e.be32(ctaMarkMask, mask)
	}
	if sup.Status && df.Status != 0 {
		e.be32(ctaStatus, df.Status)
		e.be32(ctaStatusMask, df.Status)
	}
	if sup.Zone && df.HasZone && df.Zone != 0 {
		e.be16(ctaZone, df.Zone)
	}
	if sup.Tuple {
		of, rf := tupleFlags(&df.Orig, family), tupleFlags(&df.Reply, family)
		if of != 0 || rf != 0 {
			if of != 0 {
				e.filterTuple(ctaTupleOrig, family, &df.Orig, of)
			}
			if rf != 0 {
				e.filterTuple(ctaTupleReply, family, &df.Reply, rf)
			}
			n := e.nest(ctaFilter)
			e.u32(ctaFilterOrigFlags, of)
			e.u32(ctaFilterReplyFlags, rf)
			e.unnest(n)
		}
	}
	e.end(m)
	return e.b
}

// tupleFlags returns the flags of t the kernel can apply in a dump of
// family: addresses only with a family, protocol fields only with the
// protocol number.
func tupleFlags(t *TupleFilter, family uint8) uint32 {
	f := t.Flags
	if family != flow.FamilyIPv4 && family != flow.FamilyIPv6 {
		return 0 // the kernel refuses CTA_FILTER without a family
	}
	if f&FilterProtoNum == 0 {
		f &^= filterProto
	}
	return f
}

// filterTuple encodes the tuple of a CTA_FILTER direction: only the
// attributes its flags name.
func (e *msgEncoder) filterTuple(typ uint16, family uint8, t *TupleFilter, flags uint32) {
	n := e.nest(typ)
	if flags&filterIP != 0 {
		ip := e.nest(ctaTupleIP)
		if family == flow.FamilyIPv4 {
			if flags&FilterIPSrc != 0 {
				e.bytes(ctaIPv4Src, t.Tuple.Src[:4])
			}
			if flags&FilterIPDst != 0 {
				e.bytes(ctaIPv4Dst, t.Tuple.Dst[:4])
			}
		} else {
			if flags&FilterIPSrc != 0 {
				e.bytes(ctaIPv6Src, t.Tuple.Src[:])
			}
			if flags&FilterIPDst != 0 {
				e.bytes(ctaIPv6Dst, t.Tuple.Dst[:])
			}
		}
		e.unnest(ip)
	}
	if flags&FilterProtoNum != 0 {
		p := e.nest(ctaTupleProto)
		e.u8(ctaProtoNum, t.Proto)
		if flags&FilterSrcPort != 0 {
			e.be16(ctaProtoSrcPort, t.Tuple.SrcPort)
		}
		if flags&FilterDstPort != 0 {
			e.be16(ctaProtoDstPort, t.Tuple.DstPort)
		}
		if flags&FilterICMPID != 0 {
			e.be16(ctaProtoICMPID, t.Tuple.SrcPort)
		}
		if flags&FilterICMPType != 0 {
			e.u8(ctaProtoICMPType, uint8(t.Tuple.DstPort>>8))
		}
		if flags&FilterICMPCode != 0 {
			e.u8(ctaProtoICMPCode, uint8(t.Tuple.DstPort))
		}
		if flags&FilterICMPv6ID != 0 {
			e.be16(ctaProtoICMPv6ID, t.Tuple.SrcPort)
		}
		if flags&FilterICMPv6Type != 0 {
			e.u8(ctaProtoICMPv6Ty, uint8(t.Tuple.DstPort>>8))
		}
		if flags&FilterICMPv6Code != 0 {
			e.u8(ctaProtoICMPv6Co, uint8(t.Tuple.DstPort))
		}
		e.unnest(p)
	}
	e.unnest(n)
}

// u32 encodes a host-order 32-bit attribute (NLA_U32).
func (e *msgEncoder) u32(typ uint16, v uint32) {
	e.hdr(typ, 4)
	e.b = binary.NativeEndian.AppendUint32(e.b, v)
}

// DumpFiltered streams the entries of the table at netns (a namespace file
// descriptor, 0 for the calling thread's) to fn, asking the kernel to
// filter them as df says where it can (ProbeFilterSupport); entries that
// do not match df may still come and must be checked by the caller. f is
// reused after fn returns; an error from fn ends the dump and is returned.
//
// The kernel refuses (EOPNOTSUPP) a tuple filter in a dump of both
// families: such a dump is run as one dump per family.
func DumpFiltered(ctx context.Context, netns int, df DumpFilter, fn func(f *flow.Flow) error) error {
	var f flow.Flow
	sup := ProbeFilterSupport()
	families := []uint8{df.Family}
	if sup.Tuple && sup.Family && df.Family == 0 && (df.Orig.Flags|df.Reply.Flags)&^filterIP != 0 {
		families = []uint8{flow.FamilyIPv4, flow.FamilyIPv6}
	}
	for _, fam := range families {
		d := df
		d.Family = fam
		req := appendDumpRequest(nil, &d, sup, dumpSeq)
		err := dumpOn(ctx, netns, "dump", req, func(m netlink.Message) error {
			if !decodeFlow(m, &f) {
				return &OpError{Op: "dump", Err: ErrMalformed}
			}
			return fn(&f)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// dumpSeq is the sequence number of a dump on a socket of its own.
const dumpSeq = 1

// dumpOn sends the dump request req (sequence number dumpSeq) on a socket
// of its own in netns and passes each answer to fn until NLMSG_DONE; the
// messages' data alias the socket buffer. An error from fn ends the dump
// and is returned.
func dumpOn(ctx context.Context, netns int, op string, req []byte, fn func(m netlink.Message) error) error {
	s, err := dialNetfilter(netns, 0)
	if err != nil {
		return err
	}
	defer s.close()
	stop := context.AfterFunc(ctx, func() { s.close() })
	defer stop()
	_ = s.setReadBuffer(8 << 20)

	if err := sendRaw(s, req); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &OpError{Op: op, Err: err}
	}
	var (
		done bool
		ferr error
	)
	handle := func(m netlink.Message) error {
		if m.Header.Sequence != dumpSeq || done {
			return nil
		}
		switch m.Header.Type {
		case netlink.Done:
			done = true
			return nil
		case netlink.Error:
			if e := errnoOf(m); e != 0 {
				return &OpError{Op: op, Err: e}
			}
			done = true
			return nil
		}
		if err := fn(m); err != nil {
			ferr = err
			done = true
		}
		return nil
	}
	for !done {
		if err := s.recv(handle); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
	return ferr
}
