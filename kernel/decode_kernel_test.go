//go:build kernel

package kernel

import (
	"context"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/internal/timoconv"
)

// TestKernelDecodeMatchesTimo decodes every record of a real table, with
// the rare attributes present, both with decodeFlow and with ti-mo's
// decoder (timoconv.FromConntrack), and requires the same flow.
func TestKernelDecodeMatchesTimo(t *testing.T) {
	ns := netnstest.New(t)
	ns.Nft(t, labelRuleset)
	w := newTestWriter(t, ns, WriterOptions{})
	extras := extraFlows()
	extras[2].TCP.WScaleOrig = 7
	flows := append(testFlows(5000), extras...)
	if res, err := w.Commit(context.Background(), flows, nil); err != nil {
		t.Fatal(err)
	} else {
		for _, r := range res {
			if r.Err != nil {
				t.Fatalf("%v: %v", r.Key, r.Err)
			}
		}
	}
	n, withExtra := 0, 0
	err := dumpRaw(context.Background(), DumpOptions{NetNS: ns.FD(t)}, func(m netlink.Message) error {
		var ours flow.Flow
		if !decodeFlow(m, &ours) {
			t.Errorf("decodeFlow refused a record")
			return nil
		}
		var ce conntrack.Event
		if err := ce.Unmarshal(m); err != nil || ce.Flow == nil {
			t.Fatalf("ti-mo: %v", err)
		}
		theirs, ok := timoconv.FromConntrack(ce.Flow)
		if !ok {
			t.Fatal("FromConntrack refused a record")
		}
		if !ours.Equal(&theirs) {
			t.Errorf("decodeFlow and ti-mo differ:\n ours   %s %+v\n ti-mo  %s %+v", ours.String(), ours.Extra, theirs.String(), theirs.Extra)
		}
		n++
		if ours.Extra != nil {
			withExtra++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(flows) || withExtra < 2 {
		t.Errorf("compared %d records (%d with extras), want %d", n, withExtra, len(flows))
	}
}
