package kernel

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/flowgen"
	"github.com/ctsyncd/ctsyncd/internal/timoconv"
)

// testFlows returns n distinct flows of internal/flowgen's fixed mix (per
// 20 flows: TCP, UDP, ICMP, IPv6, SNAT and DNAT; marks and zones).
func testFlows(n int) []flow.Flow { return flowgen.Flows(0, n) }

// testFlow returns flow number i of the same mix.
func testFlow(i int) flow.Flow { return flowgen.Flow(i) }

// decodeOne decodes one message of an encoded buffer as ti-mo does.
func decodeOne(t *testing.T, b []byte) (netlink.Message, *conntrack.Event) {
	t.Helper()
	var msgs []netlink.Message
	if err := parseMessages(b, func(m netlink.Message) error {
		m.Data = append([]byte(nil), m.Data...)
		msgs = append(msgs, m)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	if int(msgs[0].Header.Length) != len(b) {
		t.Fatalf("nlmsg_len %d, buffer %d", msgs[0].Header.Length, len(b))
	}
	var ev conntrack.Event
	if err := ev.Unmarshal(msgs[0]); err != nil {
		t.Fatalf("ti-mo cannot decode the message: %v", err)
	}
	return msgs[0], &ev
}

func TestEncodeCreateDecodesWithTiMo(t *testing.T) {
	for i := range 40 {
		f := testFlow(i)
		f.Extra = &flow.Extra{
			Labels:     [16]byte{0: 1, 15: 0x80},
			SeqAdjOrig: flow.SeqAdj{CorrectionPos: 1000, OffsetBefore: -3, OffsetAfter: 5},
		}
		t.Run(fmt.Sprintf("%d-%s", i, flow.TCPStateName(f.TCP.State)), func(t *testing.T) {
			b := appendCreate(nil, &f, 1234, 77, netlink.Request|netlink.Create|netlink.Excl|netlink.Acknowledge)
			m, ev := decodeOne(t, b)
			if ev.Type != conntrack.EventNew {
				t.Errorf("event type %v, want NEW", ev.Type)
			}
			if m.Header.Sequence != 77 {
				t.Errorf("seq %d", m.Header.Sequence)
			}
			if m.Data[0] != f.Family {
				t.Errorf("nfgen_family %d, want %d", m.Data[0], f.Family)
			}
			c := ev.Flow
			got, ok := timoconv.FromConntrack(c)
			if !ok {
				t.Fatal("no tuple")
			}
			if got.Key != f.Key {
				t.Errorf("key\n got %+v\nwant %+v", got.Key, f.Key)
			}
			if want := f.Orig.Invert(f.Proto); got.Reply != want {
				t.Errorf("reply tuple must be the inverse of the original\n got %+v\nwant %+v", got.Reply, want)
			}
			if c.Timeout != 1234 {
				t.Errorf("timeout %d", c.Timeout)
			}
			if want := f.Status&writableStatus | flow.StatusConfirmed; uint32(c.Status) != want {
				t.Errorf("status %#x, want %#x", uint32(c.Status), want)
			}
			if c.Mark != f.Mark {
				t.Errorf("mark %d, want %d", c.Mark, f.Mark)
			}
			if f.Proto == flow.ProtoTCP {
				want := f.TCP
				want.FlagsOrig |= flow.TCPFlagBeLiberal
				want.FlagsRep |= flow.TCPFlagBeLiberal
				if got.TCP != want {
					t.Errorf("tcp %+v, want %+v", got.TCP, want)
				}
				// mask byte == flags byte
				var mb [2]byte
				binary.NativeEndian.PutUint16(mb[:], c.ProtoInfo.TCP.OriginalFlags)
				if mb[0] != mb[1] {
					t.Errorf("tcp flags %#x mask %#x", mb[0], mb[1])
				}
			}
			if got.Extra == nil || got.Extra.Labels != f.Extra.Labels || got.Extra.SeqAdjOrig != f.Extra.SeqAdjOrig {
				t.Errorf("extra %+v, want %+v", got.Extra, f.Extra)
			}
			if len(c.LabelsMask) != 16 || c.LabelsMask[0] != 0xff {
				t.Errorf("labels mask %x", c.LabelsMask)
			}
		})
	}
}

// natAttrs finds CTA_NAT_SRC / CTA_NAT_DST in an encoded create message
// (ti-mo does not decode them) and returns address and port of each.
func natAttrs(t *testing.T, b []byte) map[uint16][2]string {
	t.Helper()
	out := map[uint16][2]string{}
	ad, err := netlink.NewAttributeDecoder(b[nlmsgHdrLen+4:])
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		typ := ad.Type()
		if typ != ctaNATSrc && typ != ctaNATDst {
			continue
		}
		var addr, port string
		ad.Nested(func(nd *netlink.AttributeDecoder) error {
			var lo, hi []byte
			var plo, phi uint16
			for nd.Next() {
				switch nd.Type() {
				case ctaNATV4MinIP, ctaNATV6MinIP:
					lo = nd.Bytes()
				case ctaNATV4MaxIP, ctaNATV6MaxIP:
					hi = nd.Bytes()
				case ctaNATProto:
					nd.Nested(func(pd *netlink.AttributeDecoder) error {
						for pd.Next() {
							switch pd.Type() {
							case ctaProtoNATPortMin:
								plo = binary.BigEndian.Uint16(pd.Bytes())
							case ctaProtoNATPortMax:
								phi = binary.BigEndian.Uint16(pd.Bytes())
							}
						}
						return nil
					})
					port = fmt.Sprint(plo)
					if plo != phi {
						port += fmt.Sprintf("-%d", phi)
					}
				}
			}
			a, _ := netip.AddrFromSlice(lo)
			addr = a.String()
			if string(lo) != string(hi) {
				addr += "-?"
			}
			return nil
		})
		out[typ] = [2]string{addr, port}
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEncodeNAT(t *testing.T) {
	a := func(s string) [16]byte { return flow.AddrFrom(netip.MustParseAddr(s)) }
	tcp4 := func(o, r flow.Tuple) flow.Flow {
		return flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Orig: o}, Reply: r}
	}
	tests := []struct {
		name string
		f    flow.Flow
		want map[uint16][2]string
	}{
		{"plain", tcp4(
			flow.Tuple{Src: a("10.0.0.1"), Dst: a("192.0.2.1"), SrcPort: 1000, DstPort: 80},
			flow.Tuple{Src: a("192.0.2.1"), Dst: a("10.0.0.1"), SrcPort: 80, DstPort: 1000}),
			map[uint16][2]string{}},
		{"snat", tcp4(
			flow.Tuple{Src: a("10.0.0.1"), Dst: a("192.0.2.1"), SrcPort: 1000, DstPort: 80},
			flow.Tuple{Src: a("192.0.2.1"), Dst: a("203.0.113.9"), SrcPort: 80, DstPort: 40000}),
			map[uint16][2]string{ctaNATSrc: {"203.0.113.9", "40000"}}},
		{"snat port only", tcp4(
			flow.Tuple{Src: a("10.0.0.1"), Dst: a("192.0.2.1"), SrcPort: 1000, DstPort: 80},
			flow.Tuple{Src: a("192.0.2.1"), Dst: a("10.0.0.1"), SrcPort: 80, DstPort: 40000}),
			map[uint16][2]string{ctaNATSrc: {"10.0.0.1", "40000"}}},
		{"dnat", tcp4(
			flow.Tuple{Src: a("10.0.0.1"), Dst: a("198.51.100.1"), SrcPort: 1000, DstPort: 80},
			flow.Tuple{Src: a("172.16.0.5"), Dst: a("10.0.0.1"), SrcPort: 8080, DstPort: 1000}),
			map[uint16][2]string{ctaNATDst: {"172.16.0.5", "8080"}}},
		{"both", tcp4(
			flow.Tuple{Src: a("10.0.0.1"), Dst: a("198.51.100.1"), SrcPort: 1000, DstPort: 80},
			flow.Tuple{Src: a("172.16.0.5"), Dst: a("172.16.0.1"), SrcPort: 8080, DstPort: 1000}),
			map[uint16][2]string{ctaNATDst: {"172.16.0.5", "8080"}, ctaNATSrc: {"172.16.0.1", "1000"}}},
		{"v6 snat", flow.Flow{Key: flow.Key{Family: flow.FamilyIPv6, Proto: flow.ProtoUDP,
			Orig: flow.Tuple{Src: a("2001:db8::1"), Dst: a("2001:db8:1::1"), SrcPort: 5000, DstPort: 53}},
			Reply: flow.Tuple{Src: a("2001:db8:1::1"), Dst: a("2001:db8:ff::1"), SrcPort: 53, DstPort: 6000}},
			map[uint16][2]string{ctaNATSrc: {"2001:db8:ff::1", "6000"}}},
		{"icmp snat", flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoICMP,
			Orig: flow.Tuple{Src: a("10.0.0.1"), Dst: a("192.0.2.1"), SrcPort: 77, DstPort: 8 << 8}},
			Reply: flow.Tuple{Src: a("192.0.2.1"), Dst: a("203.0.113.9"), SrcPort: 77, DstPort: 0}},
			map[uint16][2]string{ctaNATSrc: {"203.0.113.9", "77"}}},
		{"null snat from status", flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoUDP,
			Orig: flow.Tuple{Src: a("10.0.0.1"), Dst: a("192.0.2.1"), SrcPort: 7, DstPort: 9}},
			Reply:  flow.Tuple{Src: a("192.0.2.1"), Dst: a("10.0.0.1"), SrcPort: 9, DstPort: 7},
			Status: flow.StatusSrcNAT},
			map[uint16][2]string{ctaNATSrc: {"10.0.0.1", "7"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := appendCreate(nil, &tt.f, 60, 1, netlink.Request|netlink.Create)
			_, ev := decodeOne(t, b)
			got, _ := timoconv.FromConntrack(ev.Flow)
			if want := tt.f.Orig.Invert(tt.f.Proto); got.Reply != want {
				t.Errorf("reply tuple is not the inverse")
			}
			if g := natAttrs(t, b); fmt.Sprint(g) != fmt.Sprint(tt.want) {
				t.Errorf("NAT attributes %v, want %v", g, tt.want)
			}
			var wantStatus uint32
			if _, ok := tt.want[ctaNATSrc]; ok {
				wantStatus |= flow.StatusSrcNAT
			}
			if _, ok := tt.want[ctaNATDst]; ok {
				wantStatus |= flow.StatusDstNAT
			}
			if s := natStatus(&tt.f); s != wantStatus {
				t.Errorf("natStatus %#x, want %#x", s, wantStatus)
			}
		})
	}
}

func TestEncodeUpdateGetDelete(t *testing.T) {
	f := testFlow(16) // SNATed TCP
	b := appendUpdate(nil, &f, commitStatus(&f), 99, 5, netlink.Request)
	_, ev := decodeOne(t, b)
	if ev.Type != conntrack.EventUpdate {
		t.Errorf("update decodes as %v", ev.Type)
	}
	if ev.Flow.TupleReply.IP.SourceAddress.IsValid() {
		t.Error("update carries a reply tuple")
	}
	if len(natAttrs(t, b)) != 0 {
		t.Error("update carries NAT attributes (the kernel refuses them)")
	}
	if ev.Flow.Timeout != 99 || ev.Flow.ProtoInfo.TCP == nil {
		t.Errorf("update flow %+v", ev.Flow)
	}
	if b := appendUpdate(nil, &f, commitStatus(&f), 0, 5, netlink.Request); len(b) > 0 {
		_, ev := decodeOne(t, b)
		if ev.Flow.Timeout != 0 {
			t.Error("timeout 0 must leave the timeout alone (no CTA_TIMEOUT)")
		}
	}
	for _, msg := range []uint8{msgCTGet, msgCTDelete} {
		b := appendKeyMsg(nil, msg, &f.Key, 9, netlink.Request|netlink.Acknowledge)
		var m netlink.Message
		parseMessages(b, func(x netlink.Message) error { m = x; return nil })
		if got := uint16(m.Header.Type); got != ctType(msg) {
			t.Errorf("type %#x", got)
		}
		if msg == msgCTDelete {
			_, ev := decodeOne(t, b)
			got, _ := timoconv.FromConntrack(ev.Flow)
			if got.Key != f.Key {
				t.Errorf("delete key %+v, want %+v", got.Key, f.Key)
			}
		}
	}
}

func TestCommitStatus(t *testing.T) {
	all := ^uint32(0)
	got := commitStatus(&flow.Flow{Status: all})
	if got&flow.StatusConfirmed == 0 || got&flow.StatusExpected != 0 {
		t.Fatalf("status %#x must have CONFIRMED and not EXPECTED", got)
	}
	for _, bit := range []uint32{flow.StatusDying, flow.StatusTemplate, flow.StatusUntracked, flow.StatusOffload,
		flow.StatusSrcNAT, flow.StatusDstNAT, flow.StatusSrcNATDone, flow.StatusDstNATDone, flow.StatusSeqAdjust} {
		if got&bit != 0 {
			t.Errorf("status %#x keeps kernel-internal bit %#x", got, bit)
		}
	}
	if commitStatus(&flow.Flow{})&flow.StatusConfirmed == 0 {
		t.Error("zero status must still send CONFIRMED")
	}
}

func TestCommitTimeout(t *testing.T) {
	w := &Writer{opts: WriterOptions{MinTimeout: 30}}
	for _, tc := range []struct {
		t    uint32
		age  time.Duration
		want uint32
	}{
		{300, 0, 300},
		{300, 100 * time.Second, 200},
		{300, 1500 * time.Millisecond, 299},
		{300, 290 * time.Second, 30},
		{10, 0, 30},
		{300, time.Hour, 30},
	} {
		if got := w.commitTimeout(tc.t, tc.age); got != tc.want {
			t.Errorf("commitTimeout(%d, %v) = %d, want %d", tc.t, tc.age, got, tc.want)
		}
	}
}

func TestTestFlowsDistinct(t *testing.T) {
	seen := map[flow.Key]bool{}
	type zr struct {
		z uint16
		r flow.Tuple
	}
	replies := map[zr]bool{}
	for _, f := range testFlows(100000) {
		if seen[f.Key] {
			t.Fatalf("duplicate key %+v", f.Key)
		}
		seen[f.Key] = true
		r := zr{f.Zone, f.Reply}
		if replies[r] {
			t.Fatalf("duplicate reply %+v", r)
		}
		replies[r] = true
	}
}

func BenchmarkEncodeCreate(b *testing.B) {
	fs := testFlows(1000)
	buf := make([]byte, 0, 1<<16)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		buf = appendCreate(buf[:0], &fs[i%len(fs)], 300, uint32(i), netlink.Request|netlink.Create)
	}
}
