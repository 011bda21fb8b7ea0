package sync

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/cache"
)

// TestUDPLoopback: datagrams both ways on 127.0.0.1, then two nodes
// replicating over real sockets.
func TestUDPLoopback(t *testing.T) {
	addrA, addrB := loopbackAddr(t), loopbackAddr(t)
	ta, err := NewUDP(UDPOptions{Listen: addrA, Peers: []string{addrB}})
	if err != nil {
		t.Fatal(err)
	}
	tb, err := NewUDP(UDPOptions{Listen: addrB, Peers: []string{addrA}})
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		rc, _ := ta.conn.SyscallConn()
		var size int
		rc.Control(func(fd uintptr) { size, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
		if size < udpReadBuffer {
			t.Errorf("receive buffer %d bytes as root, want %d", size, udpReadBuffer)
		}
	}
	if got := ta.Peers(); len(got) != 1 || got[0] != addrB {
		t.Fatalf("Peers = %v", got)
	}

	// Raw datagrams both ways.
	if err := ta.Send([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-tb.Packets():
		if string(p.Data) != "hello" || p.From != addrA {
			t.Fatalf("got %q from %s", p.Data, p.From)
		}
		if err := tb.SendTo(p.From, []byte("back")); err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing received")
	}
	select {
	case p := <-ta.Packets():
		if string(p.Data) != "back" {
			t.Fatalf("got %q", p.Data)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reply")
	}
	if err := ta.SendTo("nonsense", nil); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("SendTo(nonsense) = %v", err)
	}

	// Two nodes replicate over it.
	replicateOver(t, ta, tb, 500, "UDP")
	for _, tr := range []*UDP{ta, tb} {
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
		if err := tr.Close(); err != nil {
			t.Error("second Close:", err)
		}
		if _, ok := <-tr.Packets(); ok {
			// drain what was queued
			for range tr.Packets() {
			}
		}
	}
}

func TestUDPDropsStrangers(t *testing.T) {
	ta, err := NewUDP(UDPOptions{Listen: "127.0.0.1:0", Peers: []string{"127.0.0.2:9"}})
	if err != nil {
		t.Skipf("no loopback UDP: %v", err)
	}
	defer ta.Close()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(ta.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("stranger"))
	select {
	case p := <-ta.Packets():
		t.Fatalf("accepted a datagram from %s, not a peer", p.From)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestMulticastOptions(t *testing.T) {
	for _, o := range []MulticastOptions{
		{Group: "10.0.0.1:3780", Interface: "lo"},
		{Group: "225.0.0.50", Interface: "lo"},
		{Group: "225.0.0.50:3780", Interface: "no-such-interface"},
	} {
		if tr, err := NewMulticast(o); err == nil {
			tr.Close()
			t.Errorf("NewMulticast(%+v) succeeded", o)
		}
	}
}

// replicateOver runs node a on ta and node b on tb and waits until b's
// external cache holds the n flows of a's internal one.
func replicateOver(t *testing.T, ta, tb Transport, n int, what string) {
	t.Helper()
	replicateOverThen(t, ta, tb, n, what, nil)
}

// replicateOverThen is replicateOver calling during (when not nil) once b
// has converged, while both nodes still run.
func replicateOverThen(t *testing.T, ta, tb Transport, n int, what string, during func()) {
	t.Helper()
	ina, exb := cache.NewInternal(nil), cache.NewExternal()
	upsertFlows(ina, n)
	na, err := New(testOptions("a", &testKey), ina, cache.NewExternal(), ta)
	if err != nil {
		t.Fatal(err)
	}
	nb, err := New(testOptions("b", &testKey), cache.NewInternal(nil), exb, tb)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- na.Run(ctx) }()
	go func() { done <- nb.Run(ctx) }()
	eventually(t, 10*time.Second, fmt.Sprintf("%d flows over %s", n, what), func() bool { return exb.Len() == n })
	if during != nil {
		during()
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// loopbackAddr returns a free UDP address on 127.0.0.1 (bound, then
// released), or skips the test where loopback UDP is unavailable.
func loopbackAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Skipf("no loopback UDP: %v", err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// channelOnly hides a transport's Deliver method.
type channelOnly struct{ Transport }

// TestUDPNodeDeliversDirectly: a node over UDP has its datagrams handled on
// the transport's receive goroutine (Deliverer) while it runs, and gives
// that back when Run returns; over a transport without Deliver the channel
// carries them and replication works the same (the control).
func TestUDPNodeDeliversDirectly(t *testing.T) {
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			// Both addresses are known before either transport starts
			// reading: changing a transport's peers afterwards races
			// with its receive goroutine.
			addrA, addrB := loopbackAddr(t), loopbackAddr(t)
			ta, err := NewUDP(UDPOptions{Listen: addrA, Peers: []string{addrB}})
			if err != nil {
				t.Fatal(err)
			}
			defer ta.Close()
			tb, err := NewUDP(UDPOptions{Listen: addrB, Peers: []string{addrA}})
			if err != nil {
				t.Fatal(err)
			}
			defer tb.Close()
			var tra, trb Transport = ta, tb
			if !direct {
				tra, trb = channelOnly{ta}, channelOnly{tb}
			}
			replicateOverThen(t, tra, trb, 500, "UDP", func() {
				for _, tr := range []*UDP{ta, tb} {
					if got := tr.rx.fn.Load() != nil; got != direct {
						t.Errorf("while the nodes run: datagrams handed to a function %v, want %v", got, direct)
					}
				}
			})
			for _, tr := range []*UDP{ta, tb} {
				if tr.rx.fn.Load() != nil {
					t.Error("the node's function stayed with the transport after Run returned")
				}
			}
		})
	}
}
