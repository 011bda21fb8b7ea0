//go:build kernel

package sync

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// asUser runs fn with this thread's effective uid set to uid: a raw
// setresuid changes the calling thread only (the Go runtime's Setuid would
// change every thread). fn must run on a locked thread (netnstest.Do).
func asUser(t *testing.T, uid int, fn func()) {
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
		t.Fatalf("setresuid: %v", e)
	}
	defer func() {
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			panic("cannot return to uid 0: " + e.Error())
		}
	}()
	fn()
}

// TestKernelMulticastNotHijackable: while two nodes replicate over the
// multicast transport, a socket of another user (uid 65534) on b's host
// bound to b's address and the group's port, with SO_REUSEADDR or
// SO_REUSEPORT, gets none of the nodes' datagrams, and it cannot bind the
// group's address or the wildcard address on that port at all. Before
// (the transport bound 0.0.0.0 with SO_REUSEADDR and replies went by
// unicast) such a socket took the unicast replies meant for b.
func TestKernelMulticastNotHijackable(t *testing.T) {
	netnstest.Need(t, "ip")
	a, b := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, a, "sync0", "10.200.0.1/24", b, "sync0", "10.200.0.2/24")
	const group = "225.0.0.50:3780"
	open := func(ns *netnstest.NS) *Multicast {
		var tr *Multicast
		var err error
		ns.Do(t, func() { tr, err = NewMulticast(MulticastOptions{Group: group, Interface: "sync0"}) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	ta, tb := open(a), open(b)

	var stolen atomic.Int64
	var bound []net.PacketConn
	b.Do(t, func() {
		asUser(t, 65534, func() {
			for _, addr := range []string{"10.200.0.2:3780", "0.0.0.0:3780", group} {
				for _, opt := range []int{unix.SO_REUSEADDR, unix.SO_REUSEPORT} {
					lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
						var serr error
						err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 1) })
						return errors.Join(err, serr)
					}}
					c, err := lc.ListenPacket(context.Background(), "udp4", addr)
					t.Logf("uid 65534 binds %s with option %d: %v", addr, opt, err)
					if err != nil {
						continue
					}
					if addr != "10.200.0.2:3780" {
						t.Errorf("another user bound %s next to the transport", addr)
					}
					bound = append(bound, c)
				}
			}
		})
	})
	for _, c := range bound {
		go func() {
			buf := make([]byte, MaxDatagram)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				stolen.Add(1)
				t.Logf("the other user's socket got %d bytes from %v", n, from)
			}
		}()
	}
	t.Cleanup(func() {
		for _, c := range bound {
			c.Close()
		}
	})

	replicateOver(t, ta, tb, 300, "multicast")
	time.Sleep(100 * time.Millisecond) // datagrams in flight reach the sockets; the check below is a count, not a time
	if n := stolen.Load(); n != 0 {
		t.Fatalf("another user's socket received %d of the nodes' datagrams", n)
	}
}
