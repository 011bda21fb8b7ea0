package flow

import (
	"strconv"
	"strings"
)

// Expectation flags (NF_CT_EXPECT_*).
const (
	ExpectPermanent uint32 = 1 << 0 // NF_CT_EXPECT_PERMANENT: stays after a match
	ExpectInactive  uint32 = 1 << 1 // NF_CT_EXPECT_INACTIVE: not matched yet
	ExpectUserspace uint32 = 1 << 2 // NF_CT_EXPECT_USERSPACE: made by user space
)

// ExpectKey identifies an expectation: its expected tuple, the protocols of
// that tuple and the zone of its master. The kernel finds an expectation by
// these (a GET or DELETE by CTA_EXPECT_TUPLE and CTA_EXPECT_ZONE).
type ExpectKey struct {
	Tuple  Tuple
	Family uint8
	Proto  uint8
	Zone   uint16
}

// ExpectNAT is an expectation's NAT (CTA_EXPECT_NAT): the helper of a
// NATed master (FTP through SNAT, DNAT) records where the expected
// connection really goes, and the direction of the master it came from.
// Tuple holds the saved address in Src and the saved port (or ICMP id) in
// SrcPort; its protocol is the master's.
type ExpectNAT struct {
	Dir   uint32 // 0 original, 1 reply
	Tuple Tuple
}

// Expect is one conntrack expectation: a connection a helper (ftp, sip,
// tftp) announced on its master flow, which the kernel will accept as
// RELATED. The mask tells which parts of Tuple must match: the kernel keeps
// a mask for the source address and port only, the destination always
// matches exactly.
type Expect struct {
	ExpectKey
	Mask        Tuple  // Src and SrcPort are the kernel's; Dst and DstPort all ones
	Master      Tuple  // the master flow's original tuple
	MasterProto uint8  // the master's layer 4 protocol (SIP over TCP expects UDP)
	Timeout     uint32 // seconds left when read
	Flags       uint32 // Expect* flags
	Class       uint32 // the helper's expectation class (SIP: 0 signalling, 1 audio, 2 video)
	Helper      string // the master's helper, e.g. "ftp"
	Fn          string // the expectfn name, e.g. "nat-follow-master"; "" for none
	HasNAT      bool
	NAT         ExpectNAT
}

// MasterKey is the key of the expectation's master flow.
func (e *Expect) MasterKey() Key {
	return Key{Orig: e.Master, Family: e.Family, Proto: e.MasterProto, Zone: e.Zone}
}

// SameState reports whether two expectations are equal but for the timeout.
func (e *Expect) SameState(g *Expect) bool {
	t1, t2 := *e, *g
	t1.Timeout, t2.Timeout = 0, 0
	return t1 == t2
}

// FlagNames formats flags as conntrack does ("PERMANENT,INACTIVE").
func FlagNames(flags uint32) string {
	var parts []string
	if flags&ExpectPermanent != 0 {
		parts = append(parts, "PERMANENT")
	}
	if flags&ExpectInactive != 0 {
		parts = append(parts, "INACTIVE")
	}
	if flags&ExpectUserspace != 0 {
		parts = append(parts, "USERSPACE")
	}
	return strings.Join(parts, ",")
}

// String formats the expectation on one line, in the manner of
// `conntrack -L expect`:
//
//	300 proto=6 src=10.0.1.2 dst=10.0.2.2 sport=0 dport=40123 mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 master-src=10.0.1.2 master-dst=10.0.2.2 sport=50000 dport=21 class=0 helper=ftp
func (e *Expect) String() string {
	var b strings.Builder
	b.Grow(240)
	b.WriteString(strconv.FormatUint(uint64(e.Timeout), 10))
	b.WriteString(" proto=")
	b.WriteString(strconv.Itoa(int(e.Proto)))
	b.WriteString(" src=")
	b.WriteString(Addr(e.Family, e.Tuple.Src).String())
	b.WriteString(" dst=")
	b.WriteString(Addr(e.Family, e.Tuple.Dst).String())
	b.WriteString(" sport=")
	b.WriteString(strconv.Itoa(int(e.Tuple.SrcPort)))
	b.WriteString(" dport=")
	b.WriteString(strconv.Itoa(int(e.Tuple.DstPort)))
	b.WriteString(" mask-src=")
	b.WriteString(Addr(e.Family, e.Mask.Src).String())
	b.WriteString(" mask-dst=")
	b.WriteString(Addr(e.Family, e.Mask.Dst).String())
	b.WriteString(" sport=")
	b.WriteString(strconv.Itoa(int(e.Mask.SrcPort)))
	b.WriteString(" dport=")
	b.WriteString(strconv.Itoa(int(e.Mask.DstPort)))
	b.WriteString(" master-src=")
	b.WriteString(Addr(e.Family, e.Master.Src).String())
	b.WriteString(" master-dst=")
	b.WriteString(Addr(e.Family, e.Master.Dst).String())
	b.WriteString(" sport=")
	b.WriteString(strconv.Itoa(int(e.Master.SrcPort)))
	b.WriteString(" dport=")
	b.WriteString(strconv.Itoa(int(e.Master.DstPort)))
	if fl := FlagNames(e.Flags); fl != "" {
		b.WriteByte(' ')
		b.WriteString(fl)
	}
	b.WriteString(" class=")
	b.WriteString(strconv.FormatUint(uint64(e.Class), 10))
	if e.Helper != "" {
		b.WriteString(" helper=")
		b.WriteString(e.Helper)
	}
	if e.HasNAT {
		b.WriteString(" nat-dir=")
		b.WriteString(strconv.FormatUint(uint64(e.NAT.Dir), 10))
		b.WriteString(" nat-src=")
		b.WriteString(Addr(e.Family, e.NAT.Tuple.Src).String())
		b.WriteString(" nat-sport=")
		b.WriteString(strconv.Itoa(int(e.NAT.Tuple.SrcPort)))
	}
	if e.Fn != "" {
		b.WriteString(" fn=")
		b.WriteString(e.Fn)
	}
	if e.Zone != 0 {
		b.WriteString(" zone=")
		b.WriteString(strconv.Itoa(int(e.Zone)))
	}
	return b.String()
}
