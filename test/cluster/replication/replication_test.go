//go:build cluster

// Package replication_test runs ctsyncd nodes in network namespaces joined by
// a dedicated sync link and checks that what one node's kernel holds reaches
// the others' external caches: for each transport, under loss, with a wrong
// key, against replays, and in a gossip cluster that loses and regains a
// member. Part of the cluster tier (run with -p 1, as root).
package replication_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/kernel"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

const converge = 90 * time.Second

// node is one firewall namespace with its sync address and daemon.
type node struct {
	name string
	ns   *netnstest.NS
	addr string // sync address, ip:port
	proc *daemontest.Proc
}

func writeKey(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sync.key")
	if err := os.WriteFile(p, []byte(ctsync.GenerateKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// pair makes two namespaces joined by a veth sync link "sync0".
func pair(t testing.TB) (a, b *node) {
	t.Helper()
	a = &node{name: "fw-a", ns: netnstest.New(t), addr: "10.200.0.1:3780"}
	b = &node{name: "fw-b", ns: netnstest.New(t), addr: "10.200.0.2:3780"}
	netnstest.Veth(t, a.ns, "sync0", "10.200.0.1/24,fd00:200::1/64", b.ns, "sync0", "10.200.0.2/24,fd00:200::2/64")
	return a, b
}

func syncConfig(transport string, self *node, peers []*node, key string) string {
	var ps []string
	for _, p := range peers {
		ps = append(ps, fmt.Sprintf("%q", p.addr))
	}
	return fmt.Sprintf(`[sync]
transport = %q
interface = "sync0"
listen = %q
peers = [%s]
group = "225.0.0.50:3780"
key_file = %q
heartbeat_interval = "200ms"
peer_timeout = "2s"

[kernel]
resync_interval = "10s"
`, transport, self.addr, strings.Join(ps, ", "), key)
}

func (n *node) start(t testing.TB, cfg string) {
	n.proc = daemontest.Start(t, n.ns, n.name, cfg)
}

// mkFlows returns count flows of a fixed mix: TCP established with window
// scales (v4 and v6), UDP, ICMP echo, and every tenth source-NATed.
func mkFlows(base, count int) []flow.Flow {
	out := make([]flow.Flow, 0, count)
	for i := base; i < base+count; i++ {
		var f flow.Flow
		v6 := i%5 == 4
		if v6 {
			f.Family = flow.FamilyIPv6
			f.Orig.Src = flow.AddrFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 1, 14: byte(i >> 8), 15: byte(i)}))
			f.Orig.Dst = flow.AddrFrom(netip.MustParseAddr("fd00:2::2"))
		} else {
			f.Family = flow.FamilyIPv4
			f.Orig.Src = flow.AddrFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
			f.Orig.Dst = flow.AddrFrom(netip.MustParseAddr("10.0.2.2"))
		}
		f.Orig.SrcPort = uint16(10000 + i%50000)
		f.Timeout = 600
		f.Status = flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured
		switch i % 4 {
		case 0, 1:
			f.Proto = flow.ProtoTCP
			f.Orig.DstPort = 443
			f.TCP = flow.TCPInfo{State: flow.TCPEstablished, WScaleOrig: 7, WScaleRep: 9}
		case 2:
			f.Proto = flow.ProtoUDP
			f.Orig.DstPort = 53
		case 3:
			f.Proto = flow.ProtoICMP
			if v6 {
				f.Proto = flow.ProtoICMPv6
				f.Orig.DstPort = 128 << 8
			} else {
				f.Orig.DstPort = 8 << 8
			}
			f.Orig.SrcPort = uint16(i)
		}
		f.Mark = uint32(i % 3)
		f.Reply = f.Orig.Invert(f.Proto)
		if i%10 == 0 && !v6 && f.Proto != flow.ProtoICMP {
			f.Reply.Dst = flow.AddrFrom(netip.MustParseAddr("192.0.2.1")) // SNAT to a VIP
			f.Status |= flow.StatusSrcNAT
		}
		out = append(out, f)
	}
	return out
}

// write creates flows in the namespace's kernel table.
func write(t testing.TB, ns *netnstest.NS, flows []flow.Flow) {
	t.Helper()
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: ns.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	res, err := w.Commit(context.Background(), flows, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("write %v: %v", r.Key, r.Err)
		}
	}
}

func remove(t testing.TB, ns *netnstest.NS, flows []flow.Flow) {
	t.Helper()
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: ns.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	keys := make([]flow.Key, len(flows))
	for i := range flows {
		keys[i] = flows[i].Key
	}
	if _, err := w.Delete(context.Background(), keys); err != nil {
		t.Fatal(err)
	}
}

// table renders a dump as sorted lines of every attribute but the timeout,
// the idleness and the origin.
func table(lines []map[string]any) string {
	out := make([]string, 0, len(lines))
	for _, m := range lines {
		delete(m, "timeout")
		delete(m, "idle_seconds")
		delete(m, "origin")
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "%s=%v ", k, m[k])
		}
		out = append(out, b.String())
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// converged waits until dst's external cache equals src's internal cache.
func converged(t testing.TB, src, dst *node) {
	t.Helper()
	daemontest.WaitFor(t, converge, dst.name+"'s external cache to equal "+src.name+"'s internal cache", func() (bool, string) {
		in := src.proc.Lines("dump", "internal")
		ext := filterOrigin(dst.proc.Lines("dump", "external"), src.name)
		a, b := table(in), table(ext)
		return a == b && len(in) > 0, fmt.Sprintf("%s internal %d flows, %s external from it %d flows", src.name, len(in), dst.name, len(ext))
	})
}

func filterOrigin(lines []map[string]any, origin string) []map[string]any {
	var out []map[string]any
	for _, m := range lines {
		if m["origin"] == origin {
			out = append(out, m)
		}
	}
	return out
}

type peerStats struct {
	Peers map[string]ctsync.PeerStats `json:"peers"`
}

func (n *node) peers(t testing.TB) map[string]ctsync.PeerStats {
	var s peerStats
	n.proc.JSON(&s, "stats")
	return s.Peers
}

// testTransport: 20,000 flows made on A reach B with identical attributes;
// destroys propagate.
func testTransport(t testing.TB, transport string, v6 bool) {
	a, b := pair(t)
	if v6 {
		a.addr, b.addr = "[fd00:200::1]:3780", "[fd00:200::2]:3780"
	}
	key := writeKey(t)
	a.start(t, syncConfig(transport, a, []*node{b}, key))
	b.start(t, syncConfig(transport, b, []*node{a}, key))
	flows := mkFlows(0, 20000)
	start := time.Now()
	write(t, a.ns, flows)
	wrote := time.Since(start)
	daemontest.WaitFor(t, converge, "B to hold A's flows", func() (bool, string) {
		var st struct {
			Sync struct {
				ExternalFlows int `json:"external_flows"`
			} `json:"sync"`
		}
		b.proc.JSON(&st, "status")
		return st.Sync.ExternalFlows == len(flows), fmt.Sprint(st.Sync.ExternalFlows)
	})
	t.Logf("%s: %d flows written into A's kernel in %v, all in B's external cache %v after the first write (%.0f flows/s end to end)",
		transport, len(flows), wrote.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), float64(len(flows))/time.Since(start).Seconds())
	converged(t, a, b)
	remove(t, a.ns, flows[:5000])
	daemontest.WaitFor(t, converge, "destroys to reach B", func() (bool, string) {
		n := len(filterOrigin(b.proc.Lines("dump", "external"), a.name))
		return n == len(flows)-5000, fmt.Sprint(n)
	})
	converged(t, a, b)
	st := b.peers(t)[a.name]
	t.Logf("%s: B received %d msgs / %d bytes, %d flows applied; A sent %+v", transport, st.MsgsIn, st.BytesIn, st.FlowsIn, a.peers(t)[b.name].MsgsOut)
}

func TestClusterReplicationUDP(t *testing.T)       { testTransport(t, "udp", false) }
func TestClusterReplicationUDPv6(t *testing.T)     { testTransport(t, "udp", true) }
func TestClusterReplicationMulticast(t *testing.T) { testTransport(t, "multicast", false) }
func TestClusterReplicationGossip(t *testing.T)    { testTransport(t, "gossip", false) }

// TestClusterReplicationBulkAndResync: `ctsyncctl request-resync` on B
// refills a flushed external cache from A; `ctsyncctl bulk` on A sends A's
// table again.
func TestClusterReplicationBulkAndResync(t *testing.T) {
	a, b := pair(t)
	key := writeKey(t)
	a.start(t, syncConfig("udp", a, []*node{b}, key))
	b.start(t, syncConfig("udp", b, []*node{a}, key))
	write(t, a.ns, mkFlows(0, 3000))
	converged(t, a, b)

	b.proc.Ctl("flush", "external")
	if n := len(b.proc.Lines("dump", "external")); n != 0 {
		t.Fatalf("%d flows left after flush external", n)
	}
	before := b.peers(t)[a.name].BulksReceived
	b.proc.Ctl("request-resync")
	converged(t, a, b)
	if got := b.peers(t)[a.name].BulksReceived; got <= before {
		t.Errorf("request-resync: bulks received %d, was %d", got, before)
	}

	before = b.peers(t)[a.name].BulksReceived
	sent := a.peers(t)[b.name].BulksSent
	a.proc.Ctl("bulk")
	daemontest.WaitFor(t, converge, "A's bulk to reach B", func() (bool, string) {
		got := b.peers(t)[a.name].BulksReceived
		return got > before && a.peers(t)[b.name].BulksSent > sent, fmt.Sprint(got)
	})
	converged(t, a, b)
}

// TestClusterReplicationLoss: with 20% of the sync datagrams dropped in
// both directions, B converges to exactly A's cache, repaired by NACKs.
func TestClusterReplicationLoss(t *testing.T) {
	a, b := pair(t)
	key := writeKey(t)
	a.start(t, syncConfig("udp", a, []*node{b}, key))
	b.start(t, syncConfig("udp", b, []*node{a}, key))
	for _, n := range []*node{a, b} {
		n.ns.Nft(t, `table inet loss {
	chain input {
		type filter hook input priority -10; policy accept;
		iifname "sync0" udp dport 3780 numgen random mod 100 < 20 counter drop
	}
}
`)
	}
	flows := mkFlows(0, 20000)
	write(t, a.ns, flows)
	remove(t, a.ns, flows[:2000])
	converged(t, a, b)
	sa, sb := a.peers(t)[b.name], b.peers(t)[a.name]
	dropped := b.ns.Exec(t, "nft", "list", "chain", "inet", "loss", "input")
	t.Logf("A→B: A resent %d, NACKs in %d, full resyncs %d; B NACKs out %d, full resyncs %d; B's loss chain: %s",
		sa.Resends, sa.NacksIn, sa.FullResyncs, sb.NacksOut, sb.FullResyncs, strings.TrimSpace(dropped))
	if sb.NacksOut == 0 || sa.Resends == 0 {
		t.Errorf("no NACK repairs seen: A %+v, B %+v", sa, sb)
	}
	if sa.FullResyncs != 0 || sb.FullResyncs != 0 {
		t.Errorf("full resyncs under 20%% loss: A %d, B %d", sa.FullResyncs, sb.FullResyncs)
	}
}

// TestClusterReplicationWrongKey: a node with another key applies nothing
// and counts authentication failures.
func TestClusterReplicationWrongKey(t *testing.T) {
	a, b := pair(t)
	a.start(t, syncConfig("udp", a, []*node{b}, writeKey(t)))
	b.start(t, syncConfig("udp", b, []*node{a}, writeKey(t)))
	write(t, a.ns, mkFlows(0, 500))
	daemontest.WaitFor(t, converge, "auth failures counted on B", func() (bool, string) {
		var auth uint64
		for _, p := range b.peers(t) {
			auth += p.Drops.Auth
		}
		return auth > 10, fmt.Sprint(auth)
	})
	time.Sleep(2 * time.Second)
	if n := len(b.proc.Lines("dump", "external")); n != 0 {
		t.Errorf("B applied %d flows sent under another key", n)
	}
}
