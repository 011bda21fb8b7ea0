package kernel

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/ctsyncd/ctsyncd/flow"
)

const sysctlDir = "/proc/sys/net/netfilter/"

func readSysctl(name string) (int, error) {
	b, err := os.ReadFile(sysctlDir + name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// EnsureEvents makes sure net.netfilter.nf_conntrack_events is 1 in the
// current namespace. Its default here is 2: a flow then gets event delivery
// only if a listener existed when it was created, which silently hides
// flows from a daemon that starts later. Call it after Listen (which loads
// nf_conntrack).
func EnsureEvents() error {
	v, err := readSysctl("nf_conntrack_events")
	if err != nil {
		return fmt.Errorf("read net.netfilter.nf_conntrack_events: %w (is nf_conntrack loaded?)", err)
	}
	if v == 1 {
		return nil
	}
	if err := os.WriteFile(sysctlDir+"nf_conntrack_events", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("net.netfilter.nf_conntrack_events is %d and cannot be set to 1: %w (ctsyncd needs events for every flow)", v, err)
	}
	return nil
}

// TimeoutPolicy reads the namespace's conntrack timeouts and returns a
// function giving the timeout the kernel set a flow to at its last packet,
// from its state and its remaining timeout (used to derive idleness: the
// flow has been idle for that value minus the remaining timeout).
//
// A packet does not always reset the timeout to the state's value: an
// established TCP flow with unacknowledged data gets
// nf_conntrack_tcp_timeout_unacknowledged (300 s), one with too many
// retransmissions nf_conntrack_tcp_timeout_max_retrans; an assured UDP flow
// gets udp_timeout_stream, an unreplied one udp_timeout. So the value is the
// smallest candidate of the flow's protocol and state that is not below the
// remaining timeout. Missing sysctls fall back to the kernel's defaults.
func TimeoutPolicy() func(*flow.Flow) uint32 {
	get := func(name string, def uint32) uint32 {
		if v, err := readSysctl(name); err == nil && v > 0 {
			return uint32(v)
		}
		return def
	}
	var tcp [10]uint32
	for st, def := range map[uint8]uint32{
		flow.TCPSynSent: 120, flow.TCPSynRecv: 60, flow.TCPEstablished: 432000,
		flow.TCPFinWait: 120, flow.TCPCloseWait: 60, flow.TCPLastAck: 30,
		flow.TCPTimeWait: 120, flow.TCPClose: 10, flow.TCPSynSent2: 120,
	} {
		tcp[st] = get("nf_conntrack_tcp_timeout_"+strings.ToLower(flow.TCPStateName(st)), def)
	}
	unack := get("nf_conntrack_tcp_timeout_unacknowledged", 300)
	retrans := get("nf_conntrack_tcp_timeout_max_retrans", 300)
	udp := get("nf_conntrack_udp_timeout", 30)
	udpStream := get("nf_conntrack_udp_timeout_stream", 120)
	icmp := get("nf_conntrack_icmp_timeout", 30)
	icmp6 := get("nf_conntrack_icmpv6_timeout", 30)
	generic := get("nf_conntrack_generic_timeout", 600)
	return func(f *flow.Flow) uint32 {
		var cands [3]uint32
		n := 0
		switch f.Proto {
		case flow.ProtoTCP:
			st := uint32(0)
			if int(f.TCP.State) < len(tcp) {
				st = tcp[f.TCP.State]
			}
			if st == 0 {
				st = generic
			}
			cands[0], n = st, 1
			// The kernel caps at these only when they are below the
			// state's own timeout.
			if unack < st {
				cands[n], n = unack, n+1
			}
			if retrans < st {
				cands[n], n = retrans, n+1
			}
		case flow.ProtoUDP, flow.ProtoUDPLite:
			cands[0], cands[1], n = udp, udpStream, 2
		case flow.ProtoICMP:
			cands[0], n = icmp, 1
		case flow.ProtoICMPv6:
			cands[0], n = icmp6, 1
		default:
			cands[0], n = generic, 1
		}
		best := uint32(0)
		for _, c := range cands[:n] {
			if c >= f.Timeout && (best == 0 || c < best) {
				best = c
			}
		}
		if best == 0 {
			return f.Timeout // above every known value: a custom timeout policy
		}
		return best
	}
}
