package sync

// Expectations on the stream: the EXPECT message (type 11), its codec, and
// the node's sending, resending, bulk and receiving of expectations.
//
// EXPECT is a stream message like DATA: sequenced, acknowledged, repaired
// by NACK (a resend carries the expectations' current state) and part of
// bulk transfers, between BULK_BEGIN and BULK_END. It is sent with
// flagStreamExt (wire.go): its body begins with its sequence number as a
// uvarint, so that a receiver that does not know the type takes the
// sequence number and ignores the rest, and the stream neither breaks nor
// stalls.

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// MaxExpectsPerMessage bounds the expectation changes one EXPECT carries.
const MaxExpectsPerMessage = 256

// Expectation encoding:
//
//	flags    1 byte, exp* below
//	proto    1 byte (of the expected tuple)
//	tuple    like a flow's original tuple
//	zone     2 bytes                        if expZone
//	-- the rest is absent for a removal (expDeleted) --
//	master proto 1 byte, master tuple, mask tuple
//	timeout, flags, class  uvarints
//	helper   1 byte length, name            if expHelper
//	fn       1 byte length, name            if expFn
//	nat      dir uvarint, tuple             if expNAT
const (
	expDeleted = 1 << iota
	expIPv6
	expZone
	expHelper
	expFn
	expNAT
)

// minExpectLen is the shortest encoded expectation change (an IPv4
// removal).
const minExpectLen = 2 + 12

// appendName appends s, cut to max bytes, after its length byte.
func appendName(b []byte, s string, max int) []byte {
	if len(s) > max {
		s = s[:max]
	}
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// appendExpectChange appends the encoding of one expectation change.
func appendExpectChange(b []byte, ch *cache.ExpectChange) []byte {
	e := &ch.Expect
	var fl byte
	v6 := e.Family == flow.FamilyIPv6
	if v6 {
		fl |= expIPv6
	}
	if e.Zone != 0 {
		fl |= expZone
	}
	if ch.Deleted {
		fl |= expDeleted
	} else {
		if e.Helper != "" {
			fl |= expHelper
		}
		if e.Fn != "" {
			fl |= expFn
		}
		if e.HasNAT {
			fl |= expNAT
		}
	}
	b = append(b, fl, e.Proto)
	b = appendTuple(b, &e.Tuple, v6)
	if fl&expZone != 0 {
		b = binary.BigEndian.AppendUint16(b, e.Zone)
	}
	if ch.Deleted {
		return b
	}
	b = append(b, e.MasterProto)
	b = appendTuple(b, &e.Master, v6)
	b = appendTuple(b, &e.Mask, v6)
	b = binary.AppendUvarint(b, uint64(e.Timeout))
	b = binary.AppendUvarint(b, uint64(e.Flags))
	b = binary.AppendUvarint(b, uint64(e.Class))
	if fl&expHelper != 0 {
		b = appendName(b, e.Helper, maxHelperLen)
	}
	if fl&expFn != 0 {
		b = appendName(b, e.Fn, maxHelperLen)
	}
	if fl&expNAT != 0 {
		b = binary.AppendUvarint(b, uint64(e.NAT.Dir))
		b = appendTuple(b, &e.NAT.Tuple, v6)
	}
	return b
}

func (r *reader) name() string {
	n := int(r.byte())
	if r.err == nil && (n == 0 || n > maxHelperLen) {
		r.err = fmt.Errorf("name of %d bytes", n)
		return ""
	}
	return string(r.take(n))
}

// decodeExpectChange decodes one expectation change from the start of b
// and returns the bytes used.
func decodeExpectChange(b []byte, ch *cache.ExpectChange) (int, error) {
	r := reader{b: b}
	*ch = cache.ExpectChange{}
	e := &ch.Expect
	fl := r.byte()
	if fl&^(expDeleted|expIPv6|expZone|expHelper|expFn|expNAT) != 0 {
		return 0, fmt.Errorf("unknown expectation flags %#x", fl)
	}
	e.Proto = r.byte()
	v6 := fl&expIPv6 != 0
	e.Family = flow.FamilyIPv4
	if v6 {
		e.Family = flow.FamilyIPv6
	}
	r.tuple(&e.Tuple, v6)
	if fl&expZone != 0 {
		e.Zone = r.u16()
	}
	if fl&expDeleted != 0 {
		if fl&(expHelper|expFn|expNAT) != 0 {
			return 0, fmt.Errorf("removal with state flags %#x", fl)
		}
		ch.Deleted = true
		return r.off, r.err
	}
	e.MasterProto = r.byte()
	r.tuple(&e.Master, v6)
	r.tuple(&e.Mask, v6)
	e.Timeout = uint32(r.uvarint(1<<32 - 1))
	e.Flags = uint32(r.uvarint(1<<32 - 1))
	e.Class = uint32(r.uvarint(1<<32 - 1))
	if fl&expHelper != 0 {
		e.Helper = r.name()
	}
	if fl&expFn != 0 {
		e.Fn = r.name()
	}
	if fl&expNAT != 0 {
		e.HasNAT = true
		e.NAT.Dir = uint32(r.uvarint(1))
		r.tuple(&e.NAT.Tuple, v6)
	}
	return r.off, r.err
}

// appendExpectBody encodes an EXPECT body: sequence number, count, changes.
func appendExpectBody(b []byte, m *message) []byte {
	b = binary.AppendUvarint(b, m.Seq)
	b = binary.AppendUvarint(b, uint64(len(m.Expects)))
	for i := range m.Expects {
		b = appendExpectChange(b, &m.Expects[i])
	}
	return b
}

func decodeExpectBody(b []byte, m *message) error {
	seq, n := binary.Uvarint(b)
	if n <= 0 {
		return errShort
	}
	b = b[n:]
	cnt, n := binary.Uvarint(b)
	if n <= 0 {
		return errShort
	}
	b = b[n:]
	if seq == 0 {
		return fmt.Errorf("sequence number 0")
	}
	if cnt > MaxExpectsPerMessage || cnt*minExpectLen > uint64(len(b)) {
		return fmt.Errorf("%d expectations in %d bytes", cnt, len(b))
	}
	m.Seq = seq
	m.Expects = make([]cache.ExpectChange, cnt)
	for i := range m.Expects {
		n, err := decodeExpectChange(b, &m.Expects[i])
		if err != nil {
			return fmt.Errorf("expectation %d: %w", i, err)
		}
		b = b[n:]
	}
	if len(b) != 0 {
		return fmt.Errorf("%d trailing bytes", len(b))
	}
	return nil
}

// decodeUnknownStream decodes the body of a stream message type this node
// does not know (from MsgExpect on): only its sequence number.
func decodeUnknownStream(b []byte, m *message) error {
	seq, n := binary.Uvarint(b)
	if n <= 0 {
		return errShort
	}
	if seq == 0 {
		return fmt.Errorf("sequence number 0")
	}
	m.Seq = seq
	return nil
}

// SetExpectations makes the node replicate the expectations of c (it
// becomes the single reader of c's change feed) and apply those peers
// replicate to the external cache. send and accept, when not nil, tell
// which helpers' expectations are sent and which are accepted from peers
// (nil: all). Call it before Run.
func (n *Node) SetExpectations(c *cache.InternalExpect, send, accept func(helper string) bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.iexp, n.sendExpect, n.acceptExpect = c, send, accept
}

func (n *Node) expectChanged() <-chan struct{} {
	if n.iexp == nil {
		return nil
	}
	return n.iexp.Changed()
}

func (n *Node) sends(helper string) bool {
	return n.sendExpect == nil || n.sendExpect(helper)
}

func (n *Node) accepts(helper string) bool {
	return n.acceptExpect == nil || n.acceptExpect(helper)
}

// expectBudget is how many expectation changes fit one EXPECT datagram.
func (n *Node) expectBudget() int {
	return n.opt.MTU - HeaderLen - TagLen - 2*binary.MaxVarintLen64
}

// sendExpectChanges sends the pending expectation changes.
func (n *Node) sendExpectChanges() {
	if n.iexp == nil {
		return
	}
	for range 16 {
		chs := n.iexp.TakeChanges(MaxExpectsPerMessage)
		if len(chs) == 0 {
			return
		}
		n.sendExpects(n.filterExpects(chs))
	}
}

// filterExpects drops the changes of helpers not replicated; removals
// always go (the peer may hold one from before a config change).
func (n *Node) filterExpects(chs []cache.ExpectChange) []cache.ExpectChange {
	out := chs[:0]
	for _, ch := range chs {
		if ch.Deleted || n.sends(ch.Expect.Helper) {
			out = append(out, ch)
		}
	}
	return out
}

// sendExpects packs expectation changes into EXPECT messages up to the MTU.
func (n *Node) sendExpects(chs []cache.ExpectChange) {
	budget := n.expectBudget()
	start, size := 0, 0
	for i := range chs {
		l := len(appendExpectChange(n.scratch[:0], &chs[i]))
		if i > start && (size+l > budget || i-start == MaxExpectsPerMessage) {
			n.sendExpectMsg(chs[start:i])
			start, size = i, 0
		}
		size += l
	}
	if start < len(chs) {
		n.sendExpectMsg(chs[start:])
	}
}

func (n *Node) sendExpectMsg(chs []cache.ExpectChange) {
	keys := make([]flow.ExpectKey, len(chs))
	for i := range chs {
		keys[i] = chs[i].Expect.ExpectKey
	}
	seq := n.nextSeq
	n.nextSeq++
	n.queue.push(queued{seq: seq, typ: MsgExpect, ekeys: keys, sent: n.now()})
	n.sendAll(&message{Type: MsgExpect, Seq: seq, Expects: chs})
}

// resendExpect sends a queued EXPECT again with the current state of its
// expectations.
func (n *Node) resendExpect(pr *peer, e *queued) int {
	chs := make([]cache.ExpectChange, 0, len(e.ekeys))
	for _, k := range e.ekeys {
		if n.iexp != nil {
			chs = append(chs, n.iexp.Current(k))
		} else {
			chs = append(chs, cache.ExpectChange{Expect: flow.Expect{ExpectKey: k}, Deleted: true})
		}
	}
	return n.sendTo(pr, &message{Type: MsgExpect, Seq: e.seq, Expects: n.filterExpects(chs)})
}

// bulkExpects sends every cached expectation as part of a bulk, before its
// BULK_END.
func (n *Node) bulkExpects() int {
	if n.iexp == nil {
		return 0
	}
	var chs []cache.ExpectChange
	for _, k := range n.iexp.Keys() {
		if ch := n.iexp.Current(k); !ch.Deleted && n.sends(ch.Expect.Helper) {
			chs = append(chs, ch)
		}
	}
	if len(chs) > 0 {
		n.sendExpects(chs)
	}
	return len(chs)
}

// applyExpects applies a received EXPECT to the external cache, but for
// the expectations of helpers this node does not accept.
func (n *Node) applyExpects(pr *peer, m *message, now time.Time) {
	for i := range m.Expects {
		ch := &m.Expects[i]
		if !ch.Deleted && !n.accepts(ch.Expect.Helper) {
			pr.stats.ExpectsRefused++
			continue
		}
		n.external.ApplyExpect(pr.name, *ch, now)
		pr.stats.ExpectsIn++
	}
}
