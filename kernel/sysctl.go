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
// function giving the timeout a packet resets a flow to in its current
// state (used to derive idleness). Missing sysctls fall back to the
// kernel's defaults.
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
	udp := get("nf_conntrack_udp_timeout", 30)
	udpStream := get("nf_conntrack_udp_timeout_stream", 120)
	icmp := get("nf_conntrack_icmp_timeout", 30)
	icmp6 := get("nf_conntrack_icmpv6_timeout", 30)
	generic := get("nf_conntrack_generic_timeout", 600)
	return func(f *flow.Flow) uint32 {
		switch f.Proto {
		case flow.ProtoTCP:
			if int(f.TCP.State) < len(tcp) && tcp[f.TCP.State] > 0 {
				return tcp[f.TCP.State]
			}
		case flow.ProtoUDP, flow.ProtoUDPLite:
			if f.Status&flow.StatusAssured != 0 {
				return udpStream
			}
			return udp
		case flow.ProtoICMP:
			return icmp
		case flow.ProtoICMPv6:
			return icmp6
		}
		return generic
	}
}
