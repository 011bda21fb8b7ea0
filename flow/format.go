package flow

import (
	"strconv"
	"strings"
)

// ProtoName returns conntrack's name for a layer 4 protocol ("tcp").
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoICMPv6:
		return "icmpv6"
	case ProtoSCTP:
		return "sctp"
	case ProtoDCCP:
		return "dccp"
	case ProtoGRE:
		return "gre"
	case ProtoUDPLite:
		return "udplite"
	}
	return "unknown"
}

// ProtoByName is the inverse of ProtoName.
func ProtoByName(name string) (uint8, bool) {
	for _, p := range []uint8{ProtoTCP, ProtoUDP, ProtoICMP, ProtoICMPv6, ProtoSCTP, ProtoDCCP, ProtoGRE, ProtoUDPLite} {
		if ProtoName(p) == strings.ToLower(name) {
			return p, true
		}
	}
	return 0, false
}

func familyName(f uint8) string {
	if f == FamilyIPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// String formats the flow one line, as `conntrack -L -o extended` does:
//
//	ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=40000 [ASSURED] mark=0 zone=0
func (f *Flow) String() string { return f.format(nil, true) }

// Extended formats a destroyed flow as `conntrack -E -o extended` prints a
// DESTROY event: no timeout, and packets= and bytes= after each tuple when
// c holds counters.
func (f *Flow) Extended(c *Counters) string { return f.format(c, false) }

func (f *Flow) format(c *Counters, timeout bool) string {
	var b strings.Builder
	b.Grow(200)
	pad := func(s string, n int) {
		b.WriteString(s)
		for i := len(s); i < n; i++ {
			b.WriteByte(' ')
		}
	}
	pad(familyName(f.Family), 8)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(int(f.Family)))
	b.WriteByte(' ')
	pad(ProtoName(f.Proto), 8)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(int(f.Proto)))
	b.WriteByte(' ')
	if timeout {
		b.WriteString(strconv.FormatUint(uint64(f.Timeout), 10))
		b.WriteByte(' ')
	}
	if f.Proto == ProtoTCP {
		b.WriteString(TCPStateName(f.TCP.State))
		b.WriteByte(' ')
	}
	f.writeTuple(&b, f.Orig)
	if c != nil && c.HaveAcct {
		writeCounters(&b, c.OrigPackets, c.OrigBytes)
	}
	if f.Status&StatusSeenReply == 0 {
		b.WriteString("[UNREPLIED] ")
	}
	f.writeTuple(&b, f.Reply)
	if c != nil && c.HaveAcct {
		writeCounters(&b, c.ReplyPackets, c.ReplyBytes)
	}
	if f.Status&StatusAssured != 0 {
		b.WriteString("[ASSURED] ")
	}
	b.WriteString("mark=")
	b.WriteString(strconv.FormatUint(uint64(f.Mark), 10))
	if f.Extra != nil && f.Extra.Helper != "" {
		b.WriteString(" helper=")
		b.WriteString(f.Extra.Helper)
	}
	if f.Extra != nil && f.Extra.Labels != ([16]byte{}) {
		b.WriteString(" labels=")
		b.WriteString(LabelsHex(f.Extra.Labels))
	}
	b.WriteString(" zone=")
	b.WriteString(strconv.Itoa(int(f.Zone)))
	return b.String()
}

func (f *Flow) writeTuple(b *strings.Builder, t Tuple) {
	b.WriteString("src=")
	b.WriteString(Addr(f.Family, t.Src).String())
	b.WriteString(" dst=")
	b.WriteString(Addr(f.Family, t.Dst).String())
	b.WriteByte(' ')
	switch f.Proto {
	case ProtoICMP, ProtoICMPv6:
		b.WriteString("type=")
		b.WriteString(strconv.Itoa(int(t.DstPort >> 8)))
		b.WriteString(" code=")
		b.WriteString(strconv.Itoa(int(t.DstPort & 0xff)))
		b.WriteString(" id=")
		b.WriteString(strconv.Itoa(int(t.SrcPort)))
	case ProtoGRE:
		b.WriteString("srckey=0x")
		b.WriteString(strconv.FormatUint(uint64(t.SrcPort), 16))
		b.WriteString(" dstkey=0x")
		b.WriteString(strconv.FormatUint(uint64(t.DstPort), 16))
	default:
		b.WriteString("sport=")
		b.WriteString(strconv.Itoa(int(t.SrcPort)))
		b.WriteString(" dport=")
		b.WriteString(strconv.Itoa(int(t.DstPort)))
	}
	b.WriteByte(' ')
}

func writeCounters(b *strings.Builder, packets, bytes uint64) {
	b.WriteString("packets=")
	b.WriteString(strconv.FormatUint(packets, 10))
	b.WriteString(" bytes=")
	b.WriteString(strconv.FormatUint(bytes, 10))
	b.WriteByte(' ')
}

// LabelsHex formats a 128-bit conntrack label set as conntrack does: 0x and
// the bits as one big hexadecimal number (bit 0 is the least significant).
func LabelsHex(l [16]byte) string {
	const hexd = "0123456789abcdef"
	b := make([]byte, 2, 34)
	b[0], b[1] = '0', 'x'
	for i := 15; i >= 0; i-- {
		b = append(b, hexd[l[i]>>4], hexd[l[i]&0xf])
	}
	return string(b)
}
