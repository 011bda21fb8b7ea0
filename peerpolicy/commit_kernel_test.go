//go:build kernel

package peerpolicy

import (
	"context"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// TestKernelCommitSanitized: a peer's crafted flows committed into a real
// conntrack table. Without a policy (the control run) the flow keeps
// FIXED_TIMEOUT and a timeout beyond any the kernel would give; with the
// default policy the flow with a helper is refused and the other one lands
// without FIXED_TIMEOUT and with its timeout capped.
func TestKernelCommitSanitized(t *testing.T) {
	for _, withPolicy := range []bool{false, true} {
		ns := netnstest.New(t)
		ns.Nft(t, `table inet peerpolicy_nat {
	chain postrouting { type nat hook postrouting priority srcnat; }
	chain prerouting { type nat hook prerouting priority dstnat; }
}
`)
		w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: ns.FD(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		noHelper := crafted()
		noHelper.Extra = nil // labels need a connlabel rule, the helper its module
		noHelper.Orig.SrcPort = 40001
		noHelper.Reply.DstPort = 40001
		ext := cache.NewExternal()
		ext.Apply("evil", cache.Change{Flow: noHelper}, time.Now())
		opt := failover.CommitOptions{Timeout: 30 * time.Second}
		withHelper := crafted()
		withHelper.Extra = &flow.Extra{Helper: "ftp"}
		if withPolicy {
			ext.Apply("evil", cache.Change{Flow: withHelper}, time.Now())
			p, _ := New(Options{})
			opt.Admit = p.Admit
		}
		rep, err := failover.Commit(context.Background(), ext, w, opt)
		if err != nil {
			t.Fatalf("commit: %v (%+v)", err, rep)
		}
		got := map[flow.Key]flow.Flow{}
		if err := kernel.Dump(context.Background(), kernel.DumpOptions{NetNS: ns.FD(t)}, func(f *flow.Flow) { got[f.Key] = *f }); err != nil {
			t.Fatal(err)
		}
		f, ok := got[noHelper.Key]
		if !ok {
			t.Fatalf("policy %v: the flow without a helper is not in the kernel (report %+v)", withPolicy, rep)
		}
		t.Logf("policy %v: report %+v; kernel: %s (status %#x, timeout %d)", withPolicy, rep, f.String(), f.Status, f.Timeout)
		fixed := f.Status&flow.StatusFixedTimeout != 0
		if !withPolicy {
			if !fixed && f.Timeout <= 5*24*3600 {
				t.Errorf("control run: the kernel neither kept FIXED_TIMEOUT nor the long timeout; the test shows nothing")
			}
			continue
		}
		if fixed || f.Timeout > 5*24*3600 {
			t.Errorf("committed with FIXED_TIMEOUT %v and timeout %d", fixed, f.Timeout)
		}
		if _, ok := got[withHelper.Key]; ok || rep.Refused != 1 {
			t.Errorf("the flow with helper ftp: in the kernel %v, refused %d", ok, rep.Refused)
		}
		if f.Mark != noHelper.Mark || f.Zone != noHelper.Zone || !f.NATed() {
			t.Errorf("allowed attributes lost: %s", f.String())
		}
	}
}
