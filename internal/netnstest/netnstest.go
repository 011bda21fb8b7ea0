// Package netnstest creates throw-away network namespaces for ctsyncd's
// kernel and cluster test tiers. Each namespace is uniquely named, has
// conntrack event delivery enabled (net.netfilter.nf_conntrack_events=1) and
// is deleted when the test ends.
//
// Tests that need it call New, which skips the test when not run as root,
// and fails it instead when CI=true: a skipped kernel test in CI is a
// failure (docs/ARCHITECTURE.md, "Test tiers").
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// NS is a network namespace made for one test.
type NS struct {
	Name string
	fd   int
}

// RequireRoot skips t when not root, or fails it under CI=true.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("kernel test needs root, and CI=true forbids skipping it")
	}
	t.Skip("kernel test needs root (network namespaces, netlink writes); run as root")
}

// Need fails or skips t when a command the test needs is missing.
func Need(t testing.TB, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed (CI must install it)", c)
			}
			t.Skipf("%s not installed", c)
		}
	}
}

// UniqueName returns prefix plus a random suffix, short enough for an
// interface name when prefix is at most 6 characters.
func UniqueName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// New creates a namespace named "ct" plus a random suffix, brings its
// loopback up and enables conntrack events in it.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	Need(t, "ip", "nft")
	ns := &NS{Name: UniqueName("ct")}
	Run(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() {
		if ns.fd > 0 {
			unix.Close(ns.fd)
		}
		exec.Command("ip", "netns", "del", ns.Name).Run()
	})
	ns.Exec(t, "ip", "link", "set", "lo", "up")
	// Load nf_conntrack (and so the sysctl) by using conntrack once.
	ns.Nft(t, "table inet ctsyncd_probe {\n\tchain c {\n\t\ttype filter hook output priority 0;\n\t\tct state new accept\n\t}\n}\n")
	ns.Exec(t, "nft", "delete", "table", "inet", "ctsyncd_probe")
	ns.Exec(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_events=1")
	return ns
}

// FD returns a file descriptor of the namespace, valid until the test ends.
func (ns *NS) FD(t testing.TB) int {
	t.Helper()
	if ns.fd > 0 {
		return ns.fd
	}
	fd, err := unix.Open("/run/netns/"+ns.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns %s: %v", ns.Name, err)
	}
	ns.fd = fd
	return fd
}

// Exec runs a command inside the namespace and fails t if it fails.
func (ns *NS) Exec(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, append([]string{"ip", "netns", "exec", ns.Name}, args...)...)
}

// Cmd returns an unstarted command that runs inside the namespace.
func (ns *NS) Cmd(args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
}

// Nft loads an nftables ruleset into the namespace.
func (ns *NS) Nft(t testing.TB, ruleset string) {
	t.Helper()
	cmd := ns.Cmd("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s\n%s", ns.Name, err, out, ruleset)
	}
}

// Run runs a command on the host and fails t if it fails.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Veth joins two namespaces with a veth pair and gives each end an address
// (CIDR notation, IPv4 or IPv6; several may be given as "a,b").
func Veth(t testing.TB, a *NS, aIf, aAddrs string, b *NS, bIf, bAddrs string) {
	t.Helper()
	tmp := UniqueName("vt")
	Run(t, "ip", "link", "add", tmp+"a", "type", "veth", "peer", "name", tmp+"b")
	Run(t, "ip", "link", "set", tmp+"a", "netns", a.Name, "name", aIf)
	Run(t, "ip", "link", "set", tmp+"b", "netns", b.Name, "name", bIf)
	for _, side := range []struct {
		ns    *NS
		ifc   string
		addrs string
	}{{a, aIf, aAddrs}, {b, bIf, bAddrs}} {
		for _, addr := range strings.Split(side.addrs, ",") {
			if addr == "" {
				continue
			}
			args := []string{"ip", "addr", "add", addr, "dev", side.ifc}
			if strings.Contains(addr, ":") {
				args = append(args, "nodad")
			}
			side.ns.Exec(t, args...)
		}
		side.ns.Exec(t, "ip", "link", "set", side.ifc, "up")
	}
}

// Do runs fn on a thread switched into the namespace, e.g. to open a socket
// there (a socket stays in the namespace it was created in).
func (ns *NS) Do(t testing.TB, fn func()) {
	t.Helper()
	fd := ns.FD(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open own netns: %v", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns %s: %v", ns.Name, err)
	}
	defer func() {
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			panic("cannot return to the original netns: " + err.Error())
		}
	}()
	fn()
}

// Router makes three namespaces, client — fw — server, with IPv4 and IPv6
// on both links and forwarding on fw:
//
//	client 10.0.1.2/24 fd00:1::2/64 — fw 10.0.1.1, fd00:1::1 | 10.0.2.1, fd00:2::1 — server 10.0.2.2/24 fd00:2::2/64
//
// fw gets a forward chain that uses conntrack (without a conntrack-using
// rule the kernel tracks nothing: docs/ARCHITECTURE.md, "Kernel facts
// learned the hard way").
func Router(t testing.TB) (client, fw, server *NS) {
	t.Helper()
	client, fw, server = New(t), New(t), New(t)
	Veth(t, client, "eth0", "10.0.1.2/24,fd00:1::2/64", fw, "lan0", "10.0.1.1/24,fd00:1::1/64")
	Veth(t, server, "eth0", "10.0.2.2/24,fd00:2::2/64", fw, "lan1", "10.0.2.1/24,fd00:2::1/64")
	client.Exec(t, "ip", "route", "add", "default", "via", "10.0.1.1")
	client.Exec(t, "ip", "-6", "route", "add", "default", "via", "fd00:1::1")
	server.Exec(t, "ip", "route", "add", "default", "via", "10.0.2.1")
	server.Exec(t, "ip", "-6", "route", "add", "default", "via", "fd00:2::1")
	fw.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	fw.Nft(t, `table inet filter {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state established,related counter accept
		ct state new counter accept
	}
}
`)
	return client, fw, server
}
