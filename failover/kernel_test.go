//go:build kernel

package failover

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// Kernel tier: commit and purge through a real kernel.Writer into a fresh
// network namespace, read back with kernel.Dump.

func addr(s string) [16]byte { return flow.AddrFrom(netip.MustParseAddr(s)) }

// kernelNS makes a namespace with nat chains loaded (NATed flows need
// nf_nat) and a writer into it.
func kernelNS(t *testing.T) (*netnstest.NS, *kernel.Writer, DumpFunc) {
	t.Helper()
	ns := netnstest.New(t)
	ns.Nft(t, `table inet failover_nat {
	chain postrouting { type nat hook postrouting priority srcnat; }
	chain prerouting { type nat hook prerouting priority dstnat; }
}
`)
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: ns.FD(t)})
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	fd := ns.FD(t)
	dump := func(ctx context.Context, fn func(*flow.Flow)) error {
		return kernel.Dump(ctx, kernel.DumpOptions{NetNS: fd}, fn)
	}
	return ns, w, dump
}

func dumpTable(t *testing.T, dump DumpFunc) map[flow.Key]flow.Flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := map[flow.Key]flow.Flow{}
	if err := dump(ctx, func(f *flow.Flow) {
		g := *f
		g.Extra = nil
		out[f.Key] = g
	}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	return out
}

// mixedFlows are what a peer replicates: TCP established v4 and v6, UDP,
// ICMP, and a SNAT and a DNAT flow as the kernel reports them (the reply
// tuple is not the inverted original).
func mixedFlows() []flow.Flow {
	st := flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured
	est := flow.TCPInfo{State: flow.TCPEstablished, WScaleOrig: 7, WScaleRep: 7,
		FlagsOrig: flow.TCPFlagWindowScale | flow.TCPFlagSACKPerm, FlagsRep: flow.TCPFlagWindowScale | flow.TCPFlagSACKPerm}
	plain := func(fam, proto uint8, o flow.Tuple, timeout uint32) flow.Flow {
		f := flow.Flow{Key: flow.Key{Family: fam, Proto: proto, Orig: o}, Reply: o.Invert(proto), Status: st, Timeout: timeout}
		if proto == flow.ProtoTCP {
			f.TCP = est
		}
		return f
	}
	tcp4 := plain(flow.FamilyIPv4, flow.ProtoTCP, flow.Tuple{Src: addr("10.0.1.2"), Dst: addr("10.0.2.2"), SrcPort: 40000, DstPort: 22}, 432000)
	tcp4.Mark = 0x42
	tcp6 := plain(flow.FamilyIPv6, flow.ProtoTCP, flow.Tuple{Src: addr("fd00:1::2"), Dst: addr("fd00:2::2"), SrcPort: 40001, DstPort: 443}, 431000)
	udp := plain(flow.FamilyIPv4, flow.ProtoUDP, flow.Tuple{Src: addr("10.0.1.2"), Dst: addr("10.0.2.2"), SrcPort: 5000, DstPort: 5001}, 170)
	udp.Zone = 5
	icmp := plain(flow.FamilyIPv4, flow.ProtoICMP, flow.Tuple{Src: addr("10.0.1.2"), Dst: addr("10.0.2.2"), SrcPort: 77, DstPort: 8 << 8}, 25)
	icmp.Status = flow.StatusConfirmed | flow.StatusSeenReply
	// SNAT: the client 10.0.1.3 leaves as 10.0.2.100 (the server-side VIP).
	snat := plain(flow.FamilyIPv4, flow.ProtoTCP, flow.Tuple{Src: addr("10.0.1.3"), Dst: addr("10.0.2.2"), SrcPort: 40002, DstPort: 80}, 432000)
	snat.Reply = flow.Tuple{Src: addr("10.0.2.2"), Dst: addr("10.0.2.100"), SrcPort: 80, DstPort: 61000}
	// DNAT: a port forward of the VIP's 8080 to the server's 80.
	dnat := plain(flow.FamilyIPv4, flow.ProtoTCP, flow.Tuple{Src: addr("10.0.1.4"), Dst: addr("10.0.1.100"), SrcPort: 40003, DstPort: 8080}, 432000)
	dnat.Reply = flow.Tuple{Src: addr("10.0.2.2"), Dst: addr("10.0.1.4"), SrcPort: 80, DstPort: 40003}
	return []flow.Flow{tcp4, tcp6, udp, icmp, snat, dnat}
}

func checkKernel(t *testing.T, want []flow.Flow, got map[flow.Key]flow.Flow, age time.Duration) {
	t.Helper()
	for _, w := range want {
		g, ok := got[w.Key]
		if !ok {
			t.Errorf("missing in the kernel: %s", w.String())
			continue
		}
		if g.Reply != w.Reply {
			t.Errorf("%s: reply tuple %s", w.String(), g.String())
		}
		if g.Mark != w.Mark || g.TCP.State != w.TCP.State {
			t.Errorf("%s: mark %#x state %d, want %#x %d", w.String(), g.Mark, g.TCP.State, w.Mark, w.TCP.State)
		}
		const keep = flow.StatusSeenReply | flow.StatusAssured
		if g.Status&keep != w.Status&keep {
			t.Errorf("%s: status %#x, want bits %#x", w.String(), g.Status, w.Status&keep)
		}
		if w.NATed() && g.Status&(flow.StatusSrcNAT|flow.StatusDstNAT) == 0 {
			t.Errorf("%s: not NATed in the kernel (status %#x)", w.String(), g.Status)
		}
		wantT := max(int64(w.Timeout)-int64(age/time.Second), kernel.DefaultWriterMinTimeout)
		if d := int64(g.Timeout) - wantT; d < -5 || d > 5 {
			t.Errorf("%s: timeout %d, want %d±5", w.String(), g.Timeout, wantT)
		}
	}
}

func TestKernelCommitMixed(t *testing.T) {
	_, w, dump := kernelNS(t)
	ctx := context.Background()
	flows := mixedFlows()
	ext := cache.NewExternal()
	received := time.Now().Add(-20 * time.Second)
	for i, f := range flows {
		ext.Apply("fw-a", cache.Change{Flow: f, Idle: time.Duration(i) * time.Second}, received)
	}
	rep, err := Commit(ctx, ext, w, CommitOptions{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("Commit: %v (%+v)", err, rep)
	}
	if rep.Created != len(flows) || rep.Failed != 0 {
		t.Fatalf("report %+v", rep)
	}
	if ext.Len() != 0 {
		t.Fatalf("external holds %d flows after the commit", ext.Len())
	}
	first := dumpTable(t, dump)
	if len(first) != len(flows) {
		t.Errorf("kernel holds %d flows, want %d", len(first), len(flows))
	}
	checkKernel(t, flows, first, 20*time.Second)

	// Committing the same set again updates and changes nothing.
	for _, f := range flows {
		ext.Apply("fw-a", cache.Change{Flow: f}, received)
	}
	rep, err = Commit(ctx, ext, w, CommitOptions{Timeout: 30 * time.Second})
	if err != nil || rep.Updated != len(flows) || rep.Created+rep.Replaced+rep.Failed != 0 {
		t.Fatalf("second commit: %+v, %v", rep, err)
	}
	second := dumpTable(t, dump)
	if len(second) != len(first) {
		t.Errorf("kernel holds %d flows after the second commit, had %d", len(second), len(first))
	}
	for k, a := range first {
		b := second[k]
		if !a.SameState(&b) {
			t.Errorf("second commit changed\n%s\nto\n%s", a.String(), b.String())
		}
	}
	// Nothing left: a third commit is empty.
	if rep, err = Commit(ctx, ext, w, CommitOptions{}); err != nil || rep.Flows != 0 {
		t.Errorf("third commit %+v %v", rep, err)
	}
}

// bulkFlow is the i-th of many distinct TCP flows.
func bulkFlow(i int) flow.Flow {
	o := flow.Tuple{Src: [16]byte{10, 50 + byte(i>>16), byte(i >> 8), byte(i)}, Dst: addr("10.0.2.2"),
		SrcPort: uint16(1024 + i%50000), DstPort: 443}
	return flow.Flow{
		Key:    flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Orig: o},
		Reply:  o.Invert(flow.ProtoTCP),
		Status: flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured,
		TCP:    flow.TCPInfo{State: flow.TCPEstablished},
		// The timeout of a flow idle for i%3600 seconds.
		Timeout: 432000 - uint32(i%3600),
	}
}

func TestKernelCommitOrder(t *testing.T) {
	_, w, dump := kernelNS(t)
	const n = 10000
	live := []int{123, 2500, 5001, 7777, 9998}
	isLive := map[int]bool{}
	for _, i := range live {
		isLive[i] = true
	}
	ext := cache.NewExternal()
	now := time.Now()
	for i := range n {
		idle := time.Duration(60+i%3600) * time.Second
		if isLive[i] {
			idle = time.Duration(i%50) * time.Millisecond
		}
		ext.Apply("fw-a", cache.Change{Flow: bulkFlow(i), Idle: idle}, now)
	}
	rep, err := Commit(context.Background(), ext, w, CommitOptions{Timeout: 30 * time.Second})
	if err != nil || rep.Created != n {
		t.Fatalf("Commit: %+v %v", rep, err)
	}
	for _, i := range live {
		if p := rep.Position(bulkFlow(i).Key); p < 0 || p >= n/100 {
			t.Errorf("live flow %d at position %d of %d, want < 1%%", i, p, n)
		}
	}
	t.Logf("%d flows in %.3fs (%.0f flows/s), first chunk in %.1fms",
		n, rep.Seconds, float64(n)/rep.Seconds, rep.FirstChunkSeconds*1000)
	if got := len(dumpTable(t, dump)); got != n {
		t.Errorf("kernel holds %d flows, want %d", got, n)
	}
}

func TestKernelPurge(t *testing.T) {
	_, w, dump := kernelNS(t)
	ctx := context.Background()
	flows := mixedFlows()
	ext := cache.NewExternal()
	for _, f := range flows {
		ext.Apply("fw-a", cache.Change{Flow: f}, time.Now())
	}
	if rep, err := Commit(ctx, ext, w, CommitOptions{}); err != nil || rep.Created != len(flows) {
		t.Fatalf("Commit: %+v %v", rep, err)
	}
	// flows[0] stands for the firewall's own SSH session: the filter
	// rejects it, so it keeps its timeout.
	own := flows[0].Key
	match := func(f *flow.Flow) bool { return f.Key != own }
	rep, err := Purge(ctx, dump, w, match, 30*time.Second)
	if err != nil {
		t.Fatalf("Purge: %v", err)
	}
	// Matched: all but own; capped: those above 30 s (not the ICMP flow).
	if rep.Seen != len(flows) || rep.Matched != len(flows)-1 || rep.Capped != len(flows)-2 || rep.Failed != 0 {
		t.Errorf("report %+v", rep)
	}
	got := dumpTable(t, dump)
	for _, f := range flows {
		g, ok := got[f.Key]
		switch {
		case !ok:
			t.Errorf("purge removed %s", f.String())
		case f.Key == own:
			if g.Timeout < 431000 {
				t.Errorf("unmatched flow's timeout changed: %s", g.String())
			}
		case g.Timeout > 30:
			t.Errorf("timeout not capped: %s", g.String())
		case g.Reply != f.Reply || g.TCP.State != f.TCP.State || g.Mark != f.Mark:
			t.Errorf("purge changed more than the timeout: %s", g.String())
		}
	}
}

// TestKernelCommitReplyClash: a server's packet to the SNAT address that
// reached this node before the commit left a local entry whose original
// tuple is the SNAT flow's reply tuple; the kernel refuses the committed
// flow (EEXIST) until that entry is gone.
func TestKernelCommitReplyClash(t *testing.T) {
	_, w, dump := kernelNS(t)
	ctx := context.Background()
	snat := mixedFlows()[4]
	if !snat.NATed() {
		t.Fatal("test flow is not NATed")
	}
	local := snat
	local.Key = flow.Key{Orig: snat.Reply, Family: snat.Family, Proto: snat.Proto}
	local.Reply = snat.Reply.Invert(snat.Proto)
	local.Status = flow.StatusConfirmed
	local.TCP = flow.TCPInfo{State: flow.TCPSynSent}
	if res, err := w.Commit(ctx, []flow.Flow{local}, nil); err != nil || res[0].Op != kernel.Created {
		t.Fatalf("local entry: %+v %v", res, err)
	}
	ext := cache.NewExternal()
	ext.Apply("fw-a", cache.Change{Flow: snat}, time.Now())
	rep, err := Commit(ctx, ext, w, CommitOptions{})
	if err != nil || rep.Created != 1 || rep.Cleared != 1 || rep.Failed != 0 {
		t.Fatalf("Commit: %v %+v", err, rep)
	}
	got := dumpTable(t, dump)
	if _, ok := got[local.Key]; ok {
		t.Error("the clashing local entry survived")
	}
	checkKernel(t, []flow.Flow{snat}, got, 0)
}
