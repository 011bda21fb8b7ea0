package kernel

import (
	"context"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// TestKernelDecodeMatchesTimo decodes every record of a real table, with
// the rare attributes present, both with decodeFlow and with ti-mo's
// decoder (FromConntrack), and requires the same flow.
func TestKernelDecodeMatchesTimo(t *testing.T) {
	ns := netnstest.New(t)
	ns.Nft(t, `table inet ctsyncd_labels {
	chain output {
		type filter hook output priority 0;
		ct label 127 counter
	}
}
`)
	w := newTestWriter(t, ns, WriterOptions{})
	a := mustAddr
	st := flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured
	mk := func(proto uint8, o flow.Tuple, x *flow.Extra) flow.Flow {
		f := flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: proto, Orig: o, Zone: 3},
			Status: st, Timeout: 300, Mark: 0x42, Extra: x}
		f.Reply = f.Orig.Invert(proto)
		return f
	}
	extras := []flow.Flow{
		mk(flow.ProtoSCTP, flow.Tuple{Src: a("10.2.0.1"), Dst: a("10.2.0.2"), SrcPort: 5000, DstPort: 38412},
			&flow.Extra{SCTP: flow.SCTPInfo{State: 3, VTagOriginal: 0x1234, VTagReply: 0x5678}}),
		mk(flow.ProtoGRE, flow.Tuple{Src: a("10.2.0.1"), Dst: a("10.2.0.3")}, nil),
		mk(flow.ProtoTCP, flow.Tuple{Src: a("10.2.0.1"), Dst: a("10.2.0.4"), SrcPort: 40000, DstPort: 21},
			&flow.Extra{Helper: "ftp", Labels: [16]byte{0: 0x01, 15: 0x80},
				SeqAdjOrig: flow.SeqAdj{CorrectionPos: 1000, OffsetBefore: 3, OffsetAfter: 7}}),
	}
	extras[2].TCP = flow.TCPInfo{State: flow.TCPEstablished, WScaleOrig: 7}
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
		theirs, ok := FromConntrack(ce.Flow)
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
