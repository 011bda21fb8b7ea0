//go:build kernel

package kernel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// TestKernelQueue binds a real queue behind an iptables-legacy NFQUEUE rule
// on a router: the first packet of a new UDP flow arrives with its
// conntrack entry, is held until the verdict, and reaches the server after
// it; once the queue is closed, --queue-bypass lets new flows through.
func TestKernelQueue(t *testing.T) {
	netnstest.Need(t, "iptables-legacy")
	client, fw, server := netnstest.Router(t)
	const num = 7
	fw.Exec(t, "iptables-legacy", "-A", "FORWARD", "-p", "udp", "--dport", "7777", "-m", "conntrack", "--ctstate", "NEW",
		"-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass")
	if tg := ProbeQueueTargets(); !tg.Xtables {
		t.Errorf("probe: xtables NFQUEUE not found although the rule was added: %+v", tg)
	}

	q, err := OpenQueue(QueueOptions{Num: num, NetNS: fw.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := OpenQueue(QueueOptions{Num: num, NetNS: fw.FD(t)}); err == nil {
		t.Error("a second bind of the same queue succeeded")
	}

	var srv, cli *net.UDPConn
	server.Do(t, func() { srv, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 7777}) })
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	client.Do(t, func() {
		cli, err = net.DialUDP("udp4", &net.UDPAddr{Port: 40001}, &net.UDPAddr{IP: net.ParseIP("10.0.2.2"), Port: 7777})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	type got struct {
		id   uint32
		f    flow.Flow
		has  bool
		info uint32
	}
	pkts := make(chan got, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- q.Run(ctx, func(p *QueuePacket) { pkts <- got{p.ID, p.Flow, p.HasFlow, p.CTInfo} })
	}()

	if _, err := cli.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	var p got
	select {
	case p = <-pkts:
	case <-time.After(10 * time.Second):
		t.Fatal("no packet queued")
	}
	t.Logf("kernel sends conntrack entries with packets (NFQA_CT): %v", q.Conntrack())
	if !p.has || (q.Conntrack() && p.info != ctInfoNew) {
		t.Fatalf("queued packet without a new conntrack entry: %+v", p)
	}
	k := p.f.Key
	src, dst := flow.Addr(k.Family, k.Orig.Src), flow.Addr(k.Family, k.Orig.Dst)
	if k.Proto != 17 || src != netip.MustParseAddr("10.0.1.2") || dst != netip.MustParseAddr("10.0.2.2") ||
		k.Orig.SrcPort != 40001 || k.Orig.DstPort != 7777 {
		t.Fatalf("queued flow %s", p.f.String())
	}
	// Held: not delivered before the verdict.
	buf := make([]byte, 64)
	srv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := srv.ReadFrom(buf); err == nil {
		t.Fatalf("server got %q before the verdict", buf[:n])
	}
	if err := q.Accept(p.id); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _, err := srv.ReadFrom(buf); err != nil || string(buf[:n]) != "first" {
		t.Fatalf("after accept: %q, %v", buf[:n], err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	q.Close()
	// No consumer: --queue-bypass accepts.
	var cli2 *net.UDPConn
	client.Do(t, func() {
		cli2, err = net.DialUDP("udp4", &net.UDPAddr{Port: 40002}, &net.UDPAddr{IP: net.ParseIP("10.0.2.2"), Port: 7777})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	cli2.Write([]byte("bypass"))
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _, err := srv.ReadFrom(buf); err != nil || string(buf[:n]) != "bypass" {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("with the queue closed the packet was dropped: --queue-bypass did not apply")
		}
		t.Fatalf("bypass: %q, %v", buf[:n], err)
	}
}
