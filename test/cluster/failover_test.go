//go:build cluster

package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// raiseConntrackMax raises the global nf_conntrack_max (settable only from
// the initial namespace) to at least want; the setting is kept.
func raiseConntrackMax(t *testing.T, want int) {
	t.Helper()
	netnstest.RequireRoot(t)
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		t.Fatalf("nf_conntrack_max: %v", err)
	}
	if cur, _ := strconv.Atoi(strings.TrimSpace(string(b))); cur < want {
		netnstest.Run(t, "sysctl", "-qw", fmt.Sprintf("net.netfilter.nf_conntrack_max=%d", want))
	}
}

// TestClusterCommitFailover is TestClusterVRRP's positive twin without
// the daemon: the test itself plays ctsyncd's part — it copies fw-a's
// conntrack table into an external cache (what replication would have
// delivered), kills fw-a and, as soon as fw-b holds the VIPs, commits the
// cache into fw-b with failover.Commit. With SNAT to the server-side VIP,
// the TCP streams (both ways, v4 and v6) and the server-driven UDP stream
// that break in the control run must survive.
func TestClusterCommitFailover(t *testing.T) {
	big := 200000
	if raceEnabled {
		big = 20000 // 100k+ flows only without the race detector
	}
	for _, background := range []int{0, big} {
		t.Run(fmt.Sprintf("background=%d", background), func(t *testing.T) {
			testCommitFailover(t, background)
		})
	}
}

// testCommitFailover runs the failover of TestClusterCommitFailover with
// background idle flows in the external cache besides the streams' own:
// committed least idle first, the streams' flows land in the first chunk,
// and their stall does not grow with the table.
func testCommitFailover(t *testing.T, background int) {
	if background > 0 {
		raiseConntrackMax(t, 4*background)
	}
	tp := New(t, Options{SNAT: true})
	tp.WaitMaster(t, tp.A)
	streams := []*Stream{tp.TCPStream(t, false), tp.TCPStream(t, true), tp.UDPStream(t, false), tp.UDPStream(t, true)}
	for _, s := range streams {
		s.WaitFlowing(t)
	}

	ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
	defer cancel()
	ext := cache.NewExternal()
	var live []flow.Key
	n := 0
	err := kernel.Dump(ctx, kernel.DumpOptions{NetNS: tp.A.NS.FD(t)}, func(f *flow.Flow) {
		if f.Proto == flow.ProtoTCP || f.Proto == flow.ProtoUDP {
			ext.Apply(tp.A.Name, cache.Change{Flow: *f}, time.Now())
			live = append(live, f.Key)
			n++
		}
	})
	if err != nil {
		t.Fatalf("dump fw-a: %v", err)
	}
	if n < len(streams) {
		t.Fatalf("fw-a tracks %d TCP/UDP flows, want at least %d", n, len(streams))
	}
	for i := range background {
		f := flow.Flow{
			Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Orig: flow.Tuple{
				Src: [16]byte{10, 100 + byte(i>>16), byte(i >> 8), byte(i)}, Dst: [16]byte{192, 0, 2, 1},
				SrcPort: uint16(1024 + i%60000), DstPort: 443}},
			Status:  flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured,
			TCP:     flow.TCPInfo{State: flow.TCPEstablished},
			Timeout: 432000 - 60 - uint32(i%3600),
		}
		f.Reply = f.Orig.Invert(f.Proto)
		ext.Apply(tp.A.Name, cache.Change{Flow: f, Idle: time.Duration(60+i%3600) * time.Second}, time.Now())
	}
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: tp.B.NS.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	dead := tp.KillFirewall(t, tp.A)
	for !tp.B.HasVIPs(t) {
		if time.Since(dead) > WaitTimeout {
			t.Fatalf("fw-b did not take over")
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(dead)
	rep, err := failover.Commit(ctx, ext, w, failover.CommitOptions{Timeout: 30 * time.Second})
	if err != nil || rep.Failed != 0 || rep.Committed() != n+background {
		t.Fatalf("commit: %v %+v", err, rep)
	}
	t.Logf("fw-b took the VIPs %v after fw-a died; committed %d flows in %.1f ms, the first %d in %.1f ms",
		took.Round(time.Millisecond), rep.Committed(), rep.Seconds*1000, min(rep.Flows, failover.DefaultFirstChunk), rep.FirstChunkSeconds*1000)

	for _, k := range live {
		if p := rep.Position(k); p < 0 || p >= n {
			t.Errorf("a stream's flow was committed at position %d, after background flows", p)
		}
	}
	for _, s := range streams {
		ok, stall := s.Survived(dead, 20*time.Second)
		if !ok {
			t.Errorf("%s broke although its flow was committed", s.Name)
			continue
		}
		t.Logf("%s survived, longest stall %v", s.Name, stall.Round(time.Millisecond))
	}
}

// TestClusterReadinessGate checks the keepalived side of failover.WriteReady:
// a node that is not ready runs at a lower priority (fw-a, 150-60, loses to
// fw-b, 100), gets its priority back when ready, and still takes over alone
// when not ready (the gate lowers priority, it never forces FAULT).
func TestClusterReadinessGate(t *testing.T) {
	ready := func(fw *Firewall) string { return filepath.Join(fw.Dir, "ready") }
	tp := New(t, Options{TrackFile: ready, NoKeepalived: true})
	for _, fw := range tp.Firewalls() {
		if err := failover.WriteReady(ready(fw), fw == tp.B); err != nil {
			t.Fatal(err)
		}
		fw.StartKeepalived(t)
	}
	tp.WaitMaster(t, tp.B)
	t.Log("fw-a not ready: fw-b is master")

	if err := failover.WriteReady(ready(tp.A), true); err != nil {
		t.Fatal(err)
	}
	d := tp.WaitMaster(t, tp.A)
	t.Logf("fw-a ready: master after %v", d.Round(time.Millisecond))

	if err := failover.WriteReady(ready(tp.A), false); err != nil {
		t.Fatal(err)
	}
	tp.WaitMaster(t, tp.B)
	tp.KillFirewall(t, tp.B)
	d = tp.WaitMaster(t, tp.A)
	t.Logf("fw-a, not ready, took over alone after %v", d.Round(time.Millisecond))
}
