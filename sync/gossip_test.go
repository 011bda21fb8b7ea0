package sync

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
)

// freePortPair returns a loopback data address whose port and port+1 are
// free for UDP and TCP.
func freePortPair(t *testing.T) string {
	t.Helper()
	for range 100 {
		p := 20000 + rand.IntN(40000)
		ok := true
		var closers []func() error
		for _, port := range []int{p, p + 1} {
			u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
			if err != nil {
				ok = false
				break
			}
			closers = append(closers, u.Close)
			l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				ok = false
				break
			}
			closers = append(closers, l.Close)
		}
		for _, c := range closers {
			c()
		}
		if ok {
			return fmt.Sprintf("127.0.0.1:%d", p)
		}
	}
	t.Skip("no free port pair on loopback")
	return ""
}

// TestGossip: three nodes find each other through memberlist and replicate
// over the data channel.
func TestGossip(t *testing.T) {
	names := []string{"a", "b", "c"}
	addrs := []string{freePortPair(t), freePortPair(t), freePortPair(t)}
	var trs []*Gossip
	var exs []*cache.External
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, len(names))
	for i, name := range names {
		tr, err := NewGossip(GossipOptions{NodeName: name, Listen: addrs[i], Seeds: []string{addrs[0]}, Key: &testKey})
		if err != nil {
			t.Fatal(err)
		}
		trs = append(trs, tr)
		in, ex := cache.NewInternal(nil), cache.NewExternal()
		for j := range 100 {
			f := tcpFlow(1000*i + j)
			in.Upsert(&f)
		}
		exs = append(exs, ex)
		n, err := New(testOptions(name, &testKey), in, ex, tr)
		if err != nil {
			t.Fatal(err)
		}
		go func() { done <- n.Run(ctx) }()
	}
	eventually(t, 15*time.Second, "every node to hold the 200 flows of the others", func() bool {
		for _, ex := range exs {
			if ex.Len() != 200 {
				return false
			}
		}
		return true
	})
	if got := trs[1].Members(); len(got) != 2 {
		t.Errorf("b's members: %v", got)
	}
	cancel()
	for range names {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	for _, tr := range trs {
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
		tr.Close()
	}
}
