// Command defer measures first-packet defer (docs/active-active.md): the
// latency it adds to a new connection and the CPU it costs per deferred
// flow. It is a benchmark, not a test; it needs root, ip(8), sysctl(8) and
// iptables-legacy-restore, and builds ctsyncd from this module.
//
// It builds the active-active topology of the cluster tests in network
// namespaces of its own (client and server on two bridges, fw-a and fw-b on
// both, a sync link between them), runs ctsyncd with sync.inject on both
// firewalls and, per mode, times -n sequential TCP connections
// (connect() until it returns: SYN, SYN-ACK, ACK) and -n UDP
// request/replies from new sockets:
//
//	baseline  symmetric paths (client → fw-a → server → fw-a), the NFQUEUE
//	          rules replaced by ACCEPT: no defer
//	defer     asymmetric paths (the server's gateway is fw-b), the example
//	          ruleset configs/active-active.rules: the SYN and the first UDP
//	          datagram are held at fw-a, the SYN-ACK at fw-b
//
// CPU is the user+system time both ctsyncd processes used during the
// connections (from /proc/PID/stat), divided by the connections.
//
//	go run ./bench/defer [-n 2000] [-timeout 20ms]
//
// Output: one line per mode and protocol with the median, p90, p99 and max
// latency, and the CPU per connection.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	n := flag.Int("n", 2000, "connections (and UDP request/replies) per mode")
	timeout := flag.String("timeout", "20ms", "defer.defer_timeout")
	flag.Parse()
	if err := run(*n, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "defer bench:", err)
		os.Exit(1)
	}
}

type env struct {
	suffix string
	dir    string
	bin    string
	procs  []*exec.Cmd
}

func (e *env) ns(name string) string { return name + e.suffix }

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (e *env) in(ns string, args ...string) error {
	return sh(append([]string{"ip", "netns", "exec", e.ns(ns)}, args...)...)
}

func run(n int, timeout string) error {
	b := make([]byte, 3)
	rand.Read(b)
	e := &env{suffix: hex.EncodeToString(b)}
	var err error
	if e.dir, err = os.MkdirTemp("", "ctsyncd-defer-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(e.dir)
	defer e.cleanup()
	e.bin = filepath.Join(e.dir, "ctsyncd")
	if err := sh("go", "build", "-o", e.bin, "github.com/ctsyncd/ctsyncd/cmd/ctsyncd"); err != nil {
		return err
	}
	if err := e.topology(); err != nil {
		return err
	}
	stop, err := e.echo()
	if err != nil {
		return err
	}
	defer stop()

	fmt.Printf("# %d connections per mode, defer_timeout %s, %d CPUs, kernel %s\n", n, timeout, runtime.NumCPU(), kernelRelease())
	for _, mode := range []string{"baseline", "defer"} {
		if err := e.mode(mode, timeout); err != nil {
			return err
		}
		time.Sleep(2 * time.Second) // the peers find each other
		cpu0 := e.cpu()
		tcp, err := e.measure(n, e.tcpOnce)
		if err != nil {
			return fmt.Errorf("%s tcp: %w", mode, err)
		}
		cpu1 := e.cpu()
		udp, err := e.measure(n, e.udpOnce)
		if err != nil {
			return fmt.Errorf("%s udp: %w", mode, err)
		}
		cpu2 := e.cpu()
		report(mode, "tcp connect", tcp, cpu1-cpu0)
		report(mode, "udp request/reply", udp, cpu2-cpu1)
		e.stopDaemons()
	}
	return nil
}

func report(mode, what string, d []time.Duration, cpu time.Duration) {
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))] }
	fmt.Printf("%-8s %-18s n=%d median=%v p90=%v p99=%v max=%v cpu_per_conn=%v\n", mode, what, len(d),
		q(0.5).Round(time.Microsecond), q(0.9).Round(time.Microsecond), q(0.99).Round(time.Microsecond),
		d[len(d)-1].Round(time.Microsecond), (cpu / time.Duration(len(d))).Round(100*time.Nanosecond))
}

func (e *env) topology() error {
	for _, ns := range []string{"cl", "sv", "sw", "fa", "fb"} {
		if err := sh("ip", "netns", "add", e.ns(ns)); err != nil {
			return err
		}
		if err := e.in(ns, "ip", "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	cmds := [][]string{
		{"sw", "ip", "link", "add", "brc", "type", "bridge"}, {"sw", "ip", "link", "set", "brc", "up"},
		{"sw", "ip", "link", "add", "brs", "type", "bridge"}, {"sw", "ip", "link", "set", "brs", "up"},
	}
	// veth pairs: (ns, ifname, addr) ↔ switch port on a bridge.
	links := []struct{ ns, ifc, addr, port, br string }{
		{"cl", "eth0", "10.0.1.2/24", "pc", "brc"},
		{"sv", "eth0", "10.0.2.2/24", "ps", "brs"},
		{"fa", "lan0", "10.0.1.11/24", "pa0", "brc"},
		{"fa", "lan1", "10.0.2.11/24", "pa1", "brs"},
		{"fb", "lan0", "10.0.1.12/24", "pb0", "brc"},
		{"fb", "lan1", "10.0.2.12/24", "pb1", "brs"},
	}
	for _, l := range links {
		cmds = append(cmds,
			[]string{"sw", "ip", "link", "add", l.port, "type", "veth", "peer", "name", l.ifc, "netns", e.ns(l.ns)},
			[]string{"sw", "ip", "link", "set", l.port, "master", l.br}, []string{"sw", "ip", "link", "set", l.port, "up"},
			[]string{l.ns, "ip", "addr", "add", l.addr, "dev", l.ifc}, []string{l.ns, "ip", "link", "set", l.ifc, "up"})
	}
	cmds = append(cmds,
		[]string{"fa", "ip", "link", "add", "sync0", "type", "veth", "peer", "name", "sync0", "netns", e.ns("fb")},
		[]string{"fa", "ip", "addr", "add", "10.200.0.1/24", "dev", "sync0"}, []string{"fa", "ip", "link", "set", "sync0", "up"},
		[]string{"fb", "ip", "addr", "add", "10.200.0.2/24", "dev", "sync0"}, []string{"fb", "ip", "link", "set", "sync0", "up"},
		[]string{"cl", "ip", "route", "add", "default", "via", "10.0.1.11"},
		[]string{"sv", "ip", "route", "add", "default", "via", "10.0.2.11"},
	)
	for _, fw := range []string{"fa", "fb"} {
		cmds = append(cmds, []string{fw, "sysctl", "-qw", "net.ipv4.ip_forward=1",
			"net.netfilter.nf_conntrack_tcp_loose=0", "net.netfilter.nf_conntrack_events=1"})
	}
	for _, c := range cmds {
		if err := e.in(c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// rules returns the IPv4 ruleset of a mode: the example for defer, the
// same with ACCEPT in place of NFQUEUE for the baseline.
func rules(mode string) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "configs", "active-active.rules"))
	if err != nil {
		return "", err
	}
	r := string(b)
	if mode == "baseline" {
		r = strings.ReplaceAll(r, "-j NFQUEUE --queue-num 0 --queue-bypass", "-j ACCEPT")
	}
	return r, nil
}

func (e *env) mode(mode, timeout string) error {
	gw := "10.0.2.12" // asymmetric: replies through fw-b
	if mode == "baseline" {
		gw = "10.0.2.11"
	}
	if err := e.in("sv", "ip", "route", "replace", "default", "via", gw); err != nil {
		return err
	}
	r, err := rules(mode)
	if err != nil {
		return err
	}
	for i, fw := range []string{"fa", "fb"} {
		c := exec.Command("ip", "netns", "exec", e.ns(fw), "iptables-legacy-restore")
		c.Stdin = strings.NewReader(r)
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("iptables-legacy-restore: %v: %s", err, out)
		}
		if err := e.in(fw, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0", "net.netfilter.nf_conntrack_events=1"); err != nil {
			return err
		}
		if err := e.in(fw, "conntrack", "-F"); err != nil {
			return err
		}
		if err := e.startDaemon(fw, i, mode == "defer", timeout); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) startDaemon(fw string, i int, deferOn bool, timeout string) error {
	self, peer := "10.200.0.1", "10.200.0.2"
	if i == 1 {
		self, peer = peer, self
	}
	dir := filepath.Join(e.dir, fw)
	os.MkdirAll(dir, 0o700)
	key := filepath.Join(e.dir, "sync.key")
	if _, err := os.Stat(key); err != nil {
		k := make([]byte, 32)
		rand.Read(k)
		if err := os.WriteFile(key, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
			return err
		}
	}
	cfg := fmt.Sprintf(`[node]
name = "%s"
[control]
socket = "%s/ctsyncd.sock"
[sync]
listen = "%s:3780"
peers = ["%s:3780"]
key_file = "%s"
inject = true
[defer]
enabled = %v
defer_timeout = %q
[log]
level = "warn"
`, fw, dir, self, peer, key, deferOn, timeout)
	path := filepath.Join(dir, "ctsyncd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	c := exec.Command("ip", "netns", "exec", e.ns(fw), e.bin, "--config", path)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	if err := c.Start(); err != nil {
		return err
	}
	e.procs = append(e.procs, c)
	return nil
}

func (e *env) stopDaemons() {
	for _, c := range e.procs {
		c.Process.Signal(unix.SIGTERM)
		c.Wait()
	}
	e.procs = nil
}

// cpu returns the user+system time of the running daemons.
func (e *env) cpu() time.Duration {
	var total time.Duration
	tick := time.Second / 100 // USER_HZ
	for _, c := range e.procs {
		// ip netns exec execs ctsyncd: the pid is the daemon's.
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.Process.Pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.Atoi(f[11])
		st, _ := strconv.Atoi(f[12])
		total += time.Duration(ut+st) * tick
	}
	return total
}

func (e *env) cleanup() {
	e.stopDaemons()
	for _, ns := range []string{"cl", "sv", "sw", "fa", "fb"} {
		exec.Command("ip", "netns", "del", e.ns(ns)).Run()
	}
}

// inNS runs fn on a thread switched into namespace ns.
func (e *env) inNS(ns string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(orig)
	fd, err := unix.Open("/run/netns/"+e.ns(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return err
	}
	defer unix.Setns(orig, unix.CLONE_NEWNET)
	return fn()
}

// echo serves TCP (accept, echo, close) and UDP echo on the server.
func (e *env) echo() (func(), error) {
	var ln net.Listener
	var pc net.PacketConn
	err := e.inNS("sv", func() error {
		var err error
		if ln, err = net.Listen("tcp", ":7000"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ":7001")
		return err
	})
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	go func() {
		b := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			pc.WriteTo(b[:n], from)
		}
	}()
	return func() { ln.Close(); pc.Close() }, nil
}

func (e *env) measure(n int, once func() (time.Duration, error)) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	for range n {
		d, err := once()
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

func (e *env) tcpOnce() (time.Duration, error) {
	var d time.Duration
	err := e.inNS("cl", func() error {
		start := time.Now()
		c, err := net.DialTimeout("tcp", "10.0.2.2:7000", 5*time.Second)
		d = time.Since(start)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return d, err
}

func (e *env) udpOnce() (time.Duration, error) {
	var c net.Conn
	if err := e.inNS("cl", func() error {
		var err error
		c, err = net.Dial("udp", "10.0.2.2:7001")
		return err
	}); err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := c.Write([]byte("req")); err != nil {
		return 0, err
	}
	b := make([]byte, 8)
	if _, err := c.Read(b); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return strings.TrimRight(string(u.Release[:]), "\x00")
}
