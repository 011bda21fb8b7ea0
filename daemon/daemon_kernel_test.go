//go:build kernel

package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// startDaemon runs a daemon in-process on the conntrack table of ns.
func startDaemon(t *testing.T, ns *netnstest.NS, tune func(*config.Config)) *Daemon {
	t.Helper()
	cfg := config.Default()
	cfg.Node.Name = "test"
	cfg.Sync.Disabled = true
	cfg.Control.Socket = filepath.Join(t.TempDir(), "ctl.sock")
	if tune != nil {
		tune(cfg)
	}
	var w io.Writer = io.Discard
	if testing.Verbose() {
		w = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := New(Options{Config: cfg, Log: log, Version: "test", NetNS: ns.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
		if _, err := os.Stat(cfg.Control.Socket); err == nil {
			t.Errorf("control socket %s left behind", cfg.Control.Socket)
		}
		checkNoLeaks(t)
	})
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("daemon did not start: %v", err)
	}
	return d
}

// waitFor polls cond until it holds or 90 s pass (the kernel's conntrack
// garbage collector may take tens of seconds to destroy an expired flow).
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last state:\n%s", what, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func cacheText(c *cache.Internal) string {
	var lines []string
	for _, e := range c.Snapshot() {
		lines = append(lines, e.Flow.String())
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func find(c *cache.Internal, pred func(*flow.Flow) bool) (cache.Entry, bool) {
	for _, e := range c.Snapshot() {
		if pred(&e.Flow) {
			return e, true
		}
	}
	return cache.Entry{}, false
}

func TestKernelTrafficAppearsAndDisappears(t *testing.T) {
	client, fw, server := netnstest.Router(t)
	// CLOSE is kept, so that the TCP flows leave the cache by the kernel's
	// own DESTROY when their 10 s CLOSE timeout ends, not by the filter.
	d := startDaemon(t, fw, func(c *config.Config) {
		c.Filter.TCPStates = append(c.Filter.TCPStates, "close")
	})
	c := d.Internal()

	var ln net.Listener
	server.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp", "[::]:8080"); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(conn, conn)
		}
	}()

	dial := func(addr string) *net.TCPConn {
		var conn net.Conn
		client.Do(t, func() {
			var err error
			if conn, err = net.DialTimeout("tcp", addr, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		})
		buf := make([]byte, 5)
		for range 3 { // data both ways: ESTABLISHED and ASSURED
			conn.Write([]byte("hello"))
			if _, err := io.ReadFull(conn, buf); err != nil {
				t.Fatal(err)
			}
		}
		return conn.(*net.TCPConn)
	}
	c4 := dial("10.0.2.2:8080")
	c6 := dial("[fd00:2::2]:8080")
	client.Exec(t, "ping", "-c", "1", "-W", "2", "10.0.2.2")
	client.Exec(t, "ping", "-6", "-c", "1", "-W", "2", "fd00:2::2")

	type want struct {
		name     string
		proto    uint8
		src, dst string
		sport    uint16
		dport    uint16
		state    uint8
		minTO    uint32
		maxTO    uint32
	}
	p4 := uint16(c4.LocalAddr().(*net.TCPAddr).Port)
	p6 := uint16(c6.LocalAddr().(*net.TCPAddr).Port)
	wants := []want{
		{"tcp v4", flow.ProtoTCP, "10.0.1.2", "10.0.2.2", p4, 8080, flow.TCPEstablished, 400000, 432000},
		{"tcp v6", flow.ProtoTCP, "fd00:1::2", "fd00:2::2", p6, 8080, flow.TCPEstablished, 400000, 432000},
		{"icmp", flow.ProtoICMP, "10.0.1.2", "10.0.2.2", 0, 8 << 8, 0, 1, 30},
		{"icmpv6", flow.ProtoICMPv6, "fd00:1::2", "fd00:2::2", 0, 128 << 8, 0, 1, 30},
	}
	match := func(w want) func(*flow.Flow) bool {
		return func(f *flow.Flow) bool {
			if f.Proto != w.proto || f.SrcAddr() != netip.MustParseAddr(w.src) || f.DstAddr() != netip.MustParseAddr(w.dst) {
				return false
			}
			if w.proto == flow.ProtoTCP {
				return f.Orig.SrcPort == w.sport && f.Orig.DstPort == w.dport
			}
			return f.Orig.DstPort == w.dport // ICMP type/code; the id varies
		}
	}
	for _, w := range wants {
		waitFor(t, w.name+" flow in the internal cache", func() (bool, string) {
			e, ok := find(c, match(w))
			return ok && e.TCP.State == w.state, cacheText(c)
		})
		e, _ := find(c, match(w))
		f := e.Flow
		// The reply tuple is the inverse: no NAT on this router.
		if f.NATed() {
			t.Errorf("%s: reply tuple not the inverse of the original: %s", w.name, f.String())
		}
		// A TCP flow whose last packet left data unacknowledged has the
		// kernel's nf_conntrack_tcp_timeout_unacknowledged (300 s) instead.
		unacked := w.proto == flow.ProtoTCP && f.Timeout > 250 && f.Timeout <= 300
		if (f.Timeout < w.minTO || f.Timeout > w.maxTO) && !unacked {
			t.Errorf("%s: timeout %d not in [%d, %d] (nor 251..300 for unacknowledged data): %s", w.name, f.Timeout, w.minTO, w.maxTO, f.String())
		}
		if f.Status&flow.StatusConfirmed == 0 || f.Status&flow.StatusSeenReply == 0 {
			t.Errorf("%s: status %v lacks CONFIRMED|SEEN_REPLY", w.name, flow.StatusNames(f.Status))
		}
		if w.proto == flow.ProtoTCP {
			if f.Status&flow.StatusAssured == 0 {
				t.Errorf("%s: not ASSURED: %s", w.name, f.String())
			}
			if f.TCP.WScaleOrig == 0 || f.TCP.WScaleRep == 0 {
				t.Errorf("%s: window scales not carried: %+v", w.name, f.TCP)
			}
			const both = flow.TCPFlagWindowScale | flow.TCPFlagSACKPerm
			if f.TCP.FlagsOrig&both != both || f.TCP.FlagsRep&both != both {
				t.Errorf("%s: TCP flags not carried (want WINDOW_SCALE|SACK_PERM both ways): %+v", w.name, f.TCP)
			}
			if f.Reply.SrcPort != w.dport || f.Reply.DstPort != w.sport {
				t.Errorf("%s: reply ports %d→%d", w.name, f.Reply.SrcPort, f.Reply.DstPort)
			}
		}
	}

	// Reset both TCP connections: conntrack moves them to CLOSE (seen in
	// the cache) and destroys them after 10 s; the ICMP flows are deleted by
	// hand. Each leaves the cache by a DESTROY event.
	for _, conn := range []*net.TCPConn{c4, c6} {
		conn.SetLinger(0)
		conn.Close()
	}
	waitFor(t, "reset TCP flows in CLOSE", func() (bool, string) {
		for _, w := range wants[:2] {
			if e, ok := find(c, match(w)); !ok || e.TCP.State != flow.TCPClose {
				return false, cacheText(c)
			}
		}
		return true, ""
	})
	destroysBefore := d.evDestroy.Load()
	fw.Exec(t, "conntrack", "-D", "-p", "icmp")
	fw.Exec(t, "conntrack", "-D", "-p", "icmpv6")
	waitFor(t, "closed flows to leave the cache", func() (bool, string) {
		for _, w := range wants {
			if _, ok := find(c, match(w)); ok {
				return false, cacheText(c)
			}
		}
		return true, ""
	})
	if got := d.evDestroy.Load() - destroysBefore; got < 4 {
		t.Errorf("%d DESTROY events, want 4 or more", got)
	}
}

// TestKernelOverrunRecovers forces event loss with a tiny receive buffer
// while flows are created and destroyed, and checks that the loss is
// counted and the cache ends equal to the kernel table.
func TestKernelOverrunRecovers(t *testing.T) {
	fw := netnstest.New(t)
	d := startDaemon(t, fw, func(c *config.Config) {
		c.Kernel.EventBuffer = 4096
		c.Kernel.ResyncInterval = config.Duration{} // only overruns trigger a resync
		c.Filter.IgnoreOwnAddresses = new(bool)
	})
	ct, err := conntrack.Dial(&netlink.Config{NetNS: fw.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	mk := func(i int) conntrack.Flow {
		src := netip.AddrFrom4([4]byte{10, 50, byte(i >> 8), byte(i)})
		dst := netip.AddrFrom4([4]byte{10, 60, 0, 1})
		f := conntrack.NewFlow(flow.ProtoTCP, 0, src, dst, uint16(1024+i%50000), 443, 600, 0)
		f.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: flow.TCPEstablished}
		return f
	}
	const n = 6000
	for round := range 3 {
		for i := range n {
			if err := ct.Create(mk(i)); err != nil && round == 0 {
				t.Fatalf("create %d: %v", i, err)
			}
		}
		for i := 0; i < n; i += 2 {
			ct.Delete(mk(i))
		}
	}
	if d.listener.Stats().Overruns == 0 {
		t.Fatalf("no overrun forced with a %d-byte buffer (listener stats %+v)", d.listener.ReadBuffer(), d.listener.Stats())
	}
	kernelText := func() string {
		var lines []string
		if err := kernel.Dump(context.Background(), kernel.DumpOptions{NetNS: fw.FD(t)}, func(f *flow.Flow) {
			lines = append(lines, keyText(f))
		}); err != nil {
			t.Fatal(err)
		}
		sort.Strings(lines)
		return strings.Join(lines, "\n")
	}
	cacheKeys := func() string {
		var lines []string
		for _, e := range d.Internal().Snapshot() {
			lines = append(lines, keyText(&e.Flow))
		}
		sort.Strings(lines)
		return strings.Join(lines, "\n")
	}
	waitFor(t, "the cache to equal the kernel table after overruns", func() (bool, string) {
		k, c := kernelText(), cacheKeys()
		return k == c, fmt.Sprintf("kernel %d flows, cache %d flows", strings.Count(k, "\n"), strings.Count(c, "\n"))
	})
	st := d.stats()
	if st.Events.Overruns == 0 || st.Internal.Reconciles < 2 {
		t.Errorf("stats do not show the recovery: %+v", st)
	}
	t.Logf("overruns %d, reconciles %d (added %d, removed %d), flows %d",
		st.Events.Overruns, st.Internal.Reconciles, st.Internal.ReconAdded, st.Internal.ReconGone, st.Internal.Flows)
}

func keyText(f *flow.Flow) string {
	return fmt.Sprintf("%s %s:%d %s:%d %s", flow.ProtoName(f.Proto), f.SrcAddr(), f.Orig.SrcPort, f.DstAddr(), f.Orig.DstPort, flow.TCPStateName(f.TCP.State))
}
