package sync

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// tcpFlow returns an established IPv4 TCP flow numbered n.
func tcpFlow(n int) flow.Flow {
	f := flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP}}
	f.Orig.Src = flow.AddrFrom(netip.AddrFrom4([4]byte{10, 1, byte(n >> 16), byte(n >> 8)}))
	f.Orig.Dst = flow.AddrFrom(netip.MustParseAddr("192.0.2.80"))
	f.Orig.SrcPort = uint16(1024 + n%60000)
	f.Orig.DstPort = 443
	f.Reply = f.Orig.Invert(f.Proto)
	f.Status = flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured | flow.StatusSrcNATDone | flow.StatusDstNATDone
	f.Timeout = 431999
	f.TCP = flow.TCPInfo{State: flow.TCPEstablished, WScaleOrig: 7, WScaleRep: 7,
		FlagsOrig: flow.TCPFlagWindowScale | flow.TCPFlagSACKPerm, FlagsRep: flow.TCPFlagWindowScale | flow.TCPFlagSACKPerm}
	return f
}

// upsertFlows puts tcpFlow(0..n-1) into in, as kernel events would.
func upsertFlows(in *cache.Internal, n int) {
	for i := range n {
		f := tcpFlow(i)
		in.Upsert(&f)
	}
}

// randChange returns a change exercising every part of the encoding.
func randChange(r *rand.Rand) cache.Change {
	var f flow.Flow
	f.Proto = uint8(r.IntN(256))
	f.Family = flow.FamilyIPv4
	n := 4
	if r.IntN(2) == 0 {
		f.Family, n = flow.FamilyIPv6, 16
	}
	for i := range n {
		f.Orig.Src[i] = byte(r.Uint32())
		f.Orig.Dst[i] = byte(r.Uint32())
	}
	f.Orig.SrcPort, f.Orig.DstPort = uint16(r.Uint32()), uint16(r.Uint32())
	if r.IntN(3) == 0 {
		f.Zone = uint16(r.Uint32())
	}
	if r.IntN(5) == 0 {
		return cache.Change{Flow: flow.Flow{Key: f.Key}, Deleted: true}
	}
	f.Reply = f.Orig.Invert(f.Proto)
	if r.IntN(3) == 0 {
		f.Reply.Src[0]++
		f.Reply.DstPort++
	}
	f.Status = r.Uint32() >> r.IntN(32)
	f.Timeout = r.Uint32() >> r.IntN(32)
	if r.IntN(2) == 0 {
		f.Mark = r.Uint32()
	}
	if r.IntN(2) == 0 {
		f.TCP = flow.TCPInfo{State: 3, WScaleOrig: 7, WScaleRep: 9, FlagsOrig: 3, FlagsRep: 0x23}
	}
	if r.IntN(3) == 0 {
		x := &flow.Extra{Helper: "ftp", SeqAdjOrig: flow.SeqAdj{CorrectionPos: 1, OffsetBefore: -2, OffsetAfter: 3}}
		if r.IntN(2) == 0 {
			x.Labels[3] = 1
			x.SynProxy = flow.SynProxy{ISN: 1, ITS: 2, TSOff: 3}
			x.SCTP = flow.SCTPInfo{State: 2, VTagOriginal: 5, VTagReply: 6}
			x.DCCP = flow.DCCPInfo{State: 1, Role: 1, HandshakeSeq: 1 << 40}
			x.SeqAdjReply = flow.SeqAdj{CorrectionPos: 9}
		}
		f.Extra = x
	}
	ch := cache.Change{Flow: f}
	if r.IntN(2) == 0 {
		ch.Idle = time.Duration(r.IntN(1e7)) * time.Millisecond
	}
	return ch
}

func sameChange(a, b *cache.Change) bool {
	return a.Deleted == b.Deleted && a.Idle == b.Idle && a.Flow.Equal(&b.Flow)
}

func TestChangeRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 5000 {
		ch := randChange(r)
		b := appendChange(nil, &ch)
		var got cache.Change
		n, err := decodeChange(b, &got)
		if err != nil {
			t.Fatalf("#%d: decode: %v", i, err)
		}
		if n != len(b) {
			t.Fatalf("#%d: used %d of %d bytes", i, n, len(b))
		}
		if !sameChange(&ch, &got) {
			t.Fatalf("#%d: round trip\n got %+v\nwant %+v", i, got, ch)
		}
		for cut := range len(b) {
			if _, err := decodeChange(b[:cut], &got); err == nil {
				t.Fatalf("#%d: truncated to %d of %d bytes: no error", i, cut, len(b))
			}
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := header{Type: MsgNack, Flags: flagSealed, Node: 1 << 60, Epoch: 42, Counter: 7, To: 1 << 61, ToEpoch: 43}
	b := appendHeader(nil, &h)
	if len(b) != HeaderLen {
		t.Fatalf("header of %d bytes", len(b))
	}
	got, err := parseHeader(b)
	if err != nil || got != h {
		t.Fatalf("ParseHeader = %+v, %v; want %+v", got, err, h)
	}
	for _, mod := range []func([]byte){
		func(b []byte) { b[0] = 0 },
		func(b []byte) { b[3] = 0 },
		func(b []byte) { b[4] = 2 },
		func(b []byte) { b[6] = 1 },
		func(b []byte) { b[2] = 1 },                              // version 1
		func(b []byte) { clear(b[32:40]) },                       // a NACK to nobody
		func(b []byte) { clear(b[32:40]); b[3] = byte(MsgData) }, // to nobody, in an epoch
	} {
		c := bytes.Clone(b)
		mod(c)
		if _, err := parseHeader(c); err == nil {
			t.Errorf("ParseHeader(%x): no error", c)
		}
	}
	for typ := MsgData; typ < msgTypeEnd; typ++ {
		h := header{Type: typ}
		if addressed(typ) {
			h.To, h.ToEpoch = 1, 2
		}
		if _, err := parseHeader(appendHeader(nil, &h)); err != nil {
			t.Errorf("type %s refused: %v", typ, err)
		}
	}
	c := bytes.Clone(b)
	c[2] = 9
	if _, err := parseHeader(c); err == nil {
		t.Error("other version accepted")
	}
}

func sampleMessages() []*message {
	r := rand.New(rand.NewPCG(3, 4))
	var chs []cache.Change
	for range 5 {
		chs = append(chs, randChange(r))
	}
	nonce := bytes.Repeat([]byte{7}, NonceLen)
	return []*message{
		{Type: MsgData, Seq: 1, Changes: chs},
		{Type: MsgData, Seq: 1 << 40, Changes: []cache.Change{}},
		{Type: MsgAck, Seq: 99},
		{Type: MsgNack, Ranges: []seqRange{{1, 1}, {5, 9}}},
		{Type: MsgHeartbeat, Seq: 0},
		{Type: MsgBulkBegin, Seq: 3, Bulk: 1<<64 - 1},
		{Type: MsgBulkEnd, Seq: 4, Bulk: 12},
		{Type: MsgResyncRequest},
		{Type: MsgHello, Name: "fw-a"},
		{Type: MsgChallenge, Name: "fw-a", Nonce: nonce},
		{Type: MsgResponse, Name: "fw-b", Nonce: nonce, Seq: 17},
		{Type: MsgDigest, Seq: 17, Digest: &DigestPart{Round: 2, Buckets: 64, Offset: 3, Flows: 9, Sums: []uint64{1, 2, 1 << 63}, Skip: []uint32{4}}},
		{Type: MsgDigestRequest, Digest: &DigestPart{Round: 2, Buckets: 64, List: []uint32{1, 63}}},
		{Type: MsgRepair, Changes: chs[:2], Digest: &DigestPart{Round: 2, Buckets: 64}},
		{Type: MsgRepairEnd, Digest: &DigestPart{Round: 2, Buckets: 64, List: []uint32{1}, Counts: []uint32{2}}},
		{Type: MsgNodeInfo, Info: &NodeInfo{Version: "ctsyncd test", Caps: []string{"expect", "node-info"},
			Ruleset: bytes.Repeat([]byte{9}, rulesetSumLen),
			Parts:   map[string][partHashLen]byte{"table inet filter": {1}, "chain inet filter forward": {2, 3}}}},
		{Type: MsgNodeInfo, Info: &NodeInfo{Version: "v", Truncated: true}},
	}
}

func sameMessage(a, b *message) bool {
	if len(a.Changes) != len(b.Changes) {
		return false
	}
	for i := range a.Changes {
		if !sameChange(&a.Changes[i], &b.Changes[i]) {
			return false
		}
	}
	x, y := *a, *b
	x.Changes, y.Changes = nil, nil
	if len(x.Ranges) == 0 {
		x.Ranges = nil
	}
	if len(y.Ranges) == 0 {
		y.Ranges = nil
	}
	return reflect.DeepEqual(x, y)
}

func TestBodyRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b := appendBody(nil, m)
		got, err := decodeBody(m.Type, b)
		if err != nil {
			t.Fatalf("%s: %v", m.Type, err)
		}
		if !sameMessage(m, got) {
			t.Fatalf("%s: round trip\n got %+v\nwant %+v", m.Type, got, m)
		}
		for cut := range len(b) {
			if _, err := decodeBody(m.Type, b[:cut]); err == nil {
				t.Fatalf("%s: truncated to %d of %d bytes: no error", m.Type, cut, len(b))
			}
		}
		if _, err := decodeBody(m.Type, append(bytes.Clone(b), 0)); err == nil {
			t.Fatalf("%s: trailing byte accepted", m.Type)
		}
	}
}

func TestDecodeLimits(t *testing.T) {
	// A DATA body claiming more flows than fit is refused before allocating.
	b := []byte{1, 0xff, 0xff, 0x03}
	if _, err := decodeBody(MsgData, b); err == nil {
		t.Fatal("huge flow count accepted")
	}
	// A NACK with too many ranges.
	var rs []seqRange
	for i := range MaxNackRanges + 1 {
		rs = append(rs, seqRange{uint64(2*i + 1), uint64(2*i + 1)})
	}
	if _, err := decodeBody(MsgNack, appendBody(nil, &message{Type: MsgNack, Ranges: rs})); err == nil {
		t.Fatal("too many NACK ranges accepted")
	}
	// A name claiming 4 GB.
	if _, err := decodeBody(MsgHello, []byte{0x91, 0xdb, 0xff, 0xff, 0xff, 0xff, 'a'}); err == nil {
		t.Fatal("huge name accepted")
	}
}

// TestEncodedSize reports the bytes on the wire per flow for IPv4 TCP
// established flows, not NATed, as the node batches them (header and AEAD
// tag included).
func TestEncodedSize(t *testing.T) {
	const flows = 10000
	net := NewMemNetwork(1)
	rx := net.Endpoint("rx")
	key := [KeyLen]byte{1}
	in := cache.NewInternal(nil)
	n, err := New(Options{NodeName: "a", Key: &key}, in, cache.NewExternal(), net.Endpoint("a"))
	if err != nil {
		t.Fatal(err)
	}
	var chs []cache.Change
	for i := range flows {
		chs = append(chs, cache.Change{Flow: tcpFlow(i), Idle: time.Duration(i%3000) * time.Millisecond})
	}
	n.mu.Lock()
	n.sendBatch(chs)
	n.mu.Unlock()
	total, dgrams, got := 0, 0, 0
	for len(rx.Packets()) > 0 {
		p := <-rx.Packets()
		total += len(p.Data)
		dgrams++
		if len(p.Data) > 1400 {
			t.Errorf("datagram of %d bytes over the MTU", len(p.Data))
		}
		h, err := parseHeader(p.Data)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := epochAEAD(&key, h.Node, h.Epoch)
		body, err := open(p.Data, &h, a)
		if err != nil {
			t.Fatal(err)
		}
		m, err := decodeBody(h.Type, body)
		if err != nil {
			t.Fatal(err)
		}
		got += len(m.Changes)
	}
	if got != flows {
		t.Fatalf("received %d flows, want %d", got, flows)
	}
	one := len(appendChange(nil, &chs[1234]))
	t.Logf("IPv4 TCP established, not NATed: %d bytes per flow encoded, %.1f bytes per flow on the wire (%d datagrams, %.0f flows each, header+tag included)",
		one, float64(total)/flows, dgrams, float64(flows)/float64(dgrams))
	if per := float64(total) / flows; per > 40 {
		t.Errorf("%.1f bytes per flow, want well below conntrackd's ~109", per)
	}
}

func BenchmarkAppendChange(b *testing.B) {
	ch := cache.Change{Flow: tcpFlow(7), Idle: 1500 * time.Millisecond}
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendChange(buf[:0], &ch)
	}
	b.ReportMetric(float64(len(buf)), "bytes/flow")
}

func BenchmarkDecodeChange(b *testing.B) {
	ch := cache.Change{Flow: tcpFlow(7), Idle: 1500 * time.Millisecond}
	buf := appendChange(nil, &ch)
	var got cache.Change
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeChange(buf, &got); err != nil {
			b.Fatal(err)
		}
	}
}
