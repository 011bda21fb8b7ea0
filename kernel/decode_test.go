package kernel

import (
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/timoconv"
)

// The writer's create messages decode back to the flow they carry, and the
// same as ti-mo decodes them.
func TestDecodeFlowRoundTrip(t *testing.T) {
	for i := range 200 {
		want := testFlow(i)
		if want.NATed() {
			continue // sent as the inverse plus CTA_NAT_*: the kernel rebuilds the reply
		}
		msg := appendCreate(nil, &want, 1, 1, 0)
		m := netlink.Message{Data: msg[nlmsgHdrLen:]}
		var got flow.Flow
		if !decodeFlow(m, &got) {
			t.Fatalf("flow %d: refused", i)
		}
		var ce conntrack.Event
		m.Header.Type = netlink.HeaderType(subsysCTNetlink<<8 | msgCTNew)
		m.Header.Flags = netlink.Create
		if err := ce.Unmarshal(m); err != nil {
			t.Fatalf("flow %d: ti-mo: %v", i, err)
		}
		timo, _ := timoconv.FromConntrack(ce.Flow)
		if !got.Equal(&timo) {
			t.Errorf("flow %d: ours %s, ti-mo %s", i, got.String(), timo.String())
		}
		if got.Key != want.Key || got.Reply != want.Reply || got.Mark != want.Mark || got.TCP.State != want.TCP.State {
			t.Errorf("flow %d: got %s, want %s", i, got.String(), want.String())
		}
	}
}

func TestDecodeFlowRefusesNoTuple(t *testing.T) {
	if decodeFlow(netlink.Message{Data: []byte{2, 0, 0, 0}}, new(flow.Flow)) {
		t.Error("a message without tuples decoded")
	}
}

func FuzzDecodeFlow(f *testing.F) {
	for i := range 20 {
		fl := testFlow(i)
		f.Add(appendCreate(nil, &fl, 1, 1, 0)[nlmsgHdrLen:])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fl flow.Flow
		if decodeFlow(netlink.Message{Data: data}, &fl) && fl.Family != flow.FamilyIPv4 && fl.Family != flow.FamilyIPv6 {
			t.Fatalf("family %d", fl.Family)
		}
	})
}

func BenchmarkDecodeFlow(b *testing.B) {
	fl := testFlow(3)
	msg := appendCreate(nil, &fl, 1, 1, 0)
	m := netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(subsysCTNetlink<<8 | msgCTNew), Flags: netlink.Create}, Data: msg[nlmsgHdrLen:]}
	b.Run("ctsyncd", func(b *testing.B) {
		b.ReportAllocs()
		var f flow.Flow
		for b.Loop() {
			decodeFlow(m, &f)
		}
	})
	b.Run("ti-mo", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var ce conntrack.Event
			ce.Unmarshal(m)
			timoconv.FromConntrack(ce.Flow)
		}
	})
}
