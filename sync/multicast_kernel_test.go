//go:build kernel

package sync

import (
	"net"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// TestMulticastNetns: two namespaces joined by a sync link replicate over
// the multicast transport (IPv4 and IPv6), and a datagram for the group
// arriving on another interface is ignored. Needs root (kernel tier).
func TestMulticastNetns(t *testing.T) {
	netnstest.Need(t, "ip")
	a, b := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, a, "sync0", "10.200.0.1/24,fd00:200::1/64", b, "sync0", "10.200.0.2/24,fd00:200::2/64")
	netnstest.Veth(t, a, "other0", "10.201.0.1/24", b, "other0", "10.201.0.2/24")

	for _, group := range []string{"225.0.0.50:3780", "[ff02::3780]:3781"} {
		t.Run(group, func(t *testing.T) {
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

			if group[0] != '[' {
				// A datagram for the group sent on other0 must not be
				// accepted. Another socket in a joins the group on other0
				// (on another port: the transport's port is its own), so
				// the kernel does take the group's datagrams in there.
				var witness *ipv4.PacketConn
				a.Do(t, func() {
					c, err := net.ListenPacket("udp4", "0.0.0.0:3790")
					if err != nil {
						t.Fatal(err)
					}
					witness = ipv4.NewPacketConn(c)
					ifi, err := net.InterfaceByName("other0")
					if err != nil {
						t.Fatal(err)
					}
					if err := witness.JoinGroup(ifi, &net.UDPAddr{IP: net.IPv4(225, 0, 0, 50)}); err != nil {
						t.Fatal(err)
					}
				})
				b.Do(t, func() {
					c, err := net.ListenPacket("udp4", "10.201.0.2:0")
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					p := ipv4.NewPacketConn(c)
					ifi, err := net.InterfaceByName("other0")
					if err != nil {
						t.Fatal(err)
					}
					if err := p.SetMulticastInterface(ifi); err != nil {
						t.Fatal(err)
					}
					if _, err := p.WriteTo([]byte("wrong link"), nil, &net.UDPAddr{IP: net.IPv4(225, 0, 0, 50), Port: 3780}); err != nil {
						t.Fatal(err)
					}
					// Sent after it on the same link: when the witness has
					// it, the first one arrived too.
					if _, err := p.WriteTo([]byte("witness"), nil, &net.UDPAddr{IP: net.IPv4(225, 0, 0, 50), Port: 3790}); err != nil {
						t.Fatal(err)
					}
				})
				buf := make([]byte, 100)
				witness.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, _, _, err := witness.ReadFrom(buf); err != nil || string(buf[:n]) != "witness" {
					t.Fatalf("the datagrams on other0 did not arrive: %q, %v", buf[:n], err)
				}
				witness.Close()
			}
			if err := tb.Send([]byte("right link")); err != nil {
				t.Fatal(err)
			}
			select {
			case p := <-ta.Packets():
				if string(p.Data) != "right link" {
					t.Fatalf("received %q from %s", p.Data, p.From)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("nothing received on the sync link")
			}

			replicateOver(t, ta, tb, 300, "multicast")
		})
	}
}
