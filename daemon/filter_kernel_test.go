//go:build kernel

package daemon

import (
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// echoServer listens on [::]:port in ns and echoes.
func echoServer(t *testing.T, ns *netnstest.NS, port string) {
	t.Helper()
	var ln net.Listener
	ns.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp", "[::]:"+port); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

// talk opens a TCP connection from ns to addr and exchanges data both ways.
func talk(t *testing.T, ns *netnstest.NS, addr string) *net.TCPConn {
	t.Helper()
	var c net.Conn
	ns.Do(t, func() {
		var err error
		if c, err = net.DialTimeout("tcp", addr, 5*time.Second); err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
	})
	t.Cleanup(func() { c.Close() })
	buf := make([]byte, 4)
	for range 3 {
		c.Write([]byte("ping"))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	return c.(*net.TCPConn)
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestKernelNAT: flows source-NATed (snat to) and destination-NATed (dnat
// to), IPv4 and IPv6, appear with both tuples as the kernel has them.
func TestKernelNAT(t *testing.T) {
	client, fw, server := netnstest.Router(t)
	fw.Exec(t, "ip", "addr", "add", "10.0.2.100/24", "dev", "lan1")
	fw.Exec(t, "ip", "addr", "add", "fd00:2::100/64", "dev", "lan1", "nodad")
	fw.Exec(t, "ip", "addr", "add", "10.0.1.100/24", "dev", "lan0")
	fw.Exec(t, "ip", "addr", "add", "fd00:1::100/64", "dev", "lan0", "nodad")
	fw.Nft(t, `table ip nat {
	chain prerouting { type nat hook prerouting priority -100; ip daddr 10.0.1.100 tcp dport 80 dnat to 10.0.2.2:8080; }
	chain postrouting { type nat hook postrouting priority 100; oifname "lan1" tcp dport 8081 snat to 10.0.2.100; }
}
table ip6 nat {
	chain prerouting { type nat hook prerouting priority -100; ip6 daddr fd00:1::100 tcp dport 80 dnat to [fd00:2::2]:8080; }
	chain postrouting { type nat hook postrouting priority 100; oifname "lan1" tcp dport 8081 snat to fd00:2::100; }
}
`)
	d := startDaemon(t, fw, nil)
	echoServer(t, server, "8080")
	echoServer(t, server, "8081")

	tests := []struct {
		name               string
		dial               string
		src, dst           string
		dport              uint16
		replySrc, replyDst string
		replySport         uint16
		status             uint32
	}{
		{"snat v4", "10.0.2.2:8081", "10.0.1.2", "10.0.2.2", 8081, "10.0.2.2", "10.0.2.100", 8081, flow.StatusSrcNAT},
		{"snat v6", "[fd00:2::2]:8081", "fd00:1::2", "fd00:2::2", 8081, "fd00:2::2", "fd00:2::100", 8081, flow.StatusSrcNAT},
		{"dnat v4", "10.0.1.100:80", "10.0.1.2", "10.0.1.100", 80, "10.0.2.2", "10.0.1.2", 8080, flow.StatusDstNAT},
		{"dnat v6", "[fd00:1::100]:80", "fd00:1::2", "fd00:1::100", 80, "fd00:2::2", "fd00:1::2", 8080, flow.StatusDstNAT},
	}
	for _, tt := range tests {
		c := talk(t, client, tt.dial)
		sport := uint16(c.LocalAddr().(*net.TCPAddr).Port)
		pred := func(f *flow.Flow) bool {
			return f.Proto == flow.ProtoTCP && f.SrcAddr() == addr(tt.src) && f.Orig.SrcPort == sport && f.Orig.DstPort == tt.dport
		}
		waitFor(t, tt.name+" flow established in the cache", func() (bool, string) {
			e, ok := find(d.Internal(), pred)
			return ok && e.TCP.State == flow.TCPEstablished, cacheText(d.Internal())
		})
		e, _ := find(d.Internal(), pred)
		f := e.Flow
		if f.DstAddr() != addr(tt.dst) || f.ReplySrcAddr() != addr(tt.replySrc) || f.ReplyDstAddr() != addr(tt.replyDst) ||
			f.Reply.SrcPort != tt.replySport {
			t.Errorf("%s: tuples wrong: %s", tt.name, f.String())
		}
		if !f.NATed() || f.Status&tt.status == 0 {
			t.Errorf("%s: NATed %v, status %v: %s", tt.name, f.NATed(), flow.StatusNames(f.Status), f.String())
		}
	}
}

// TestKernelOwnAddressesIgnored: flows from or to the firewall's own
// addresses are not cached, and stop being ignored once the address is gone.
func TestKernelOwnAddressesIgnored(t *testing.T) {
	client, fw, _ := netnstest.Router(t)
	fw.Exec(t, "ip", "addr", "add", "10.0.1.50/24", "dev", "lan0")
	echoServer(t, fw, "2222") // a service on the firewall itself (think SSH)
	d := startDaemon(t, fw, nil)
	waitFor(t, "own addresses known", func() (bool, string) {
		for _, a := range d.filter.Load().Own() {
			if a == addr("10.0.1.50") {
				return true, ""
			}
		}
		return false, "own addresses not yet reported"
	})

	c := talk(t, client, "10.0.1.50:2222")                   // to the firewall: reply source is own
	client.Exec(t, "ping", "-c", "1", "-W", "2", "10.0.1.1") // same, ICMP
	fw.Exec(t, "ping", "-c", "1", "-W", "2", "10.0.1.2")     // from the firewall: original source is own
	sport := uint16(c.LocalAddr().(*net.TCPAddr).Port)
	toFW := func(f *flow.Flow) bool { return f.Proto == flow.ProtoTCP && f.Orig.SrcPort == sport }
	// Positive control: forwarded traffic is cached meanwhile.
	fw.Exec(t, "conntrack", "-I", "-p", "udp", "-s", "10.0.1.2", "-d", "10.0.2.2", "--sport", "5000", "--dport", "53", "-t", "60")
	waitFor(t, "a forwarded flow cached", func() (bool, string) {
		_, ok := find(d.Internal(), func(f *flow.Flow) bool { return f.Orig.DstPort == 53 })
		return ok, cacheText(d.Internal())
	})
	if _, err := d.reconcile(t.Context(), "test"); err != nil {
		t.Fatal(err)
	}
	for _, e := range d.Internal().Snapshot() {
		if e.Orig.DstPort != 53 {
			t.Errorf("flow of the firewall's own addresses cached: %s", e.Flow.String())
		}
	}
	if d.stats().Events.Filtered == 0 {
		t.Error("no filtered events counted")
	}

	fw.Exec(t, "ip", "addr", "del", "10.0.1.50/24", "dev", "lan0")
	waitFor(t, "the removed address to be dropped from the own set", func() (bool, string) {
		for _, a := range d.filter.Load().Own() {
			if a == addr("10.0.1.50") {
				return false, "10.0.1.50 still own"
			}
		}
		return true, ""
	})
	if _, err := d.reconcile(t.Context(), "test"); err != nil {
		t.Fatal(err)
	}
	if _, ok := find(d.Internal(), toFW); !ok {
		t.Errorf("flow to the removed address still ignored:\n%s", cacheText(d.Internal()))
	}
}

// TestKernelMarkLabelsZone: mark, labels and zone set by nft rules are
// carried into the cache.
func TestKernelMarkLabelsZone(t *testing.T) {
	client, fw, server := netnstest.Router(t)
	fw.Nft(t, `table inet ctsyncd_test {
	chain raw {
		type filter hook prerouting priority raw;
		tcp dport 9090 ct zone set 7
		tcp sport 9090 ct zone set 7
	}
	chain forward {
		type filter hook forward priority 10;
		ct state new tcp dport 9091 ct mark set 0x42 ct label set 3
	}
}
`)
	d := startDaemon(t, fw, nil)
	echoServer(t, server, "9090")
	echoServer(t, server, "9091")
	cz := talk(t, client, "10.0.2.2:9090")
	cm := talk(t, client, "10.0.2.2:9091")
	pz, pm := uint16(cz.LocalAddr().(*net.TCPAddr).Port), uint16(cm.LocalAddr().(*net.TCPAddr).Port)
	waitFor(t, "zone 7 flow", func() (bool, string) {
		e, ok := find(d.Internal(), func(f *flow.Flow) bool { return f.Orig.SrcPort == pz && f.Orig.DstPort == 9090 })
		return ok && e.Zone == 7 && e.TCP.State == flow.TCPEstablished, cacheText(d.Internal())
	})
	waitFor(t, "marked and labelled flow", func() (bool, string) {
		e, ok := find(d.Internal(), func(f *flow.Flow) bool { return f.Orig.SrcPort == pm && f.Orig.DstPort == 9091 })
		return ok && e.Mark == 0x42 && e.Extra != nil && e.Extra.Labels[0] == 1<<3, cacheText(d.Internal())
	})
}

// TestKernelFilterKeys: each filter key, positive and negative, on flows in
// the real table.
func TestKernelFilterKeys(t *testing.T) {
	tests := []struct {
		name string
		tune func(*config.Config)
		in   []string // flows (conntrack -I args) that must be cached
		out  []string // flows that must not
	}{
		{
			name: "protocols",
			tune: func(c *config.Config) { c.Filter.Protocols = []string{"udp"} },
			in:   []string{"-p udp -s 10.9.0.1 -d 10.9.1.1 --sport 1 --dport 53 -t 60"},
			out:  []string{"-p tcp -s 10.9.0.1 -d 10.9.1.1 --sport 2 --dport 80 --state ESTABLISHED -t 60"},
		},
		{
			name: "tcp_states",
			tune: func(c *config.Config) { c.Filter.TCPStates = []string{"established"} },
			in:   []string{"-p tcp -s 10.9.0.1 -d 10.9.1.1 --sport 3 --dport 80 --state ESTABLISHED -t 60"},
			out:  []string{"-p tcp -s 10.9.0.1 -d 10.9.1.1 --sport 4 --dport 80 --state TIME_WAIT -t 60"},
		},
		{
			name: "ignore_addresses by original source",
			tune: func(c *config.Config) { c.Filter.IgnoreAddresses = []string{"10.9.0.0/24", "fd09::/64"} },
			in:   []string{"-p udp -s 10.8.0.1 -d 10.9.1.1 --sport 5 --dport 53 -t 60", "-p udp -s fd08::1 -d fd09:1::1 --sport 5 --dport 53 -t 60"},
			out:  []string{"-p udp -s 10.9.0.7 -d 10.9.1.1 --sport 6 --dport 53 -t 60", "-p udp -s fd09::7 -d fd09:1::1 --sport 6 --dport 53 -t 60"},
		},
		{
			name: "ignore_addresses by reply source",
			tune: func(c *config.Config) { c.Filter.IgnoreAddresses = []string{"10.9.5.5/32"} },
			in:   []string{"-p udp -s 10.8.0.1 -d 10.9.1.1 --sport 7 --dport 53 -t 60"},
			out:  []string{"-p udp -s 10.8.0.1 -d 10.9.5.5 --sport 8 --dport 53 -t 60"},
		},
		{
			name: "ignore_ports by original destination port and range",
			tune: func(c *config.Config) {
				c.Filter.IgnorePorts = []config.PortRange{{Lo: 53, Hi: 53}, {Lo: 8000, Hi: 8100}}
			},
			in: []string{"-p udp -s 10.8.0.1 -d 10.9.1.1 --sport 53 --dport 54 -t 60",
				"-p tcp -s 10.8.0.1 -d 10.9.1.1 --sport 9 --dport 8101 --state ESTABLISHED -t 60",
				"-p icmp -s 10.8.0.1 -d 10.9.1.1 --icmp-type 8 --icmp-code 0 --icmp-id 53 -t 30"},
			out: []string{"-p udp -s 10.8.0.1 -d 10.9.1.1 --sport 10 --dport 53 -t 60",
				"-p tcp -s 10.8.0.1 -d 10.9.1.1 --sport 11 --dport 8000 --state ESTABLISHED -t 60",
				"-p tcp -s 10.8.0.1 -d 10.9.1.1 --sport 12 --dport 8100 --state ESTABLISHED -t 60"},
		},
		{
			name: "ignore_marks under a mask",
			tune: func(c *config.Config) { c.Filter.IgnoreMarks = []string{"0x100/0xf00"} },
			in:   []string{"-p udp -s 10.8.0.1 -d 10.9.1.1 --sport 13 --dport 53 -t 60 --mark 0x201"},
			out:  []string{"-p udp -s 10.8.0.1 -d 10.9.1.1 --sport 14 --dport 53 -t 60 --mark 0x1ff"},
		},
		{
			name: "ignore_zones",
			tune: func(c *config.Config) { c.Filter.IgnoreZones = []int{7} },
			in:   []string{"-p udp -s 10.8.0.1 -d 10.9.1.1 --sport 15 --dport 53 -t 60 -w 8"},
			out:  []string{"-p udp -s 10.8.0.1 -d 10.9.1.1 --sport 16 --dport 53 -t 60 -w 7"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := netnstest.New(t)
			d := startDaemon(t, ns, tt.tune)
			for _, args := range append(append([]string{}, tt.in...), tt.out...) {
				ns.Exec(t, append([]string{"conntrack", "-I"}, strings.Fields(args)...)...)
			}
			if _, err := d.reconcile(t.Context(), "test"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the wanted flows", func() (bool, string) {
				return d.Internal().Len() == len(tt.in), cacheText(d.Internal())
			})
			for _, e := range d.Internal().Snapshot() {
				ok := false
				for _, args := range tt.in {
					if matchesArgs(&e.Flow, args) {
						ok = true
					}
				}
				if !ok {
					t.Errorf("cached a flow the filter excludes: %s", e.Flow.String())
				}
			}
		})
	}
}

// matchesArgs reports whether f is the flow a conntrack -I argument string made.
func matchesArgs(f *flow.Flow, args string) bool {
	a := strings.Fields(args)
	for i := 0; i+1 < len(a); i++ {
		switch a[i] {
		case "-s":
			if f.SrcAddr() != addr(a[i+1]) {
				return false
			}
		case "--sport":
			if f.Orig.SrcPort != uint16(must(strconv.Atoi(a[i+1]))) {
				return false
			}
		}
	}
	return true
}

func must(n int, err error) int {
	if err != nil {
		panic(err)
	}
	return n
}
