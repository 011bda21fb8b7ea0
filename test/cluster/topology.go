// Package cluster is ctsyncd's cluster test tier: an HA pair of firewalls
// in network namespaces, with real keepalived moving the virtual addresses,
// real nftables and real conntrack, and traffic through it whose survival
// across a failover the tests measure.
//
// Topology (New):
//
//	            switch namespace "sw": bridges brc and brs
//	client eth0 ─┐                                   ┌─ server eth0
//	 10.0.1.2    │ brc                          brs  │  10.0.2.2
//	 fd00:1::2   ├── fwA lan0 .11 ── fwA ── lan1 .11 ┤  fd00:2::2
//	             └── fwB lan0 .12 ── fwB ── lan1 .12 ┘
//	                   fwA sync0 10.200.0.1 ── 10.200.0.2 sync0 fwB
//	                         fd00:200::1        fd00:200::2
//
// VIPs 10.0.1.1/fd00:1::1 (client side) and 10.0.2.1/fd00:2::1 (server
// side) are the client's and the server's default gateways; keepalived on
// each firewall moves them (one vrrp_sync_group over VI_LAN0 and VI_LAN1,
// VRRPv3 with 200 ms adverts so that a takeover needs ~1 s). The firewalls
// forward with a policy-drop chain that accepts only ct state
// established,related plus new TCP SYNs and new UDP from the client side,
// and run with nf_conntrack_tcp_loose=0, so a flow the standby does not
// know is dropped there: without replication, established streams break
// on failover (TestClusterVRRP proves it), which is what lets the failover
// tests fail.
//
// This package is not ctsyncd: Options.Setup is the hook where a test starts
// ctsyncd on each firewall, and Options.Notify the notify command keepalived
// runs. Every namespace and process is removed in t.Cleanup. The tier needs
// root (it skips without, and fails under CI=true) and runs with -p 1.
package cluster

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// Addresses of the topology.
const (
	ClientV4 = "10.0.1.2"
	ClientV6 = "fd00:1::2"
	ServerV4 = "10.0.2.2"
	ServerV6 = "fd00:2::2"
	// VIPs: the gateways keepalived moves.
	ClientVIPv4 = "10.0.1.1"
	ClientVIPv6 = "fd00:1::1"
	ServerVIPv4 = "10.0.2.1"
	ServerVIPv6 = "fd00:2::1"
	// Sync link addresses of fwA and fwB.
	SyncA   = "10.200.0.1"
	SyncB   = "10.200.0.2"
	SyncAv6 = "fd00:200::1"
	SyncBv6 = "fd00:200::2"
)

// WaitTimeout is the deadline of the convergence waits (docs/ARCHITECTURE.md,
// "Test tiers": a minute or more).
const WaitTimeout = 60 * time.Second

// Options configure New. The zero value is a pair with no NAT and no
// ctsyncd.
type Options struct {
	// SNAT makes the firewalls translate client-side sources to the
	// server-side VIP (`snat to 10.0.2.1`, never masquerade: a firewall's
	// own address dies with it).
	SNAT bool
	// Notify, if set, returns the notify command keepalived runs on fw's
	// sync group (e.g. "/path/ctsyncctl --socket S keepalived"); it must
	// be an absolute path owned by root and not writable by others
	// (enable_script_security).
	Notify func(fw *Firewall) string
	// TrackFile, if set, returns the path of fw's readiness file, tracked
	// by the sync group with weight -60 (see configs/keepalived.conf; -60
	// so that fw-a, 150, drops below fw-b, 100, while not ready).
	TrackFile func(fw *Firewall) string
	// Setup, if set, runs for each firewall after its namespace, links and
	// ruleset exist and before keepalived starts: the place to start
	// ctsyncd there.
	Setup func(t testing.TB, fw *Firewall)
	// NoKeepalived leaves keepalived stopped; start it with
	// StartKeepalived.
	NoKeepalived bool
	// Ruleset, when set, is loaded on the firewalls instead of
	// Ruleset(SNAT) (e.g. HelperRuleset).
	Ruleset string
}

// Topology is an HA pair between a client and a server.
type Topology struct {
	Client, Server, Switch *netnstest.NS
	A, B                   *Firewall
	opts                   Options
	dir                    string

	keyOnce sync.Once // writes the sync key file
	keyErr  error
}

// Firewall is one node of the pair.
type Firewall struct {
	// Name is "fw-a" or "fw-b".
	Name string
	NS   *netnstest.NS
	// SyncAddr and PeerSyncAddr are the IPv4 sync link addresses of this
	// node and of the other.
	SyncAddr, PeerSyncAddr string
	// Priority is the node's VRRP priority (fw-a 150, fw-b 100).
	Priority int
	// Dir is a directory private to this firewall (configs, pid files,
	// logs).
	Dir string

	topo *Topology
	// mu guards the keepalived process fields.
	mu   sync.Mutex
	ka   *exec.Cmd
	kLog *lockedBuffer
	kEnd chan struct{} // closed when ka has exited
	dead bool          // killed by KillFirewall
}

// Firewalls returns both firewalls.
func (tp *Topology) Firewalls() []*Firewall { return []*Firewall{tp.A, tp.B} }

// Other returns the other firewall.
func (tp *Topology) Other(fw *Firewall) *Firewall {
	if fw == tp.A {
		return tp.B
	}
	return tp.A
}

// New builds the topology, loads the firewalls' rulesets, runs
// opts.Setup on each firewall and starts keepalived on both (unless
// opts.NoKeepalived). It does not wait for an election: use WaitMaster.
func New(t testing.TB, opts Options) *Topology {
	t.Helper()
	netnstest.RequireRoot(t)
	netnstest.Need(t, "ip", "nft", "sysctl", "keepalived")
	dir := t.TempDir()
	// keepalived's enable_script_security refuses scripts and files under
	// a directory others may write; t.TempDir is 0700 below /tmp, fine.
	tp := &Topology{opts: opts, dir: dir}
	tp.Client, tp.Server, tp.Switch = netnstest.New(t), netnstest.New(t), netnstest.New(t)
	tp.A = &Firewall{Name: "fw-a", NS: netnstest.New(t), SyncAddr: SyncA, PeerSyncAddr: SyncB, Priority: 150, topo: tp}
	tp.B = &Firewall{Name: "fw-b", NS: netnstest.New(t), SyncAddr: SyncB, PeerSyncAddr: SyncA, Priority: 100, topo: tp}
	for _, fw := range tp.Firewalls() {
		fw.Dir = filepath.Join(dir, fw.Name)
		if err := os.Mkdir(fw.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []*netnstest.NS{tp.Client, tp.Server, tp.A.NS, tp.B.NS} {
		// No duplicate address detection: VIPs must work the moment
		// keepalived adds them.
		ns.Exec(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}

	sw := tp.Switch
	for _, br := range []string{"brc", "brs"} {
		// No multicast snooping: VRRP's multicast must reach both nodes.
		sw.Exec(t, "ip", "link", "add", br, "type", "bridge", "mcast_snooping", "0")
		sw.Exec(t, "ip", "link", "set", br, "up")
	}
	port := func(ifc, br string) { sw.Exec(t, "ip", "link", "set", ifc, "master", br) }
	netnstest.Veth(t, tp.Client, "eth0", ClientV4+"/24,"+ClientV6+"/64", sw, "pc", "")
	port("pc", "brc")
	netnstest.Veth(t, tp.Server, "eth0", ServerV4+"/24,"+ServerV6+"/64", sw, "ps", "")
	port("ps", "brs")
	for i, fw := range tp.Firewalls() {
		host := 11 + i
		netnstest.Veth(t, fw.NS, "lan0", fmt.Sprintf("10.0.1.%d/24,fd00:1::%d/64", host, host), sw, "p0"+fw.Name[3:], "")
		port("p0"+fw.Name[3:], "brc")
		netnstest.Veth(t, fw.NS, "lan1", fmt.Sprintf("10.0.2.%d/24,fd00:2::%d/64", host, host), sw, "p1"+fw.Name[3:], "")
		port("p1"+fw.Name[3:], "brs")
	}
	netnstest.Veth(t, tp.A.NS, "sync0", SyncA+"/24,"+SyncAv6+"/64", tp.B.NS, "sync0", SyncB+"/24,"+SyncBv6+"/64")

	tp.Client.Exec(t, "ip", "route", "add", "default", "via", ClientVIPv4)
	tp.Client.Exec(t, "ip", "-6", "route", "add", "default", "via", ClientVIPv6)
	tp.Server.Exec(t, "ip", "route", "add", "default", "via", ServerVIPv4)
	tp.Server.Exec(t, "ip", "-6", "route", "add", "default", "via", ServerVIPv6)

	for _, fw := range tp.Firewalls() {
		fw.NS.Exec(t, "sysctl", "-qw",
			"net.ipv4.ip_forward=1",
			"net.ipv6.conf.all.forwarding=1",
			"net.netfilter.nf_conntrack_tcp_loose=0",
			"net.netfilter.nf_conntrack_events=1")
		rs := Ruleset(opts.SNAT)
		if opts.Ruleset != "" {
			rs = opts.Ruleset
		}
		fw.NS.Nft(t, rs)
	}
	for _, fw := range tp.Firewalls() {
		if opts.Setup != nil {
			opts.Setup(t, fw)
		}
	}
	for _, fw := range tp.Firewalls() {
		fw.writeKeepalivedConf(t)
		if !opts.NoKeepalived {
			fw.StartKeepalived(t)
		}
	}
	return tp
}

// Ruleset is the firewalls' nftables ruleset: forward drops everything but
// established/related flows and new connections from the client side (TCP
// SYNs, UDP, pings). Input, as on a real firewall, accepts only loopback,
// VRRP, neighbour discovery, pings, the sync link and established flows:
// traffic for a flow the node does not know yet, addressed to a VIP it just
// took (server replies under SNAT), is dropped rather than answered with a
// RST or a port unreachable, and leaves no conntrack entry that would clash
// with the flow committed a moment later. With snat, client traffic leaves
// with the server-side VIP as source.
func Ruleset(snat bool) string {
	r := `table inet fw {
	chain input {
		type filter hook input priority filter; policy drop;
		iifname "lo" accept
		ct state established,related accept
		meta l4proto vrrp accept
		meta l4proto { icmp, ipv6-icmp } accept
		iifname "sync0" accept
		counter comment "input dropped"
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "lan0" tcp flags & (fin|syn|rst|ack) == syn ct state new accept
		iifname "lan0" meta l4proto udp ct state new accept
		iifname "lan0" meta l4proto { icmp, ipv6-icmp } ct state new accept
		counter comment "dropped"
	}
`
	if snat {
		r += `	chain postrouting {
		type nat hook postrouting priority srcnat;
		oifname "lan1" meta nfproto ipv4 snat ip to ` + ServerVIPv4 + `
		oifname "lan1" meta nfproto ipv6 snat ip6 to ` + ServerVIPv6 + `
	}
`
	}
	return r + "}\n"
}

// keepalivedConf is the template of a firewall's keepalived.conf: the
// shape of configs/keepalived.conf with VRRPv3 and 200 ms adverts so that
// a takeover needs about a second.
const keepalivedConf = `global_defs {
	router_id {{name}}
	script_user root
	enable_script_security
	vrrp_version 3
	vrrp_garp_master_delay 1
	vrrp_garp_master_repeat 3
	vrrp_garp_master_refresh 1
}
{{trackfile}}
vrrp_sync_group FW {
	group {
		VI_LAN0
		VI_LAN1
	}
{{grouptrack}}{{notify}}}

vrrp_instance VI_LAN0 {
	state BACKUP
	interface lan0
	virtual_router_id 51
	priority {{prio}}
	advert_int 0.2
	virtual_ipaddress {
		10.0.1.1/24 dev lan0
	}
	virtual_ipaddress_excluded {
		fd00:1::1/64 dev lan0
	}
}

vrrp_instance VI_LAN1 {
	state BACKUP
	interface lan1
	virtual_router_id 52
	priority {{prio}}
	advert_int 0.2
	virtual_ipaddress {
		10.0.2.1/24 dev lan1
	}
	virtual_ipaddress_excluded {
		fd00:2::1/64 dev lan1
	}
}
`

func (fw *Firewall) confPath() string { return filepath.Join(fw.Dir, "keepalived.conf") }

func (fw *Firewall) writeKeepalivedConf(t testing.TB) {
	t.Helper()
	opts := fw.topo.opts
	notify, track, gtrack := "", "", ""
	if opts.Notify != nil {
		notify = fmt.Sprintf("\tnotify %q\n", opts.Notify(fw))
	}
	if opts.TrackFile != nil {
		track = fmt.Sprintf("\ntrack_file ctsyncd_ready {\n\tfile %q\n\tweight -60\n\tinit_file 1\n}\n", opts.TrackFile(fw))
		gtrack = "\tsync_group_tracking_weight\n\ttrack_file {\n\t\tctsyncd_ready weight -60\n\t}\n"
	}
	conf := strings.NewReplacer("{{name}}", fw.Name, "{{prio}}", fmt.Sprint(fw.Priority),
		"{{notify}}", notify, "{{trackfile}}", track, "{{grouptrack}}", gtrack).Replace(keepalivedConf)
	if err := os.WriteFile(fw.confPath(), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
}

// StartKeepalived starts keepalived (VRRP only, in the foreground, logging
// to the console) in fw's namespace. It is stopped in t.Cleanup.
func (fw *Firewall) StartKeepalived(t testing.TB) {
	t.Helper()
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.ka != nil {
		t.Fatalf("%s: keepalived already running", fw.Name)
	}
	// Unique pid files per node; without them the second keepalived
	// thinks the first is itself and refuses to start. A keepalived killed
	// by KillFirewall leaves its VRRP child reparented and possibly not yet
	// reaped: its pid still exists, and a restart would find it in the old
	// pid file ("daemon is already running"). Start with no pid files.
	os.Remove(filepath.Join(fw.Dir, "keepalived.pid"))
	os.Remove(filepath.Join(fw.Dir, "vrrp.pid"))
	cmd := fw.NS.Cmd("keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
		"--dont-respawn",
		"--use-file", fw.confPath(),
		"--pid", filepath.Join(fw.Dir, "keepalived.pid"),
		"--vrrp_pid", filepath.Join(fw.Dir, "vrrp.pid"))
	buf := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	// Own process group: KillFirewall kills the VRRP child too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start keepalived: %v", fw.Name, err)
	}
	end := make(chan struct{})
	go func() {
		cmd.Wait()
		close(end)
	}()
	fw.ka, fw.kLog, fw.kEnd = cmd, buf, end
	t.Cleanup(func() {
		fw.stopKeepalived(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("%s keepalived log:\n%s", fw.Name, buf.String())
		}
	})
}

// StopKeepalived stops fw's keepalived gracefully (SIGTERM): it gives up
// the VIPs and sends a priority-0 advert, so the other node takes over at
// once.
func (fw *Firewall) StopKeepalived(t testing.TB) {
	t.Helper()
	if !fw.stopKeepalived(syscall.SIGTERM) {
		t.Errorf("%s: keepalived did not stop", fw.Name)
	}
}

// stopKeepalived signals the process group and waits for the exit, at
// most 10 s, then kills it. It reports whether the process ended in time.
func (fw *Firewall) stopKeepalived(sig syscall.Signal) bool {
	fw.mu.Lock()
	cmd, end := fw.ka, fw.kEnd
	fw.ka = nil
	fw.mu.Unlock()
	if cmd == nil {
		return true
	}
	syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-end:
		return true
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-end
		return false
	}
}

// KeepalivedLog returns what fw's keepalived logged so far.
func (fw *Firewall) KeepalivedLog() string {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.kLog == nil {
		return ""
	}
	return fw.kLog.String()
}

// KillFirewall makes fw a dead box: all its links go down at once, so it
// neither forwards nor answers, and its keepalived is killed (SIGKILL, no
// goodbye advert, VIPs left configured as on a crashed machine).
// Processes started by Setup keep running but are cut off. It returns the
// time the box died (its links down): pass it to Stream.Survived.
func (tp *Topology) KillFirewall(t testing.TB, fw *Firewall) time.Time {
	t.Helper()
	fw.NS.Exec(t, "sh", "-c", "ip link set lan0 down; ip link set lan1 down; ip link set sync0 down")
	dead := time.Now()
	fw.stopKeepalived(syscall.SIGKILL)
	fw.mu.Lock()
	fw.dead = true
	fw.mu.Unlock()
	return dead
}

// Revive brings a firewall killed by KillFirewall back: links up, then
// keepalived (which starts as BACKUP; fw-a, with the higher priority,
// takes the VIPs back unless told otherwise). Processes started by Setup
// were never stopped.
func (tp *Topology) Revive(t testing.TB, fw *Firewall) {
	t.Helper()
	fw.NS.Exec(t, "sh", "-c", "ip link set lan0 up; ip link set lan1 up; ip link set sync0 up")
	fw.mu.Lock()
	fw.dead = false
	fw.mu.Unlock()
	fw.StartKeepalived(t)
}

// HasVIPs reports whether fw holds the VIPs on both LANs, IPv4 and IPv6.
func (fw *Firewall) HasVIPs(t testing.TB) bool {
	t.Helper()
	v0 := fw.NS.Exec(t, "ip", "-o", "addr", "show", "dev", "lan0")
	v1 := fw.NS.Exec(t, "ip", "-o", "addr", "show", "dev", "lan1")
	return strings.Contains(v0, " "+ClientVIPv4+"/") && strings.Contains(v0, " "+ClientVIPv6+"/") &&
		strings.Contains(v1, " "+ServerVIPv4+"/") && strings.Contains(v1, " "+ServerVIPv6+"/")
}

// hasAnyVIP reports whether fw holds any VIP.
func (fw *Firewall) hasAnyVIP(t testing.TB) bool {
	t.Helper()
	out := fw.NS.Exec(t, "ip", "-o", "addr", "show")
	for _, a := range []string{ClientVIPv4, ClientVIPv6, ServerVIPv4, ServerVIPv6} {
		if strings.Contains(out, " "+a+"/") {
			return true
		}
	}
	return false
}

// WaitMaster waits until fw holds every VIP and the other firewall, unless
// it is dead, holds none; it fails t after WaitTimeout. It returns how long
// it waited.
func (tp *Topology) WaitMaster(t testing.TB, fw *Firewall) time.Duration {
	t.Helper()
	start := time.Now()
	other := tp.Other(fw)
	for {
		other.mu.Lock()
		dead := other.dead
		other.mu.Unlock()
		if fw.HasVIPs(t) && (dead || !other.hasAnyVIP(t)) {
			return time.Since(start)
		}
		if time.Since(start) > WaitTimeout {
			t.Fatalf("%s did not become master within %v\n%s keepalived:\n%s\n%s keepalived:\n%s",
				fw.Name, WaitTimeout, fw.Name, fw.KeepalivedLog(), other.Name, other.KeepalivedLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Dropped returns the packet count of the forward chain's final counter:
// what fw refused to forward.
func (fw *Firewall) Dropped(t testing.TB) int {
	t.Helper()
	out := fw.NS.Exec(t, "nft", "list", "chain", "inet", "fw", "forward")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `comment "dropped"`) {
			var n int
			if i := strings.Index(line, "packets "); i >= 0 {
				fmt.Sscanf(line[i+len("packets "):], "%d", &n)
			}
			return n
		}
	}
	t.Fatalf("%s: no drop counter in\n%s", fw.Name, out)
	return 0
}

// lockedBuffer is a bytes.Buffer safe for a writing process and readers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
