//go:build kernel

package kernel

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// TestKernelWatchAddrs watches a namespace's addresses while they change:
// the first report has the existing ones, an address added to two
// interfaces stays until both lost it, IPv6 is reported too.
func TestKernelWatchAddrs(t *testing.T) {
	ns := netnstest.New(t)
	ns.Exec(t, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d0p")
	ns.Exec(t, "ip", "link", "add", "d1", "type", "veth", "peer", "name", "d1p")
	ns.Exec(t, "ip", "link", "set", "d0", "up")
	ns.Exec(t, "ip", "link", "set", "d1", "up")
	ns.Exec(t, "ip", "addr", "add", "10.77.0.1/24", "dev", "d0")

	ctx, cancel := context.WithCancel(context.Background())
	reports := make(chan []netip.Addr, 100)
	done := make(chan error, 1)
	go func() {
		done <- WatchAddrs(ctx, ns.FD(t), func(a []netip.Addr) { reports <- a })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchAddrs: %v", err)
		}
	}()
	has := func(set []netip.Addr, s string) bool { return slices.Contains(set, netip.MustParseAddr(s)) }
	// await reads reports until cond holds for one (deadline: a minute).
	await := func(what string, cond func([]netip.Addr) bool) {
		t.Helper()
		timeout := time.After(time.Minute)
		var last []netip.Addr
		for {
			select {
			case a := <-reports:
				if cond(a) {
					return
				}
				last = a
			case err := <-done:
				t.Fatalf("WatchAddrs returned while waiting for %s: %v", what, err)
			case <-timeout:
				t.Fatalf("no report with %s within a minute; last %v", what, last)
			}
		}
	}
	await("the existing 10.77.0.1 and 127.0.0.1", func(a []netip.Addr) bool { return has(a, "10.77.0.1") && has(a, "127.0.0.1") })
	ns.Exec(t, "ip", "addr", "add", "10.77.0.1/24", "dev", "d1")
	ns.Exec(t, "ip", "addr", "add", "fd77::1/64", "dev", "d1", "nodad")
	await("fd77::1", func(a []netip.Addr) bool { return has(a, "fd77::1") })
	ns.Exec(t, "ip", "addr", "del", "10.77.0.1/24", "dev", "d0")
	ns.Exec(t, "ip", "addr", "add", "10.77.9.9/32", "dev", "d0")
	await("10.77.9.9 (after 10.77.0.1 left d0)", func(a []netip.Addr) bool {
		if has(a, "10.77.9.9") && !has(a, "10.77.0.1") {
			t.Fatalf("10.77.0.1 dropped while d1 still holds it: %v", a)
		}
		return has(a, "10.77.9.9")
	})
	ns.Exec(t, "ip", "addr", "del", "10.77.0.1/24", "dev", "d1")
	await("10.77.0.1 gone from both", func(a []netip.Addr) bool { return !has(a, "10.77.0.1") && has(a, "fd77::1") })
}
