//go:build kernel

package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/internal/timoconv"
)

// Kernel tier: each test writes into a fresh network namespace.

// raiseConntrackMax raises the global nf_conntrack_max (settable only from
// the initial namespace) so that big tables fit; the setting is kept.
func raiseConntrackMax(t *testing.T, want int) {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		t.Fatalf("nf_conntrack_max: %v", err)
	}
	if cur, _ := strconv.Atoi(strings.TrimSpace(string(b))); cur >= want {
		return
	}
	netnstest.Run(t, "sysctl", "-qw", fmt.Sprintf("net.netfilter.nf_conntrack_max=%d", want))
}

// loadNAT loads nat chains so that nf_nat is present for CTA_NAT_*.
func loadNAT(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	ns.Nft(t, `table inet ctsyncd_nat {
	chain postrouting { type nat hook postrouting priority srcnat; }
	chain prerouting { type nat hook prerouting priority dstnat; }
}
`)
}

func newTestWriter(t *testing.T, ns *netnstest.NS, opts WriterOptions) *Writer {
	t.Helper()
	opts.NetNS = ns.FD(t)
	w, err := NewWriter(opts)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := w.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	return w
}

func dumpTable(t *testing.T, ns *netnstest.NS) map[flow.Key]flow.Flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := map[flow.Key]flow.Flow{}
	err := Dump(ctx, DumpOptions{NetNS: ns.FD(t)}, func(f *flow.Flow) {
		g := *f
		if f.Extra != nil {
			x := *f.Extra
			g.Extra = &x
		}
		out[f.Key] = g
	})
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	return out
}

// kernelTCPFlags reads the flag bytes of every TCP flow with ti-mo. The
// kernel sends struct nf_ct_tcp_flags {flags, mask} with mask 0; ti-mo
// decodes it as one big-endian uint16, so the flags are the high byte.
// (FromConntrack takes the low byte, the mask: internal/timoconv/convert.go's
// tcpFlagsByte reads the wrong byte, so Dump reports TCP flags as 0.)
func kernelTCPFlags(t *testing.T, ns *netnstest.NS) map[flow.Key][2]uint8 {
	t.Helper()
	c, err := conntrack.Dial(&netlink.Config{NetNS: ns.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetReadBuffer(64 << 20); err != nil {
		t.Fatal(err)
	}
	all, err := c.Dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[flow.Key][2]uint8{}
	for i := range all {
		if tcp := all[i].ProtoInfo.TCP; tcp != nil {
			f, _ := timoconv.FromConntrack(&all[i])
			out[f.Key] = [2]uint8{uint8(tcp.OriginalFlags >> 8), uint8(tcp.ReplyFlags >> 8)}
		}
	}
	return out
}

func countOps(res []Result) map[Op]int {
	m := map[Op]int{}
	for _, r := range res {
		m[r.Op]++
	}
	return m
}

func firstFailures(res []Result, n int) string {
	var b strings.Builder
	for _, r := range res {
		if r.Op == Failed && n > 0 {
			fmt.Fprintf(&b, "\n  %s: %v", flow.Addr(r.Key.Family, r.Key.Orig.Src), r.Err)
			n--
		}
	}
	return b.String()
}

// checkWritten compares what the kernel holds with what was written.
// flags, when not nil, holds the kernel's TCP flag bytes (see kernelTCPFlags).
// Timeouts must be what was written, less the time since written, ±5 s.
func checkWritten(t *testing.T, want []flow.Flow, got map[flow.Key]flow.Flow, minTimeout uint32, flags map[flow.Key][2]uint8, written time.Time) {
	t.Helper()
	elapsed := int64(time.Since(written) / time.Second)
	bad := 0
	report := func(format string, args ...any) {
		bad++
		if bad <= 10 {
			t.Errorf(format, args...)
		}
	}
	for i := range want {
		w := &want[i]
		g, ok := got[w.Key]
		if !ok {
			report("flow %d missing: %+v", i, w.Key)
			continue
		}
		if g.Reply != w.Reply {
			report("flow %d: reply tuple\n got %+v\nwant %+v", i, g.Reply, w.Reply)
		}
		const keep = flow.StatusSeenReply | flow.StatusAssured | flow.StatusSrcNAT | flow.StatusDstNAT
		wantStatus := w.Status&(flow.StatusSeenReply|flow.StatusAssured) | natStatus(w) | flow.StatusConfirmed
		if g.Status&(keep|flow.StatusConfirmed|flow.StatusExpected) != wantStatus {
			report("flow %d: status %#x, want bits %#x", i, g.Status, wantStatus)
		}
		if g.Mark != w.Mark {
			report("flow %d: mark %d, want %d", i, g.Mark, w.Mark)
		}
		if w.Proto == flow.ProtoTCP {
			if g.TCP.State != w.TCP.State || g.TCP.WScaleOrig != w.TCP.WScaleOrig || g.TCP.WScaleRep != w.TCP.WScaleRep {
				report("flow %d: tcp %+v, want %+v", i, g.TCP, w.TCP)
			}
			if fl, ok := flags[w.Key]; flags != nil {
				want := [2]uint8{w.TCP.FlagsOrig | flow.TCPFlagBeLiberal, w.TCP.FlagsRep | flow.TCPFlagBeLiberal}
				if !ok || fl != want {
					report("flow %d: tcp flags %#x, want %#x (BE_LIBERAL both ways)", i, fl, want)
				}
			}
		}
		wantT := max(w.Timeout, minTimeout)
		if d := int64(g.Timeout) - int64(wantT); d < -5-elapsed || d > 5 {
			report("flow %d: timeout %d, want %d (less %d s elapsed) ±5", i, g.Timeout, wantT, elapsed)
		}
	}
	if bad > 10 {
		t.Errorf("... %d mismatches in all", bad)
	}
}

func TestWriterCommitMany(t *testing.T) {
	ns := netnstest.New(t)
	raiseConntrackMax(t, 2000000)
	loadNAT(t, ns)
	w := newTestWriter(t, ns, WriterOptions{})
	n := manyFlows
	flows := testFlows(n)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	written := time.Now()
	res, err := w.Commit(ctx, flows, nil)
	el := time.Since(start)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	t.Logf("committed %d flows in %v (%.0f flows/s)", n, el, float64(n)/el.Seconds())
	if c := countOps(res); c[Created] != n {
		t.Fatalf("results %v, want %d created%s", c, n, firstFailures(res, 5))
	}
	for i := range res {
		if res[i].Key != flows[i].Key {
			t.Fatalf("result %d is for %+v, not %+v: results must be in input order", i, res[i].Key, flows[i].Key)
		}
	}
	got := dumpTable(t, ns)
	if len(got) != n {
		t.Errorf("kernel holds %d flows, want %d", len(got), n)
	}
	checkWritten(t, flows, got, DefaultWriterMinTimeout, kernelTCPFlags(t, ns), written)

	// The same set again takes the update path and changes nothing.
	written = time.Now()
	res, err = w.Commit(ctx, flows, nil)
	if err != nil {
		t.Fatalf("second Commit: %v", err)
	}
	if c := countOps(res); c[Updated] != n {
		t.Fatalf("second commit: results %v, want %d updated%s", c, n, firstFailures(res, 5))
	}
	got2 := dumpTable(t, ns)
	if len(got2) != n {
		t.Errorf("after the second commit the kernel holds %d flows, want %d", len(got2), n)
	}
	checkWritten(t, flows, got2, DefaultWriterMinTimeout, nil, written)
	for k, g := range got {
		g2 := got2[k]
		g.Timeout, g2.Timeout = 0, 0
		if !g.Equal(&g2) {
			t.Fatalf("second commit changed %+v:\n before %+v\n after  %+v", k, g, g2)
		}
	}

	// Flush empties the table.
	if err := w.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if got := dumpTable(t, ns); len(got) != 0 {
		t.Errorf("after Flush %d flows remain", len(got))
	}
}

func mustAddr(s string) [16]byte { return flow.AddrFrom(netip.MustParseAddr(s)) }

// natFlows are SNAT and DNAT flows, IPv4 and IPv6, TCP/UDP/ICMP.
func natFlows() []flow.Flow {
	st := flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured
	tcp := flow.TCPInfo{State: flow.TCPEstablished, WScaleOrig: 7, WScaleRep: 9,
		FlagsOrig: flow.TCPFlagWindowScale, FlagsRep: flow.TCPFlagWindowScale}
	mk := func(fam, proto uint8, o, r flow.Tuple) flow.Flow {
		f := flow.Flow{Key: flow.Key{Family: fam, Proto: proto, Orig: o}, Reply: r, Status: st, Timeout: 600}
		if proto == flow.ProtoTCP {
			f.TCP = tcp
		}
		return f
	}
	a := mustAddr
	return []flow.Flow{
		// SNAT v4 TCP, address and port.
		mk(flow.FamilyIPv4, flow.ProtoTCP,
			flow.Tuple{Src: a("10.1.0.1"), Dst: a("192.0.2.10"), SrcPort: 40000, DstPort: 443},
			flow.Tuple{Src: a("192.0.2.10"), Dst: a("203.0.113.1"), SrcPort: 443, DstPort: 61000}),
		// SNAT v4 UDP, address only.
		mk(flow.FamilyIPv4, flow.ProtoUDP,
			flow.Tuple{Src: a("10.1.0.2"), Dst: a("192.0.2.10"), SrcPort: 5353, DstPort: 53},
			flow.Tuple{Src: a("192.0.2.10"), Dst: a("203.0.113.1"), SrcPort: 53, DstPort: 5353}),
		// DNAT v4 TCP (port forward).
		mk(flow.FamilyIPv4, flow.ProtoTCP,
			flow.Tuple{Src: a("198.51.100.7"), Dst: a("203.0.113.1"), SrcPort: 50000, DstPort: 80},
			flow.Tuple{Src: a("10.1.0.80"), Dst: a("198.51.100.7"), SrcPort: 8080, DstPort: 50000}),
		// SNAT v4 ICMP echo.
		mk(flow.FamilyIPv4, flow.ProtoICMP,
			flow.Tuple{Src: a("10.1.0.3"), Dst: a("192.0.2.10"), SrcPort: 4242, DstPort: 8 << 8},
			flow.Tuple{Src: a("192.0.2.10"), Dst: a("203.0.113.1"), SrcPort: 4242, DstPort: 0}),
		// SNAT v6 TCP.
		mk(flow.FamilyIPv6, flow.ProtoTCP,
			flow.Tuple{Src: a("fd00::1"), Dst: a("2001:db8::10"), SrcPort: 40001, DstPort: 443},
			flow.Tuple{Src: a("2001:db8::10"), Dst: a("2001:db8:ff::1"), SrcPort: 443, DstPort: 62000}),
		// DNAT v6 UDP.
		mk(flow.FamilyIPv6, flow.ProtoUDP,
			flow.Tuple{Src: a("2001:db8:5::7"), Dst: a("2001:db8:ff::1"), SrcPort: 40002, DstPort: 53},
			flow.Tuple{Src: a("fd00::53"), Dst: a("2001:db8:5::7"), SrcPort: 5353, DstPort: 40002}),
		// SNAT and DNAT at once, v4 TCP.
		mk(flow.FamilyIPv4, flow.ProtoTCP,
			flow.Tuple{Src: a("198.51.100.8"), Dst: a("203.0.113.1"), SrcPort: 50001, DstPort: 25},
			flow.Tuple{Src: a("10.1.0.25"), Dst: a("10.1.0.254"), SrcPort: 2525, DstPort: 30001}),
	}
}

func TestWriterNAT(t *testing.T) {
	ns := netnstest.New(t)
	loadNAT(t, ns)
	w := newTestWriter(t, ns, WriterOptions{})
	flows := natFlows()
	for i := range flows {
		if !flows[i].NATed() {
			t.Fatalf("flow %d is not NATed", i)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	written := time.Now()
	res, err := w.Commit(ctx, flows, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := countOps(res); c[Created] != len(flows) {
		t.Fatalf("results %v%s", c, firstFailures(res, 10))
	}
	got := dumpTable(t, ns)
	checkWritten(t, flows, got, 0, kernelTCPFlags(t, ns), written)
	for _, f := range flows {
		g := got[f.Key]
		wantBits := natStatus(&f)
		if g.Status&(flow.StatusSrcNAT|flow.StatusDstNAT) != wantBits {
			t.Errorf("%s: status %#x, want NAT bits %#x", flow.Addr(f.Family, f.Orig.Src), g.Status, wantBits)
		}
		if wantBits&flow.StatusSrcNAT != 0 && g.Status&flow.StatusSrcNATDone == 0 ||
			wantBits&flow.StatusDstNAT != 0 && g.Status&flow.StatusDstNATDone == 0 {
			t.Errorf("%s: status %#x lacks NAT_DONE", flow.Addr(f.Family, f.Orig.Src), g.Status)
		}
	}
	if t.Failed() {
		t.Log(netnstest.Run(t, "ip", "netns", "exec", ns.Name, "conntrack", "-L"))
	}

	// Again: all updated, nothing changes.
	written = time.Now()
	res, err = w.Commit(ctx, flows, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := countOps(res); c[Updated] != len(flows) {
		t.Fatalf("second commit results %v%s", c, firstFailures(res, 10))
	}
	checkWritten(t, flows, dumpTable(t, ns), 0, kernelTCPFlags(t, ns), written)
}

// A flow that exists with another NAT (or none) is replaced.
func TestWriterReplaceNAT(t *testing.T) {
	for _, viaDump := range []bool{false, true} {
		t.Run(fmt.Sprintf("dump=%v", viaDump), func(t *testing.T) { testReplaceNAT(t, viaDump) })
	}
}

func testReplaceNAT(t *testing.T, viaDump bool) {
	ns := netnstest.New(t)
	loadNAT(t, ns)
	w := newTestWriter(t, ns, WriterOptions{})
	if viaDump {
		w.dumpThreshold = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	old := natFlows()[:5]
	old = append(old, testFlow(1)) // plain TCP, becomes NATed
	if res, err := w.Commit(ctx, old, nil); err != nil || countOps(res)[Created] != len(old) {
		t.Fatalf("first commit: %v %v%s", err, countOps(res), firstFailures(res, 5))
	}
	// Same original tuples, new NAT.
	nw := slices.Clone(old)
	for i := range nw {
		f := &nw[i]
		switch f.Family {
		case flow.FamilyIPv4:
			if f.Reply.Dst != f.Orig.Src {
				f.Reply.Dst = mustAddr("203.0.113.99")
			} else {
				f.Reply.Src = mustAddr("10.9.9.9")
			}
		default:
			f.Reply.Dst = mustAddr("2001:db8:ee::1")
		}
		if f.Proto != flow.ProtoICMP {
			f.Reply.DstPort++
		}
		f.Status &^= flow.StatusSrcNAT | flow.StatusDstNAT
	}
	// And one NATed flow that becomes plain.
	plain := natFlows()[5]
	plain.Reply = plain.Orig.Invert(plain.Proto)
	nw = append(nw, plain)
	if res, err := w.Commit(ctx, natFlows()[5:6], nil); err != nil || res[0].Op != Created {
		t.Fatalf("commit %v %+v", err, res)
	}

	written := time.Now()
	res, err := w.Commit(ctx, nw, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := countOps(res); c[Replaced] != len(nw) {
		t.Fatalf("results %v, want %d replaced%s", c, len(nw), firstFailures(res, 10))
	}
	got := dumpTable(t, ns)
	if len(got) != len(nw) {
		t.Errorf("kernel holds %d flows, want %d", len(got), len(nw))
	}
	checkWritten(t, nw, got, 0, kernelTCPFlags(t, ns), written)
}

// Invalid flows in a batch fail alone; the others are written.
func TestWriterPartialFailure(t *testing.T) {
	ns := netnstest.New(t)
	w := newTestWriter(t, ns, WriterOptions{Batch: 16})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	flows := testFlows(100)
	// ICMP flows only (i%20 in 12,13): their DstPort holds type<<8|code.
	badAt := map[int]unix.Errno{}
	for i := range flows {
		f := &flows[i]
		switch {
		case i == 12 || i == 53:
			// ICMP destination unreachable is no flow the kernel tracks.
			f.Orig.DstPort = 3 << 8
			f.Reply = f.Orig.Invert(f.Proto)
			badAt[i] = unix.EINVAL
		case i == 40:
			// TCP state >= TCP_CONNTRACK_MAX: ERANGE from the attribute
			// policy on current kernels, EINVAL on older ones.
			f.TCP.State = 200
			badAt[i] = unix.ERANGE
		case i == 77:
			f.Family = 0 // no address family
			badAt[i] = unix.EAFNOSUPPORT
		case i == 99: // last of the last batch
			f.Family = flow.FamilyIPv6
			f.Proto = flow.ProtoICMPv6
			f.Orig.DstPort = 1 << 8 // ICMPv6 unreachable
			f.Reply = f.Orig.Invert(f.Proto)
			badAt[i] = unix.EINVAL
		}
	}
	for _, i := range []int{12, 40, 53} {
		if flows[i].Proto != flow.ProtoICMP && flows[i].Proto != flow.ProtoTCP {
			t.Fatalf("flow %d is proto %d", i, flows[i].Proto)
		}
	}
	written := time.Now()
	res, err := w.Commit(ctx, flows, nil)
	if err != nil {
		t.Fatal(err)
	}
	var good []flow.Flow
	for i, r := range res {
		want, bad := badAt[i]
		switch {
		case bad && r.Op != Failed:
			t.Errorf("flow %d: %v, want failed with %v", i, r.Op, want)
		case bad && !errors.Is(r.Err, want) && !(want == unix.ERANGE && errors.Is(r.Err, unix.EINVAL)):
			t.Errorf("flow %d: error %v, want %v", i, r.Err, want)
		case !bad && r.Op != Created:
			t.Errorf("flow %d: %v %v, want created", i, r.Op, r.Err)
		case !bad:
			good = append(good, flows[i])
		}
	}
	got := dumpTable(t, ns)
	if len(got) != len(good) {
		t.Errorf("kernel holds %d flows, want %d", len(got), len(good))
	}
	checkWritten(t, good, got, DefaultWriterMinTimeout, kernelTCPFlags(t, ns), written)
}

func TestWriterUpdateDelete(t *testing.T) {
	ns := netnstest.New(t)
	loadNAT(t, ns)
	w := newTestWriter(t, ns, WriterOptions{Sockets: 3, Batch: 7})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flows := testFlows(200)
	if res, err := w.Commit(ctx, flows, nil); err != nil || countOps(res)[Created] != len(flows) {
		t.Fatalf("commit: %v %v%s", err, countOps(res), firstFailures(res, 5))
	}

	// Purge-style update: cap every timeout at 40 s, with status bits
	// the kernel cannot clear missing (EBUSY path).
	capped := slices.Clone(flows)
	for i := range capped {
		capped[i].Timeout = 40
		if i%2 == 0 {
			capped[i].Status &^= flow.StatusAssured | flow.StatusSeenReply
		}
	}
	missing := testFlow(100000)
	capped = append(capped, missing)
	res, err := w.Update(ctx, capped)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res[:len(flows)] {
		if r.Op != Updated {
			t.Fatalf("update %d: %v %v", i, r.Op, r.Err)
		}
	}
	if r := res[len(flows)]; r.Op != Failed || !errors.Is(r.Err, unix.ENOENT) {
		t.Errorf("update of a missing flow: %v %v, want ENOENT", r.Op, r.Err)
	}
	got := dumpTable(t, ns)
	for _, f := range flows {
		g := got[f.Key]
		if g.Timeout > 40 || g.Timeout < 35 {
			t.Fatalf("timeout %d after update to 40", g.Timeout)
		}
		if g.Status&flow.StatusAssured != f.Status&flow.StatusAssured {
			t.Fatalf("update lost ASSURED: %#x", g.Status)
		}
	}

	// Age: a flow reported 100 s ago with 600 s left gets 500 s.
	one := []flow.Flow{flows[3]}
	one[0].Timeout = 600
	if res, err := w.Commit(ctx, one, []time.Duration{100 * time.Second}); err != nil || res[0].Op != Updated {
		t.Fatalf("commit with age: %v %+v", err, res)
	}
	if g := dumpTable(t, ns)[one[0].Key]; g.Timeout < 495 || g.Timeout > 500 {
		t.Errorf("timeout %d, want 500", g.Timeout)
	}

	keys := make([]flow.Key, 0, len(flows)+1)
	for _, f := range flows {
		keys = append(keys, f.Key)
	}
	keys = append(keys, missing.Key)
	res, err = w.Delete(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	if c := countOps(res); c[Deleted] != len(flows) || c[Failed] != 1 || !errors.Is(res[len(flows)].Err, unix.ENOENT) {
		t.Errorf("delete results %v, last %v", c, res[len(flows)].Err)
	}
	if got := dumpTable(t, ns); len(got) != 0 {
		t.Errorf("%d flows left after delete", len(got))
	}
}

// A cancelled context ends an operation; the writer stays usable.
func TestWriterContext(t *testing.T) {
	ns := netnstest.New(t)
	w := newTestWriter(t, ns, WriterOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	flows := testFlows(5000)
	res, err := w.Commit(ctx, flows, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Commit with a cancelled context: %v", err)
	}
	if len(res) != len(flows) {
		t.Fatalf("%d results", len(res))
	}
	for _, r := range res {
		if r.Op == Failed && !errors.Is(r.Err, context.Canceled) {
			t.Fatalf("failed with %v", r.Err)
		}
	}
	res, err = w.Commit(context.Background(), flows, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := countOps(res); c[Created]+c[Updated] != len(flows) {
		t.Fatalf("results after a cancelled commit: %v%s", c, firstFailures(res, 5))
	}
	w.Close()
	if _, err := w.Commit(context.Background(), flows[:1], nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Commit after Close: %v", err)
	}
}

type eventRecorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *eventRecorder) Event(ev *Event) {
	r.mu.Lock()
	r.events = append(r.events, *ev)
	r.mu.Unlock()
}

func (r *eventRecorder) Overrun() {}

// eventsOf returns the events of a type seen so far for flows matching match.
func (r *eventRecorder) eventsOf(typ EventType, match func(*flow.Flow) bool) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	for _, ev := range r.events {
		if ev.Type == typ && match(&ev.Flow) {
			out = append(out, ev)
		}
	}
	return out
}

func waitEvents(t *testing.T, r *eventRecorder, n int, match func(*flow.Flow) bool) []Event {
	t.Helper()
	return waitEventsOf(t, r, EventNew, n, match)
}

func waitEventsOf(t *testing.T, r *eventRecorder, typ EventType, n int, match func(*flow.Flow) bool) []Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := r.eventsOf(typ, match)
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %v events, want %d", len(evs), typ, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Events caused by the writer carry its port ids; events from traffic and
// from the conntrack CLI do not.
func TestWriterEventsPortID(t *testing.T) {
	ns := netnstest.New(t)
	netnstest.Need(t, "conntrack", "ping")
	ns.Nft(t, `table inet ctsyncd_test {
	chain output {
		type filter hook output priority 0;
		ct state new counter accept
	}
}
`)
	w := newTestWriter(t, ns, WriterOptions{Sockets: 2, Batch: 2})
	ids := w.PortIDs()
	if len(ids) != 2 || ids[0] == 0 || ids[1] == 0 || ids[0] == ids[1] {
		t.Fatalf("PortIDs %v", ids)
	}

	l, err := Listen(ListenOptions{NetNS: ns.FD(t), ReadBuffer: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var rec eventRecorder
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, &rec) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	flows := testFlows(8)
	res, err := w.Commit(context.Background(), flows, nil)
	if err != nil || countOps(res)[Created] != len(flows) {
		t.Fatalf("commit: %v %v", err, countOps(res))
	}
	isTest := func(f *flow.Flow) bool { return f.Orig.Src[0] == 10 || f.Orig.Src[0] == 0x20 }
	used := map[uint32]bool{}
	for _, ev := range waitEvents(t, &rec, len(flows), isTest) {
		if !slices.Contains(ids, ev.PortID) {
			t.Errorf("NEW event of a written flow has port id %d, not one of %v", ev.PortID, ids)
		}
		used[ev.PortID] = true
	}
	if len(used) != 2 {
		t.Logf("events came from %d of 2 sockets", len(used))
	}

	// Updates and deletes by the writer carry its port ids too.
	if res, err := w.Commit(context.Background(), flows, nil); err != nil || countOps(res)[Updated] != len(flows) {
		t.Fatalf("second commit: %v %v", err, countOps(res))
	}
	keys := make([]flow.Key, len(flows))
	for i := range flows {
		keys[i] = flows[i].Key
	}
	if res, err := w.Delete(context.Background(), keys); err != nil || countOps(res)[Deleted] != len(keys) {
		t.Fatalf("delete: %v %v", err, countOps(res))
	}
	for _, typ := range []EventType{EventUpdate, EventDestroy} {
		evs := waitEventsOf(t, &rec, typ, len(flows), isTest)
		for _, ev := range evs {
			if !slices.Contains(ids, ev.PortID) {
				t.Errorf("%v event of a written flow has port id %d, not one of %v", typ, ev.PortID, ids)
			}
		}
	}

	// conntrack -I: a NEW event with the CLI's port id.
	ns.Exec(t, "conntrack", "-I", "-p", "udp", "-s", "10.77.0.1", "-d", "10.77.0.2",
		"--sport", "1111", "--dport", "2222", "-t", "100")
	cli := mustAddr("10.77.0.1")
	for _, ev := range waitEvents(t, &rec, 1, func(f *flow.Flow) bool { return f.Orig.Src == cli }) {
		if slices.Contains(ids, ev.PortID) {
			t.Errorf("conntrack -I event has the writer's port id %d", ev.PortID)
		}
	}

	// Traffic: ping on loopback.
	ns.Exec(t, "ping", "-c", "1", "-W", "1", "127.0.0.1")
	lo := mustAddr("127.0.0.1")
	for _, ev := range waitEvents(t, &rec, 1, func(f *flow.Flow) bool { return f.Orig.Src == lo && f.Proto == flow.ProtoICMP }) {
		if ev.PortID != 0 {
			t.Errorf("traffic event has port id %d, want 0", ev.PortID)
		}
	}
}

// labelRuleset makes the kernel keep labels: they stick only when a ct
// label rule exists in the namespace.
const labelRuleset = `table inet ctsyncd_labels {
	chain output {
		type filter hook output priority 0;
		ct label 127 counter
	}
}
`

// extraFlows are flows with the rarer attributes: SCTP state and vtags, GRE,
// an FTP helper with labels and a sequence adjustment; zone 3, mark 0x42.
func extraFlows() []flow.Flow {
	a := mustAddr
	st := flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured
	mk := func(proto uint8, o flow.Tuple, x *flow.Extra) flow.Flow {
		f := flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: proto, Orig: o, Zone: 3},
			Status: st, Timeout: 300, Mark: 0x42, Extra: x}
		f.Reply = f.Orig.Invert(proto)
		return f
	}
	flows := []flow.Flow{
		mk(flow.ProtoSCTP, flow.Tuple{Src: a("10.2.0.1"), Dst: a("10.2.0.2"), SrcPort: 5000, DstPort: 38412},
			&flow.Extra{SCTP: flow.SCTPInfo{State: 3, VTagOriginal: 0x1234, VTagReply: 0x5678}}),
		mk(flow.ProtoGRE, flow.Tuple{Src: a("10.2.0.1"), Dst: a("10.2.0.3"), SrcPort: 0, DstPort: 0}, nil),
		mk(flow.ProtoTCP, flow.Tuple{Src: a("10.2.0.1"), Dst: a("10.2.0.4"), SrcPort: 40000, DstPort: 21},
			&flow.Extra{Helper: "ftp", Labels: [16]byte{0: 0x01, 15: 0x80},
				SeqAdjOrig: flow.SeqAdj{CorrectionPos: 1000, OffsetBefore: 3, OffsetAfter: 7}}),
	}
	flows[2].TCP = flow.TCPInfo{State: flow.TCPEstablished}
	return flows
}

// The rarer attributes: SCTP state, GRE keys, helper, labels, sequence
// adjustment, zone.
func TestWriterExtras(t *testing.T) {
	ns := netnstest.New(t)
	ns.Nft(t, labelRuleset)
	w := newTestWriter(t, ns, WriterOptions{})
	flows := extraFlows()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for round, want := range []Op{Created, Updated} {
		written := time.Now()
		res, err := w.Commit(ctx, flows, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			if r.Op != want {
				t.Errorf("round %d flow %d: %v %v, want %v", round, i, r.Op, r.Err, want)
			}
		}
		got := dumpTable(t, ns)
		checkWritten(t, flows, got, 0, kernelTCPFlags(t, ns), written)
		for i, f := range flows {
			g := got[f.Key]
			if f.Extra.IsZero() != g.Extra.IsZero() {
				t.Errorf("flow %d: extra %+v, want %+v", i, g.Extra, f.Extra)
				continue
			}
			if f.Extra.IsZero() {
				continue
			}
			gx, fx := *g.Extra, *f.Extra
			gx.SynProxy = flow.SynProxy{}
			if gx != fx {
				t.Errorf("round %d flow %d: extra\n got %+v\nwant %+v", round, i, gx, fx)
			}
		}
	}
}

// A batch bigger than a sendmsg may carry goes out in several, and the
// replies still match their flows.
func TestWriterSplitSend(t *testing.T) {
	ns := netnstest.New(t)
	w := newTestWriter(t, ns, WriterOptions{Batch: 1 << 20})
	if w.opts.Batch != MaxWriterBatch {
		t.Errorf("batch %d, want it capped at %d", w.opts.Batch, MaxWriterBatch)
	}
	for _, s := range w.socks {
		s.maxSend = 1000 // a few messages per sendmsg
	}
	flows := testFlows(5000)
	flows[1512].Orig.DstPort = 3 << 8 // ICMP unreachable: invalid
	flows[1023].TCP.State = 200       // invalid, last of a batch
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, want := range []Op{Created, Updated} {
		res, err := w.Commit(ctx, flows, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			bad := i == 1512 || i == 1023
			if bad != (r.Op == Failed) || !bad && r.Op != want {
				t.Fatalf("flow %d: %v %v", i, r.Op, r.Err)
			}
		}
	}
	if got := dumpTable(t, ns); len(got) != len(flows)-2 {
		t.Errorf("kernel holds %d flows, want %d", len(got), len(flows)-2)
	}
}

// An entry that holds our original tuple as its reply tuple (the same
// connection tracked the other way round) blocks the create; it is
// replaced, whether the writer reads existing entries by GET or by dump.
func TestWriterReplaceReversed(t *testing.T) {
	for _, viaDump := range []bool{false, true} {
		t.Run(fmt.Sprintf("dump=%v", viaDump), func(t *testing.T) {
			ns := netnstest.New(t)
			w := newTestWriter(t, ns, WriterOptions{})
			if viaDump {
				w.dumpThreshold = 1
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			fs := testFlows(40)[:12] // TCP and UDP, not NATed
			rev := slices.Clone(fs)
			for i := range rev {
				rev[i].Orig, rev[i].Reply = fs[i].Reply, fs[i].Orig
				rev[i].TCP.WScaleOrig, rev[i].TCP.WScaleRep = fs[i].TCP.WScaleRep, fs[i].TCP.WScaleOrig
			}
			if res, err := w.Commit(ctx, rev, nil); err != nil || countOps(res)[Created] != len(rev) {
				t.Fatalf("commit reversed: %v %v%s", err, countOps(res), firstFailures(res, 5))
			}
			written := time.Now()
			res, err := w.Commit(ctx, fs, nil)
			if err != nil {
				t.Fatal(err)
			}
			if c := countOps(res); c[Replaced] != len(fs) {
				t.Fatalf("results %v, want %d replaced%s", c, len(fs), firstFailures(res, 5))
			}
			got := dumpTable(t, ns)
			if len(got) != len(fs) {
				t.Errorf("kernel holds %d flows, want %d", len(got), len(fs))
			}
			checkWritten(t, fs, got, DefaultWriterMinTimeout, kernelTCPFlags(t, ns), written)
		})
	}
}

// An entry made elsewhere (here by ti-mo's Create, without liberal flags
// and with ASSURED) is updated: liberal in both directions, timeout and mark
// taken from the flow, ASSURED kept although the flow lacks it.
func TestWriterUpdatesForeignEntry(t *testing.T) {
	ns := netnstest.New(t)
	w := newTestWriter(t, ns, WriterOptions{})
	f := flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP,
		Orig: flow.Tuple{Src: mustAddr("10.66.0.1"), Dst: mustAddr("10.66.0.2"), SrcPort: 40000, DstPort: 443}},
		Status: flow.StatusConfirmed | flow.StatusSeenReply, Timeout: 900, Mark: 5,
		TCP: flow.TCPInfo{State: flow.TCPEstablished}}
	f.Reply = f.Orig.Invert(f.Proto)
	c, err := conntrack.Dial(&netlink.Config{NetNS: ns.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	foreign := timoconv.ToConntrack(&f)
	foreign.Status = conntrack.Status(flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured)
	foreign.Timeout, foreign.Mark = 100, 0
	foreign.ProtoInfo.TCP.OriginalFlags, foreign.ProtoInfo.TCP.ReplyFlags = 0, 0
	err = c.Create(foreign)
	c.Close()
	if err != nil {
		t.Fatalf("ti-mo Create: %v", err)
	}
	before := kernelTCPFlags(t, ns)[f.Key]
	if before[0]&flow.TCPFlagBeLiberal != 0 {
		t.Fatalf("conntrack -I already set BE_LIBERAL: %#x", before)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	written := time.Now()
	res, err := w.Commit(ctx, []flow.Flow{f}, nil)
	if err != nil || res[0].Op != Updated {
		t.Fatalf("commit: %v %+v", err, res)
	}
	got := dumpTable(t, ns)
	g := got[f.Key]
	if g.Status&flow.StatusAssured == 0 {
		t.Errorf("ASSURED lost: %#x", g.Status)
	}
	f.Status |= flow.StatusAssured
	checkWritten(t, []flow.Flow{f}, got, 0, kernelTCPFlags(t, ns), written)
}

// Whenever a context ends a commit, every flow still gets a result.
func TestWriterDeadlineResults(t *testing.T) {
	ns := netnstest.New(t)
	loadNAT(t, ns)
	w := newTestWriter(t, ns, WriterOptions{Batch: 64})
	flows := testFlows(20000)
	if _, err := w.Commit(context.Background(), flows[:10000], nil); err != nil {
		t.Fatal(err)
	}
	for _, d := range []time.Duration{time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 200 * time.Millisecond} {
		for _, dump := range []int{1, dumpThreshold} {
			w.dumpThreshold = dump
			ctx, cancel := context.WithTimeout(context.Background(), d)
			res, err := w.Commit(ctx, flows, nil)
			cancel()
			if len(res) != len(flows) {
				t.Fatalf("%d results for %d flows", len(res), len(flows))
			}
			for i, r := range res {
				if r.Op < Created || r.Op > Failed || (r.Op == Failed) != (r.Err != nil) || r.Key != flows[i].Key {
					t.Fatalf("deadline %v: result %d is %+v (err %v)", d, i, r, err)
				}
				if r.Op == Failed && !errors.Is(r.Err, context.DeadlineExceeded) {
					t.Fatalf("deadline %v: flow %d failed with %v", d, i, r.Err)
				}
			}
		}
	}
	// Still usable, and everything lands.
	res, err := w.Commit(context.Background(), flows, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := countOps(res); c[Failed] != 0 {
		t.Fatalf("after deadlines: %v%s", c, firstFailures(res, 5))
	}
	if got := dumpTable(t, ns); len(got) != len(flows) {
		t.Errorf("kernel holds %d flows, want %d", len(got), len(flows))
	}
}
