// Package flowgen generates conntrack flows of a fixed, documented mix, each
// a pure function of its number: the kernel writer's tests and cmd/ctgen
// (the benchmarks' flow generator) use the same flows, so runs compare.
package flowgen

import (
	"encoding/binary"

	"github.com/ctsyncd/ctsyncd/flow"
)

// The flow mix, per 20 flows (fixed, so that runs compare):
//
//	 8  TCP ESTABLISHED IPv4, window scales (WINDOW_SCALE|SACK_PERM both ways)
//	 4  UDP IPv4 (ASSURED)
//	 2  ICMP echo IPv4
//	 1  TCP ESTABLISHED IPv6
//	 1  UDP or ICMPv6 echo IPv6 (alternating)
//	 2  TCP IPv4, SNAT to 203.0.113.0/24 with the port mapped
//	 1  UDP IPv4, DNAT (port forward 198.51.100.1:53 -> 172.16.x.y:8053)
//	 1  TCP IPv6, SNAT to 2001:db8:0:4::/64
//
// i.e. 20 % NATed, 20 % IPv6. Every 5th flow carries a mark, every 11th is
// in zone 7; timeouts spread over 60..3600 s (ICMP 30..89 s). Flow i is a
// pure function of i: original and reply tuples are unique for i < 2^24.

func v4(a, b, c, d byte) [16]byte { return [16]byte{a, b, c, d} }

func v6(prefix uint16, i int) [16]byte {
	var a [16]byte
	binary.BigEndian.PutUint16(a[0:], 0x2001)
	binary.BigEndian.PutUint16(a[2:], 0xdb8)
	binary.BigEndian.PutUint16(a[4:], prefix)
	binary.BigEndian.PutUint32(a[12:], uint32(i))
	return a
}

// Flow returns flow number i of the mix.
func Flow(i int) flow.Flow {
	var f flow.Flow
	cli := v4(10, byte(i>>16), byte(i>>8), byte(i))
	srv := v4(192, 0, 2, byte(i%200+1))
	sport := uint16(1024 + i%60000)
	f.Family = flow.FamilyIPv4
	f.Timeout = uint32(60 + i%3541)
	f.Status = flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured
	if i%5 == 0 {
		f.Mark = uint32(i%7 + 1)
	}
	if i%11 == 0 {
		f.Zone = 7
	}
	tcp := func() {
		f.Proto = flow.ProtoTCP
		f.TCP = flow.TCPInfo{
			State: flow.TCPEstablished, WScaleOrig: uint8(i % 15), WScaleRep: uint8((i + 7) % 15),
			FlagsOrig: flow.TCPFlagWindowScale | flow.TCPFlagSACKPerm,
			FlagsRep:  flow.TCPFlagWindowScale | flow.TCPFlagSACKPerm,
		}
	}
	switch m := i % 20; {
	case m < 8:
		tcp()
		f.Orig = flow.Tuple{Src: cli, Dst: srv, SrcPort: sport, DstPort: 443}
	case m < 12:
		f.Proto = flow.ProtoUDP
		f.Orig = flow.Tuple{Src: cli, Dst: srv, SrcPort: sport, DstPort: 53}
	case m < 14:
		f.Proto = flow.ProtoICMP
		f.Status &^= flow.StatusAssured
		f.Timeout = uint32(30 + i%60)
		f.Orig = flow.Tuple{Src: cli, Dst: srv, SrcPort: uint16(i), DstPort: 8 << 8}
	case m == 14:
		f.Family = flow.FamilyIPv6
		tcp()
		f.Orig = flow.Tuple{Src: v6(1, i), Dst: v6(2, i%300), SrcPort: sport, DstPort: 22}
	case m == 15:
		f.Family = flow.FamilyIPv6
		if i%40 < 20 {
			f.Proto = flow.ProtoUDP
			f.Orig = flow.Tuple{Src: v6(1, i), Dst: v6(2, i%300), SrcPort: sport, DstPort: 123}
		} else {
			f.Proto = flow.ProtoICMPv6
			f.Status &^= flow.StatusAssured
			f.Timeout = uint32(30 + i%60)
			f.Orig = flow.Tuple{Src: v6(1, i), Dst: v6(2, i%300), SrcPort: uint16(i), DstPort: 128 << 8}
		}
	case m < 18:
		tcp()
		f.Orig = flow.Tuple{Src: cli, Dst: srv, SrcPort: sport, DstPort: 80}
		j := i/20*2 + m - 16
		f.Reply = flow.Tuple{Src: srv, Dst: v4(203, 0, 113, byte(j/60000+1)), SrcPort: 80, DstPort: uint16(1024 + j%60000)}
		f.Status |= flow.StatusSrcNAT | flow.StatusSrcNATDone | flow.StatusDstNATDone
		return f
	case m == 18:
		f.Proto = flow.ProtoUDP
		f.Orig = flow.Tuple{Src: cli, Dst: v4(198, 51, 100, 1), SrcPort: sport, DstPort: 53}
		f.Reply = flow.Tuple{Src: v4(172, 16, byte(i>>8), byte(i)), Dst: cli, SrcPort: 8053, DstPort: sport}
		f.Status |= flow.StatusDstNAT | flow.StatusSrcNATDone | flow.StatusDstNATDone
		return f
	default:
		f.Family = flow.FamilyIPv6
		tcp()
		f.Orig = flow.Tuple{Src: v6(3, i), Dst: v6(2, i%300), SrcPort: sport, DstPort: 443}
		j := i / 20
		f.Reply = flow.Tuple{Src: v6(2, i%300), Dst: v6(4, j/60000+1), SrcPort: 443, DstPort: uint16(1024 + j%60000)}
		f.Status |= flow.StatusSrcNAT | flow.StatusSrcNATDone | flow.StatusDstNATDone
		return f
	}
	f.Reply = f.Orig.Invert(f.Proto)
	return f
}

// Flows returns flows number offset to offset+n-1.
func Flows(offset, n int) []flow.Flow {
	out := make([]flow.Flow, n)
	for i := range out {
		out[i] = Flow(offset + i)
	}
	return out
}
