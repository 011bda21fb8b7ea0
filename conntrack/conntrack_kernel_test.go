//go:build kernel

package conntrack

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/flowgen"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// mixedTable makes a namespace whose table holds a mix of flows: flowgen's
// (TCP/UDP/ICMP, IPv4 and IPv6, SNAT and DNAT, zone 7, marks) plus flows
// in other TCP states, unreplied ones and one in zone 3.
func mixedTable(t *testing.T, n int) (*netnstest.NS, *Handle) {
	t.Helper()
	netnstest.Need(t, "conntrack")
	ns := netnstest.New(t)
	ns.Nft(t, `table inet ctsyncd_nat {
	chain postrouting { type nat hook postrouting priority srcnat; }
	chain prerouting { type nat hook prerouting priority dstnat; }
}
`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: ns.FD(t), MinTimeout: 3000})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	res, err := w.Commit(ctx, flowgen.Flows(0, n), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("commit %v: %v", r.Key, r.Err)
		}
	}
	h, err := Open(Options{NetNS: ns.Name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	for i, spec := range []string{
		"-p tcp -s 10.200.0.1 -d 10.200.0.2 --sport 1000 --dport 25 --state SYN_SENT",
		"-p tcp -s 10.200.0.1 -d 10.200.0.3 --sport 1001 --dport 25 --state TIME_WAIT -u SEEN_REPLY,ASSURED",
		"-p tcp -s 10.200.0.1 -d 10.200.0.4 --sport 1002 --dport 25 --state CLOSE_WAIT -u SEEN_REPLY -w 3 -m 0x100",
		"-p udp -s 10.200.0.1 -d 10.200.0.5 --sport 1003 --dport 514",
		"-p udp -s fd00::1 -d fd00::2 --sport 1004 --dport 514 -q fd00::99 -u SEEN_REPLY",
		"-p icmpv6 -s fd00::1 -d fd00::3 --icmp-type 128 --icmp-code 0 --icmp-id 9",
	} {
		spec, err := ParseFilter(strings.Fields(spec))
		if err != nil {
			t.Fatal(err)
		}
		fl, err := FlowFrom(spec, 3000)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Create(ctx, &fl); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	return ns, h
}

// conntrackL runs conntrack(8) -L with args in ns and returns its lines
// normalized as normLine does, sorted.
func conntrackL(t *testing.T, ns *netnstest.NS, args ...string) []string {
	t.Helper()
	cmd := ns.Cmd(append([]string{"conntrack", "-L"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("conntrack -L %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" {
			lines = append(lines, normLine(l))
		}
	}
	slices.Sort(lines)
	return lines
}

// normLine drops what differs between two reads of the same flow: the
// timeout (third field) and conntrack's reference count (use=N).
func normLine(l string) string {
	f := strings.Fields(l)
	if len(f) > 2 {
		f = append(f[:2:2], f[3:]...)
	}
	if n := len(f); n > 0 && strings.HasPrefix(f[n-1], "use=") {
		f = f[:n-1]
	}
	return strings.Join(f, " ")
}

func ourL(t *testing.T, h *Handle, f Filter) []string {
	t.Helper()
	var lines []string
	for fl, err := range h.List(context.Background(), f) {
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, normLine(FormatFlow(fl, false)))
	}
	slices.Sort(lines)
	return lines
}

// TestKernelListMatchesConntrack lists a mixed table with a table of
// filters, each with conntrack(8) and with List, and wants the same lines.
func TestKernelListMatchesConntrack(t *testing.T) {
	ns, h := mixedTable(t, 400)
	t.Logf("kernel dump filters: %+v", kernel.ProbeFilterSupport())
	cases := []struct {
		args  string
		empty bool // conntrack(8) finds nothing either
	}{
		{args: ""},
		{args: "-p tcp"},
		{args: "-p udp"},
		{args: "-p icmp"},
		{args: "-p icmpv6"},
		{args: "-f ipv4"},
		{args: "-f ipv6"},
		{args: "-s 10.0.0.5"},
		{args: "-s 10.0.0.0/25"},
		{args: "-s 2001:db8:1::/48"},
		{args: "-d 192.0.2.3"},
		{args: "-d 198.51.100.1"},
		{args: "-r 172.16.0.18"},
		{args: "-q 203.0.113.1"},
		{args: "-q fd00::99"},
		{args: "-p tcp --dport 443"},
		{args: "-p tcp --sport 1030"},
		{args: "-p udp --dport 53 -s 10.0.1.0/24"},
		{args: "-p udp --reply-port-src 8053"},
		{args: "-p tcp --reply-port-dst 1024"},
		{args: "-p tcp --state ESTABLISHED"},
		{args: "-p tcp --state SYN_SENT"},
		{args: "-p tcp --state TIME_WAIT"},
		{args: "-p icmp --icmp-type 8"},
		{args: "-p icmp --icmp-type 0", empty: true},
		{args: "-p icmpv6 --icmpv6-type 128 --icmpv6-id 9"},
		{args: "-s fd00::1"},
		{args: "-d fd00::2"},
		{args: "-r fd00::2 -f ipv6"},
		{args: "-m 3"},
		{args: "-m 1/1"},
		{args: "-m 0x100"},
		{args: "-w 7"},
		{args: "-w 3"},
		{args: "-w 0"},
		{args: "-u ASSURED"},
		{args: "-u SEEN_REPLY"},
		{args: "-u SEEN_REPLY,ASSURED"},
		{args: "-f ipv4 -p tcp -d 192.0.2.0/24 --dport 80 -m 0"},
		{args: "-p udp -w 7 -u ASSURED"},
		{args: "-f ipv6 -p tcp --dport 22"},
		{args: "-s 10.9.9.9", empty: true},
	}
	for _, c := range cases {
		var args []string
		if c.args != "" {
			args = strings.Fields(c.args)
		}
		f, err := ParseFilter(args)
		if err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		want := conntrackL(t, ns, args...)
		got := ourL(t, h, f)
		if (len(want) == 0) != c.empty {
			t.Errorf("%q: conntrack(8) lists %d flows; the table is not what the case needs", c.args, len(want))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%q: List gives %d flows, conntrack -L %d", c.args, len(got), len(want))
			for _, l := range diff(got, want) {
				t.Logf("  %s", l)
			}
			continue
		}
		n, err := h.Count(context.Background(), f)
		if err != nil || n != len(want) {
			t.Errorf("%q: Count = %d, %v; want %d", c.args, n, err, len(want))
		}
	}
}

// diff lists the lines only in a ("+") or only in b ("-"), both sorted.
func diff(a, b []string) []string {
	var out []string
	for _, l := range a {
		if _, ok := slices.BinarySearch(b, l); !ok {
			out = append(out, "+ "+l)
		}
	}
	for _, l := range b {
		if _, ok := slices.BinarySearch(a, l); !ok {
			out = append(out, "- "+l)
		}
	}
	return out
}

// TestKernelCountAndStats compares Count of the whole table with
// conntrack -C and reads the per-CPU counters.
func TestKernelCountAndStats(t *testing.T) {
	ns, h := mixedTable(t, 100)
	ctx := context.Background()
	n, err := h.Count(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	out := strings.TrimSpace(ns.Exec(t, "conntrack", "-C"))
	if want, _ := strconv.Atoi(out); n != want || n < 100 {
		t.Fatalf("Count = %d, conntrack -C = %q", n, out)
	}
	st, err := h.StatsPerCPU(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) == 0 {
		t.Fatal("no per-CPU statistics")
	}
	g, err := h.Stats(ctx)
	if err != nil || int(g.Entries) != n || g.MaxEntries == 0 {
		t.Fatalf("Stats = %+v, %v; want %d entries and a limit", g, err, n)
	}
}

// TestKernelGetUpdateDelete works on single flows and reads them back.
func TestKernelGetUpdateDelete(t *testing.T) {
	ns, h := mixedTable(t, 40)
	ns.Nft(t, "table inet ctsyncd_labels {\n\tchain output {\n\t\ttype filter hook output priority 0;\n\t\tct label 127 counter\n\t}\n}\n")
	ctx := context.Background()
	spec, _ := ParseFilter(strings.Fields("-p tcp -s 10.201.0.1 -d 10.201.0.2 --sport 7 --dport 8 --state ESTABLISHED -u SEEN_REPLY -l 3"))
	fl, err := FlowFrom(spec, 600)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Create(ctx, &fl); err != nil {
		t.Fatal(err)
	}
	if err := h.Create(ctx, &fl); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	got, err := h.Get(ctx, fl.Key)
	if err != nil {
		t.Fatal(err)
	}
	if got.Extra == nil || got.Extra.Labels[0] != 1<<3 || got.TCP.State != flow.TCPEstablished {
		t.Fatalf("created %s, want label 3 and ESTABLISHED", FormatFlow(&got, true))
	}
	c := Change{SetMark: true, Mark: 0x5a, SetTimeout: true, Timeout: 9000, SetLabels: true}
	c.Labels[1], c.LabelsMask[1] = 1, 1 // add label 8
	if err := h.Update(ctx, fl.Key, c); err != nil {
		t.Fatal(err)
	}
	got, err = h.Get(ctx, fl.Key)
	if err != nil {
		t.Fatal(err)
	}
	if got.Mark != 0x5a || got.Timeout < 8000 || got.Extra == nil || got.Extra.Labels[0] != 1<<3 || got.Extra.Labels[1] != 1 {
		t.Fatalf("after update: %s", FormatFlow(&got, true))
	}
	if err := h.Delete(ctx, fl.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Get(ctx, fl.Key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v, want ErrNotFound", err)
	}
	if err := h.Delete(ctx, fl.Key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
}

// TestKernelDeleteMatching deletes by filter and checks with conntrack(8)
// that exactly the matching flows went.
func TestKernelDeleteMatching(t *testing.T) {
	ns, h := mixedTable(t, 2000)
	ctx := context.Background()
	args := strings.Fields("-f ipv4 -p tcp --dport 443")
	f, _ := ParseFilter(args)
	before := conntrackL(t, ns)
	match := conntrackL(t, ns, args...)
	if len(match) < 500 {
		t.Fatalf("only %d flows match", len(match))
	}
	n, err := h.DeleteMatching(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(match) {
		t.Fatalf("deleted %d, %d matched", n, len(match))
	}
	after := conntrackL(t, ns)
	if left := conntrackL(t, ns, args...); len(left) != 0 || len(after) != len(before)-n {
		t.Fatalf("after deleting %d of %d: %d left, %d match", n, len(before), len(after), len(left))
	}
	if n, err := h.DeleteMatching(ctx, f); n != 0 || err != nil {
		t.Fatalf("second DeleteMatching = %d, %v", n, err)
	}
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if left := conntrackL(t, ns); len(left) != 0 {
		t.Fatalf("%d flows left after Flush", len(left))
	}
}

// TestKernelWatch sees the events of flows it creates and deletes, only
// those its filter selects, and an overrun as an error value when it does
// not read.
func TestKernelWatch(t *testing.T) {
	ns, h := mixedTable(t, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, _ := ParseFilter(strings.Fields("-p udp -d 10.202.0.0/16"))
	type item struct {
		ev  Event
		err error
	}
	ready := make(chan struct{})
	items := make(chan item, 64)
	wctx, wcancel := context.WithCancel(ctx)
	go func() {
		defer close(items)
		close(ready)
		for ev, err := range h.Watch(wctx, f, WatchOptions{Types: EventsNew | EventsDestroy}) {
			items <- item{ev, err}
		}
	}()
	<-ready
	// The watch subscribes asynchronously: create flows until the first
	// event comes, then delete them all.
	var keys []flow.Key
	var first item
	for i := 0; ; i++ {
		spec, _ := ParseFilter(strings.Fields("-p udp -s 10.9.0.1 -d 10.202.0." + strconv.Itoa(i+1) + " --sport 5 --dport 6"))
		fl, _ := FlowFrom(spec, 600)
		other := fl
		other.Orig.Dst = flow.AddrFrom(netip.MustParseAddr("10.203.0.1"))
		other.Orig.SrcPort = uint16(i + 1)
		other.Reply = other.Orig.Invert(other.Proto)
		for _, x := range []*Flow{&other, &fl} { // one outside the filter first
			if err := h.Create(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		keys = append(keys, fl.Key)
		select {
		case it, ok := <-items:
			if !ok {
				t.Fatal("the watch ended")
			}
			first = it
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}
	if first.err != nil || first.ev.Type != kernel.EventNew || first.ev.Flow.Proto != flow.ProtoUDP ||
		!netip.MustParsePrefix("10.202.0.0/16").Contains(first.ev.Flow.DstAddr()) {
		t.Fatalf("first event %v %s, %v", first.ev.Type, FormatFlow(&first.ev.Flow, false), first.err)
	}
	for _, k := range keys {
		if err := h.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	destroyed := 0
	for destroyed < len(keys) {
		it, ok := <-items
		if !ok {
			t.Fatal("the watch ended")
		}
		if it.err != nil {
			t.Fatal(it.err)
		}
		if !f.Match(&it.ev.Flow) {
			t.Fatalf("event outside the filter: %s", FormatFlow(&it.ev.Flow, false))
		}
		if it.ev.Type == kernel.EventDestroy {
			destroyed++
		}
	}
	wcancel()
	for range items {
	}

	// A watch that is not read overruns: the loss comes as ErrOverrun.
	octx, ocancel := context.WithCancel(ctx)
	defer ocancel()
	gotFirst, resume, overrun := make(chan struct{}), make(chan struct{}), make(chan bool, 1)
	go func() {
		first := true
		for _, err := range h.Watch(octx, Filter{}, WatchOptions{ReadBuffer: 4096, Queue: 1}) {
			if first {
				first = false
				close(gotFirst)
				<-resume // stop reading while the table changes
			}
			if IsOverrun(err) {
				overrun <- true
				return
			}
			if err != nil {
				t.Error(err)
				break
			}
		}
		overrun <- false
	}()
	for i := 0; ; i++ {
		spec, _ := ParseFilter(strings.Fields("-p udp -s 10.9.1.1 -d 10.204.0.1 --dport 6 --sport " + strconv.Itoa(i+1)))
		fl, _ := FlowFrom(spec, 600)
		if err := h.Create(ctx, &fl); err != nil {
			t.Fatal(err)
		}
		select {
		case <-gotFirst:
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: ns.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Commit(ctx, flowgen.Flows(100000, 20000), nil); err != nil {
		t.Fatal(err)
	}
	close(resume)
	select {
	case ok := <-overrun:
		if !ok {
			t.Fatal("the watch ended without ErrOverrun")
		}
	case <-time.After(time.Minute):
		ocancel()
		<-overrun
		t.Fatal("no ErrOverrun from a watch that did not read 20000 events")
	}
}

// TestKernelExpect creates expectations on a master with the ftp helper,
// sees their NEW and DESTROY events with WatchExpect, reads one with
// GetExpect and lists them filtered.
func TestKernelExpect(t *testing.T) {
	_, h := mixedTable(t, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec, _ := ParseFilter(strings.Fields("-p tcp -s 10.30.0.1 -d 10.30.0.2 --sport 40000 --dport 21 --state ESTABLISHED -u SEEN_REPLY,ASSURED --helper ftp"))
	master, err := FlowFrom(spec, 3000)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Create(ctx, &master); err != nil {
		t.Fatal(err)
	}
	exp := func(port uint16) Expect {
		e := Expect{Master: master.Orig, MasterProto: master.Proto, Timeout: 300}
		e.Family, e.Proto = master.Family, master.Proto
		e.Tuple = flow.Tuple{Src: master.Orig.Src, Dst: master.Orig.Dst, DstPort: port}
		e.Mask = flow.Tuple{Src: [16]byte{255, 255, 255, 255}, Dst: [16]byte{255, 255, 255, 255}, SrcPort: 0xffff, DstPort: 0xffff}
		return e
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	events := make(chan ExpectEvent, 64)
	go func() {
		defer close(events)
		for ev, err := range h.WatchExpect(wctx, Filter{Proto: flow.ProtoTCP}, WatchOptions{}) {
			if err != nil {
				t.Error(err)
				return
			}
			events <- ev
		}
	}()
	// The watch subscribes asynchronously: make one expectation at a time
	// until the watch reports its NEW. One that came too early is removed
	// again before the next is made (the ftp helper keeps one expectation
	// per master: a second would evict the first, and its DESTROY would
	// come first).
	var ports []uint16
	for port := uint16(50000); ; port++ {
		e := exp(port)
		if err := h.CreateExpect(ctx, &e); err != nil {
			t.Fatal(err)
		}
		seen := false
		for timeout := time.After(time.Second); !seen; {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatal("the expectation watch ended")
				}
				if ev.Type == kernel.EventDestroy {
					continue // of an earlier attempt
				}
				if ev.Type != kernel.EventNew || ev.Expect.Master != master.Orig || ev.Expect.Tuple.DstPort != port {
					t.Fatalf("first expectation event %v %s", ev.Type, ev.Expect.String())
				}
				seen = true
			case <-timeout:
				if _, err := h.DeleteExpectMatching(ctx, Filter{OrigDst: netip.MustParsePrefix("10.30.0.2/32"), Proto: flow.ProtoTCP}); err != nil {
					t.Fatal(err)
				}
				timeout = nil
			}
			if timeout == nil {
				break
			}
		}
		if seen {
			ports = append(ports, port)
			break
		}
	}
	e := exp(ports[0])
	if err := h.CreateExpect(ctx, &e); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	got, err := h.GetExpect(ctx, e.ExpectKey)
	if err != nil || got.Tuple != e.Tuple || got.Helper != "ftp" {
		t.Fatalf("GetExpect = %s, %v", got.String(), err)
	}
	f := Filter{OrigDst: netip.MustParsePrefix("10.30.0.2/32"), Proto: flow.ProtoTCP}
	n := 0
	for x, err := range h.ListExpect(ctx, f) {
		if err != nil || x.Master != master.Orig {
			t.Fatalf("ListExpect: %v %v", x, err)
		}
		n++
	}
	if n != len(ports) {
		t.Fatalf("ListExpect found %d, created %d", n, len(ports))
	}
	if d, err := h.DeleteExpectMatching(ctx, f); err != nil || d != len(ports) {
		t.Fatalf("DeleteExpectMatching = %d, %v; want %d", d, err, len(ports))
	}
	for destroyed := 0; destroyed < len(ports); {
		ev, ok := <-events
		if !ok {
			t.Fatal("the expectation watch ended")
		}
		if ev.Type == kernel.EventDestroy {
			destroyed++
		}
	}
	if _, err := h.GetExpect(ctx, e.ExpectKey); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetExpect after delete: %v", err)
	}
}
