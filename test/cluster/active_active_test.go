//go:build cluster

package cluster

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// Active-active: both firewalls forward, the paths are asymmetric. The
// client's gateway is fw-a (10.0.1.11), the server's fw-b (10.0.2.12):
// client → server goes through fw-a, server → client through fw-b. Each
// firewall runs the example ruleset configs/active-active.rules (and its
// IPv6 twin) with iptables-legacy: policy drop, new flows only from the
// client side and only through the NFQUEUE of first-packet defer, then
// established/related; nf_conntrack_tcp_loose=0 (set by New).

// asym is the asymmetric topology with its echo servers.
type asym struct {
	*Topology
	daemonBin, ctlBin string
	udpSeen           atomic.Int64 // UDP requests the server received
}

const (
	asymTCPPort = 7000
	asymUDPPort = 7001
)

func newAsym(t *testing.T) *asym {
	t.Helper()
	netnstest.Need(t, "iptables-legacy-restore", "ip6tables-legacy-restore")
	a := &asym{}
	a.daemonBin, a.ctlBin = daemontest.Binaries(t)
	a.Topology = New(t, Options{NoKeepalived: true})
	a.Client.Exec(t, "ip", "route", "replace", "default", "via", "10.0.1.11")
	a.Client.Exec(t, "ip", "-6", "route", "replace", "default", "via", "fd00:1::11")
	a.Server.Exec(t, "ip", "route", "replace", "default", "via", "10.0.2.12")
	a.Server.Exec(t, "ip", "-6", "route", "replace", "default", "via", "fd00:2::12")
	_, file, _, _ := runtime.Caller(0)
	configs := filepath.Join(filepath.Dir(file), "..", "..", "configs")
	for _, fw := range a.Firewalls() {
		// The harness's nftables forward chain gives way to the example's.
		fw.NS.Exec(t, "nft", "delete", "chain", "inet", "fw", "forward")
		for cmd, f := range map[string]string{"iptables-legacy-restore": "active-active.rules", "ip6tables-legacy-restore": "active-active6.rules"} {
			c := fw.NS.Cmd(cmd)
			in, err := os.Open(filepath.Join(configs, f))
			if err != nil {
				t.Fatal(err)
			}
			c.Stdin = in
			out, err := c.CombinedOutput()
			in.Close()
			if err != nil {
				t.Fatalf("%s: %s < %s: %v\n%s", fw.Name, cmd, f, err, out)
			}
		}
	}
	a.serve(t)
	return a
}

// serve starts the TCP and UDP echo servers in the server's namespace.
func (a *asym) serve(t *testing.T) {
	var ln net.Listener
	var pc net.PacketConn
	var err error
	a.Server.Do(t, func() {
		if ln, err = net.Listen("tcp", fmt.Sprintf(":%d", asymTCPPort)); err == nil {
			pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", asymUDPPort))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				b := make([]byte, 64)
				if n, err := c.Read(b); err == nil {
					c.Write(b[:n])
				}
			}()
		}
	}()
	go func() {
		b := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			a.udpSeen.Add(1)
			pc.WriteTo(b[:n], from)
		}
	}()
}

// start runs ctsyncd on fw with inject and defer; peerTimeout and the
// defer timeout as given.
func (a *asym) start(t *testing.T, fw *Firewall, deferTimeout, peerTimeout string) *Process {
	t.Helper()
	cfg := fw.CtsyncdConfig(t, "udp", fmt.Sprintf("[defer]\nenabled = true\nqueue = 0\ndefer_timeout = %q\n", deferTimeout))
	patchSync(t, cfg, fmt.Sprintf("inject = true\npeer_timeout = %q\n", peerTimeout))
	p := fw.Start(t, "ctsyncd", a.daemonBin, "--config", cfg)
	daemontest.WaitFor(t, WaitTimeout, fw.Name+"'s ctsyncd to answer", func() (bool, string) {
		_, err := ctlRun(a.ctlBin, fw, "status")
		return err == nil && !p.Exited(), fmt.Sprint(err, p.Log())
	})
	return p
}

// patchSync adds lines to the [sync] table of a config CtsyncdConfig wrote.
func patchSync(t testing.TB, path, lines string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "[sync]\n", "[sync]\n"+lines, 1)
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func ctlRun(ctl string, fw *Firewall, args ...string) (string, error) {
	out, err := fw.NS.Cmd(append([]string{ctl, "--socket", fw.Socket()}, args...)...).CombinedOutput()
	return string(out), err
}

// stats reads fw's `ctsyncctl --json stats`.
func (a *asym) stats(t testing.TB, fw *Firewall) map[string]any {
	t.Helper()
	out, err := ctlRun(a.ctlBin, fw, "--json", "stats")
	if err != nil {
		t.Fatalf("%s: stats: %v\n%s", fw.Name, err, out)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%s: stats: %v\n%s", fw.Name, err, out)
	}
	return m
}

// deferCount returns one counter of fw's defer stats.
func (a *asym) deferCount(t testing.TB, fw *Firewall, name string) int {
	d, _ := a.stats(t, fw)["defer"].(map[string]any)
	v, _ := d[name].(float64)
	return int(v)
}

// waitPeers waits until each firewall's ctsyncd has the other up and has
// received its bulk.
func (a *asym) waitPeers(t *testing.T) {
	for _, fw := range a.Firewalls() {
		daemontest.WaitFor(t, WaitTimeout, fw.Name+" to see its peer", func() (bool, string) {
			p, _ := a.stats(t, fw)["peers"].(map[string]any)
			peer, _ := p[a.Other(fw).Name].(map[string]any)
			up, _ := peer["up"].(bool)
			bulks, _ := peer["bulks_received"].(float64)
			return up && bulks > 0, fmt.Sprint(peer)
		})
	}
}

// tcpOnce opens a new TCP connection to the server, echoes a line and
// closes it.
func (a *asym) tcpOnce(t *testing.T, v6 bool, timeout time.Duration) error {
	host := ServerV4
	if v6 {
		host = ServerV6
	}
	addr := net.JoinHostPort(host, strconv.Itoa(asymTCPPort))
	var c net.Conn
	var err error
	a.Client.Do(t, func() { c, err = (&net.Dialer{Timeout: timeout}).Dial("tcp", addr) })
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	b := make([]byte, 8)
	n, err := c.Read(b)
	if err != nil {
		return err
	}
	if string(b[:n]) != "ping" {
		return fmt.Errorf("echo %q", b[:n])
	}
	return nil
}

// udpOnce sends one request from a new socket (a new flow) and waits for
// the reply.
func (a *asym) udpOnce(t *testing.T, v6 bool, timeout time.Duration) error {
	return a.udpFrom(t, v6, 0, timeout)
}

// udpFrom is udpOnce from local port lport (0: an ephemeral one, which may
// be one whose flow from an earlier request is still tracked).
func (a *asym) udpFrom(t *testing.T, v6 bool, lport int, timeout time.Duration) error {
	host := ServerV4
	if v6 {
		host = ServerV6
	}
	addr := net.JoinHostPort(host, strconv.Itoa(asymUDPPort))
	var c net.Conn
	var err error
	d := net.Dialer{LocalAddr: &net.UDPAddr{Port: lport}}
	a.Client.Do(t, func() { c, err = d.Dial("udp", addr) })
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("req")); err != nil {
		return err
	}
	b := make([]byte, 8)
	if _, err := c.Read(b); err != nil {
		return err
	}
	return nil
}

// dropped returns the packets both firewalls' forward chains dropped by
// their policy (IPv4 and IPv6): a SYN-ACK without state at fw-b, a
// client's ACK or data that is INVALID at fw-a.
func (a *asym) dropped(t *testing.T) int {
	total := 0
	for _, fw := range a.Firewalls() {
		for _, cmd := range []string{"iptables-legacy", "ip6tables-legacy"} {
			out := fw.NS.Exec(t, cmd, "-L", "FORWARD", "-v", "-x", "-n")
			// "Chain FORWARD (policy DROP 12 packets, 720 bytes)"
			f := strings.Fields(strings.SplitN(out, "\n", 2)[0])
			if len(f) < 5 || f[3] != "DROP" {
				t.Fatalf("%s: %s: unexpected header %q", fw.Name, cmd, f)
			}
			n, err := strconv.Atoi(f[4])
			if err != nil {
				t.Fatalf("%s: %s: %v", fw.Name, cmd, err)
			}
			total += n
		}
	}
	return total
}

// TestClusterActiveActive: on the asymmetric topology,
//   - control: without ctsyncd, new TCP connections and UDP request/replies
//     fail (the reply path's firewall has no state);
//   - with inject and defer on both firewalls, 100 new TCP connections and
//     100 UDP request/replies in a row all succeed (IPv4; and 10 + 10 over
//     IPv6), and neither firewall dropped a packet (without the SYN-ACK's
//     defer the client's ACK and first data are INVALID at fw-a, and only
//     retransmissions rescue the connections);
//   - with fw-b's daemon dead (and still counted up by fw-a), fw-a holds
//     each first packet for defer_timeout, then releases it: the requests
//     reach the server (fail-open), and the timed_out counter shows it.
func TestClusterActiveActive(t *testing.T) {
	a := newAsym(t)

	t.Run("control", func(t *testing.T) {
		for i := range 2 {
			// 2.5 s: the SYN is retransmitted once, at 1 s.
			if err := a.tcpOnce(t, false, 2500*time.Millisecond); err == nil {
				t.Fatalf("TCP connection %d succeeded without ctsyncd: the test cannot fail", i)
			}
			if err := a.udpOnce(t, false, time.Second); err == nil {
				t.Fatalf("UDP request %d answered without ctsyncd: the test cannot fail", i)
			}
		}
	})

	// A generous defer_timeout: this run checks correctness on a loaded
	// machine; the benchmark (bench/defer) measures the latency.
	pa := a.start(t, a.A, "1s", "30s")
	pb := a.start(t, a.B, "1s", "30s")
	a.waitPeers(t)

	t.Run("inject+defer", func(t *testing.T) {
		drops := a.dropped(t)
		for _, c := range []struct {
			v6 bool
			n  int
		}{{false, 100}, {true, 10}} {
			for i := range c.n {
				if err := a.tcpOnce(t, c.v6, 10*time.Second); err != nil {
					t.Fatalf("TCP connection %d (v6 %v): %v", i, c.v6, err)
				}
			}
			for i := range c.n {
				if err := a.udpOnce(t, c.v6, 5*time.Second); err != nil {
					t.Fatalf("UDP request %d (v6 %v): %v", i, c.v6, err)
				}
			}
		}
		if d := a.dropped(t) - drops; d != 0 {
			t.Errorf("the firewalls dropped %d packets: part of a handshake came before its state", d)
		}
		da, db := a.stats(t, a.A)["defer"], a.stats(t, a.B)["defer"]
		t.Logf("fw-a defer: %v\nfw-b defer: %v", da, db)
		// Every SYN is a new flow; a UDP socket may get a source port whose
		// flow from an earlier request is still tracked (not new: not
		// queued), so the UDP requests are not counted.
		if n := a.deferCount(t, a.A, "acked_in_time"); n < 110 {
			t.Errorf("fw-a: %d first packets acknowledged in time, want at least 110 (the SYNs)", n)
		}
		if n := a.deferCount(t, a.B, "acked_in_time"); n < 110 {
			t.Errorf("fw-b: %d SYN-ACKs acknowledged in time, want at least 110", n)
		}
	})

	t.Run("peer-dead-fail-open", func(t *testing.T) {
		// Restart fw-a's daemon with a short defer_timeout; fw-b's dies.
		pa.Stop()
		pb.Stop()
		a.start(t, a.A, "100ms", "30s")
		pb = a.start(t, a.B, "100ms", "30s")
		a.waitPeers(t)
		pb.Stop()
		before, seen := a.deferCount(t, a.A, "timed_out"), a.udpSeen.Load()
		const n = 10
		answered := 0
		for i := range n {
			// Ports below the ephemeral range: flows never seen before.
			if a.udpFrom(t, false, 20000+i, 500*time.Millisecond) == nil {
				answered++
			}
		}
		timedOut := a.deferCount(t, a.A, "timed_out") - before
		got := a.udpSeen.Load() - seen
		t.Logf("fw-a defer: %v; server got %d of %d; client got %d replies", a.stats(t, a.A)["defer"], got, n, answered)
		if got != n {
			t.Errorf("server received %d of %d requests: held packets were not released", got, n)
		}
		if timedOut < n {
			t.Errorf("timed_out rose by %d, want %d", timedOut, n)
		}
	})
}
