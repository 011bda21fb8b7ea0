//go:build kernel

package daemon

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// An expectation another program creates in the daemon's namespace reaches
// the internal expectation cache through the events, shows in `dump
// internal --expect` and in the stats, leaves with its DESTROY, and comes
// back by reconcile when the cache lost it; one of a helper that
// sync.expectation_helpers does not name is not cached.
func TestKernelDaemonExpectations(t *testing.T) {
	a := func(s string) [16]byte { return flow.AddrFrom(netip.MustParseAddr(s)) }
	master := flow.Flow{
		Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP,
			Orig: flow.Tuple{Src: a("10.9.0.1"), Dst: a("10.9.0.2"), SrcPort: 50000, DstPort: 21}},
		Status: flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured, Timeout: 3600,
		TCP: flow.TCPInfo{State: flow.TCPEstablished}, Extra: &flow.Extra{Helper: "ftp"},
	}
	master.Reply = master.Orig.Invert(master.Proto)
	exp := flow.Expect{
		ExpectKey:   flow.ExpectKey{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Tuple: flow.Tuple{Src: a("10.9.0.1"), Dst: a("10.9.0.2"), DstPort: 40000}},
		Mask:        flow.Tuple{Src: a("255.255.255.255"), Dst: a("255.255.255.255"), DstPort: 0xffff},
		Master:      master.Orig,
		MasterProto: flow.ProtoTCP, Timeout: 200, Helper: "ftp",
	}
	for _, c := range []struct {
		name    string
		helpers []string
		cached  bool
	}{{"all helpers", nil, true}, {"sip only", []string{"sip"}, false}} {
		t.Run(c.name, func(t *testing.T) {
			ns := netnstest.New(t)
			d := startDaemon(t, ns, func(cfg *config.Config) { cfg.Sync.ExpectationHelpers = c.helpers })
			w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: ns.FD(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if res, err := w.Commit(ctx, []flow.Flow{master}, nil); err != nil || res[0].Op != kernel.Created {
				t.Fatalf("master: %+v %v", res, err)
			}
			if res, err := w.CreateExpect(ctx, []flow.Expect{exp}, nil); err != nil || res[0].Op != kernel.Created {
				t.Fatalf("expectation: %+v %v", res, err)
			}
			waitFor(t, "the NEW event", func() (bool, string) {
				return d.expectStats().Events.New == 1, ""
			})
			if !c.cached {
				if d.iexp.Len() != 0 || d.expectStats().Events.Filtered != 1 {
					t.Errorf("an ftp expectation cached with expectation_helpers = %v: %+v", c.helpers, d.expectStats())
				}
				if _, err := d.reconcile(ctx, "test"); err != nil || d.iexp.Len() != 0 {
					t.Errorf("reconcile cached it: %d, %v", d.iexp.Len(), err)
				}
				return
			}
			var out bytes.Buffer
			if err := d.dumpExpects(&out, false, false); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), "dport=40000") || !strings.Contains(out.String(), "helper=ftp") {
				t.Errorf("dump internal --expect:\n%s", out.String())
			}
			if st := d.Status(); st.Caches.InternalExpectations == nil || *st.Caches.InternalExpectations != 1 {
				t.Errorf("status: %+v", st.Caches.InternalExpectations)
			}

			// Lost by the cache: the reconcile brings it back. (The start
			// reconcile may have run after the expectation was made and
			// counted it too: count this reconcile's additions only.)
			d.iexp.Flush()
			before := d.iexp.Stats().ReconAdded
			if _, err := d.reconcile(ctx, "test"); err != nil {
				t.Fatal(err)
			}
			if d.iexp.Len() != 1 || d.iexp.Stats().ReconAdded != before+1 {
				t.Errorf("after reconcile: %+v (reconcile additions before: %d)", d.iexp.Stats(), before)
			}

			if res, err := w.DeleteExpect(ctx, []flow.ExpectKey{exp.ExpectKey}); err != nil || res[0].Op != kernel.Deleted {
				t.Fatalf("delete: %+v %v", res, err)
			}
			waitFor(t, "the DESTROY event to empty the cache", func() (bool, string) {
				return d.iexp.Len() == 0, ""
			})
		})
	}
}
