package sync

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// Wire format, version 2.
//
// A datagram is a fixed 48-byte header followed by the body. The header is
// sent in the clear and authenticated as associated data; the body is
// sealed with AES-256-GCM (16-byte tag appended) unless the node runs
// insecure.
//
//	0      2   3    4     5          8        16      24        32        40         48
//	+------+---+----+-----+----------+--------+-------+---------+---------+----------+
//	|magic |ver|type|flags| reserved | node id| epoch | counter | to node | to epoch |
//	+------+---+----+-----+----------+--------+-------+---------+---------+----------+
//
// node id is the first 8 bytes of SHA-256(node name); epoch is random per
// start of the sender; counter counts the sender's datagrams in that epoch
// from 1 (the AEAD nonce and the replay window use it). to node and to
// epoch name the one receiver of a message sent to one peer (ACK, NACK,
// RESYNC_REQUEST, CHALLENGE, RESPONSE, resends); both are 0 in a message
// for every peer. A receiver drops a message addressed to another node or
// to another epoch of its own, so a datagram captured on its way to one
// peer cannot be replayed to another (the sender's counter is shared by
// all its receivers). The sequence number of the reliable stream travels
// in the body of DATA, BULK_BEGIN and BULK_END.
//
// Version 1 (a 32-byte header without the receiver) is not spoken any
// more: a version-1 datagram is refused as ErrVersion.
//
// The DATA body is a compact binary encoding (see appendChange); every other
// body is a msgpack array of its fields, in the order listed on each type.
// Receivers ignore array elements they do not know (later minor additions)
// and refuse missing ones.
const (
	magic0, magic1 = 0xC7, 0x5C

	// Version is the protocol version this package speaks.
	Version = 2

	// HeaderLen is the length of the fixed header.
	HeaderLen = 48

	// MaxDatagram is the largest datagram accepted or sent (the IPv4 UDP
	// payload limit).
	MaxDatagram = 65507

	// MaxFlowsPerMessage bounds the changes one DATA message may carry.
	MaxFlowsPerMessage = 4096

	// MaxNackRanges bounds the ranges one NACK may carry.
	MaxNackRanges = 64

	// MaxNameLen bounds a node name.
	MaxNameLen = 255

	// NonceLen is the length of a challenge nonce.
	NonceLen = 16

	// maxHelperLen bounds a helper name (NF_CT_HELPER_NAME_LEN is 16).
	maxHelperLen = 32
)

// Header flags.
const (
	// flagSealed marks a body sealed with the sender's epoch key.
	flagSealed = 0x01
	// flagStreamExt marks a stream message of a type from EXPECT on: its
	// body begins with its sequence number (a uvarint). A receiver that
	// does not know the type takes the sequence number and skips the rest;
	// a message of an unknown type without the flag is ignored. So a newer
	// peer's additions, on the stream or beside it, neither break nor
	// stall an older receiver.
	flagStreamExt = 0x02
)

// MsgType is the type of a message.
type MsgType uint8

// Message types. ONLY APPEND: a number, once used, keeps its meaning.
const (
	MsgData          MsgType = 1  // a batch of flow changes, sequenced
	MsgAck           MsgType = 2  // cumulative: every message up to Seq arrived
	MsgNack          MsgType = 3  // these sequence ranges are missing
	MsgHeartbeat     MsgType = 4  // alive; Seq is the last sequence number sent
	MsgBulkBegin     MsgType = 5  // a full copy of the sender's table begins, sequenced
	MsgBulkEnd       MsgType = 6  // the bulk ends: drop what it did not refresh, sequenced
	MsgResyncRequest MsgType = 7  // please send a bulk
	MsgHello         MsgType = 8  // a node announces itself (name)
	MsgChallenge     MsgType = 9  // prove you hold the key and live in your epoch
	MsgResponse      MsgType = 10 // the answer to a challenge
	MsgExpect        MsgType = 11 // a batch of expectation changes, sequenced (expect.go)
	MsgDataNow       MsgType = 12 // DATA sent ahead of the batch (first-packet defer, urgent.go): acknowledge at once
	// 13..16 DIGEST, DIGEST_REQUEST, REPAIR, REPAIR_END (drift detection)
	// are in digest.go; 17 NODE_INFO (version, capabilities, ruleset
	// digest) in nodeinfo.go. A stream type from EXPECT on sets
	// flagStreamExt (see streamExt); other new types must not.
	msgTypeEnd = MsgNodeInfo + 1 // one past the last known type; move it when appending

	// firstStreamExt is the first type that may carry flagStreamExt.
	firstStreamExt = MsgExpect
)

// known reports whether this version knows messages of type t (numbers
// reserved for others are not known until their code lands).
func known(t MsgType) bool {
	return t > 0 && t < msgTypeEnd && msgTypeNames[t] != ""
}

// streamExt reports whether messages of type t are stream messages sent
// with flagStreamExt.
func streamExt(t MsgType) bool { return t == MsgExpect || t == MsgDataNow }

var msgTypeNames = [...]string{
	MsgData: "DATA", MsgAck: "ACK", MsgNack: "NACK", MsgHeartbeat: "HEARTBEAT",
	MsgBulkBegin: "BULK_BEGIN", MsgBulkEnd: "BULK_END", MsgResyncRequest: "RESYNC_REQUEST",
	MsgHello: "HELLO", MsgChallenge: "CHALLENGE", MsgResponse: "RESPONSE", MsgExpect: "EXPECT",
	MsgDigest: "DIGEST", MsgDigestRequest: "DIGEST_REQUEST", MsgRepair: "REPAIR", MsgRepairEnd: "REPAIR_END",
	MsgNodeInfo: "NODE_INFO", MsgDataNow: "DATA_NOW",
}

func (t MsgType) String() string {
	if known(t) {
		return msgTypeNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// NodeID returns the node id of a node name: the first 8 bytes of its
// SHA-256, big endian.
func NodeID(name string) uint64 {
	s := sha256.Sum256([]byte(name))
	return binary.BigEndian.Uint64(s[:8])
}

// header is the fixed header of a datagram.
type header struct {
	Type    MsgType
	Flags   uint8
	Node    uint64 // sender's node id
	Epoch   uint64 // sender's epoch
	Counter uint64 // sender's datagram counter in the epoch, from 1
	To      uint64 // the receiver's node id; 0: every peer
	ToEpoch uint64 // the receiver's epoch; 0 when To is 0
}

// addressed reports whether messages of type t go to one peer and must
// name it in the header.
func addressed(t MsgType) bool {
	switch t {
	case MsgAck, MsgNack, MsgResyncRequest, MsgChallenge, MsgResponse,
		MsgDigestRequest, MsgRepair, MsgRepairEnd:
		return true
	}
	return false
}

// appendHeader appends the encoded header to b.
func appendHeader(b []byte, h *header) []byte {
	b = append(b, magic0, magic1, Version, byte(h.Type), h.Flags, 0, 0, 0)
	b = binary.BigEndian.AppendUint64(b, h.Node)
	b = binary.BigEndian.AppendUint64(b, h.Epoch)
	b = binary.BigEndian.AppendUint64(b, h.Counter)
	b = binary.BigEndian.AppendUint64(b, h.To)
	return binary.BigEndian.AppendUint64(b, h.ToEpoch)
}

// parseHeader decodes the header at the start of b. It checks the magic,
// the version and the reserved bytes, and that the type is known.
func parseHeader(b []byte) (header, error) {
	if len(b) < HeaderLen {
		return header{}, fmt.Errorf("%w: %d bytes, shorter than a header", ErrMalformed, len(b))
	}
	if len(b) > MaxDatagram {
		return header{}, fmt.Errorf("%w: %d bytes, over %d", ErrMalformed, len(b), MaxDatagram)
	}
	if b[0] != magic0 || b[1] != magic1 {
		return header{}, fmt.Errorf("%w: bad magic %#x%02x", ErrMalformed, b[0], b[1])
	}
	if b[2] != Version {
		return header{}, fmt.Errorf("%w: version %d, want %d", ErrVersion, b[2], Version)
	}
	h := header{
		Type:    MsgType(b[3]),
		Flags:   b[4],
		Node:    binary.BigEndian.Uint64(b[8:]),
		Epoch:   binary.BigEndian.Uint64(b[16:]),
		Counter: binary.BigEndian.Uint64(b[24:]),
		To:      binary.BigEndian.Uint64(b[32:]),
		ToEpoch: binary.BigEndian.Uint64(b[40:]),
	}
	if h.Type == 0 {
		return header{}, fmt.Errorf("%w: message type 0", ErrMalformed)
	}
	if h.Flags&^(flagSealed|flagStreamExt) != 0 || b[5]|b[6]|b[7] != 0 {
		return header{}, fmt.Errorf("%w: reserved header bits set", ErrMalformed)
	}
	if h.Flags&flagStreamExt != 0 && (h.Type < firstStreamExt || (known(h.Type) && !streamExt(h.Type))) {
		return header{}, fmt.Errorf("%w: %s is not an extension stream message", ErrMalformed, h.Type)
	}
	if h.To == 0 && h.ToEpoch != 0 {
		return header{}, fmt.Errorf("%w: receiver epoch without a receiver", ErrMalformed)
	}
	if addressed(h.Type) && h.To == 0 {
		return header{}, fmt.Errorf("%w: %s names no receiver", ErrMalformed, h.Type)
	}
	return h, nil
}

// seqRange is an inclusive range of sequence numbers.
type seqRange struct {
	First, Last uint64
}

// message is a decoded message body. Which fields are used depends on the
// type:
//
//	DATA            Seq, Changes
//	ACK             Seq (every message up to it arrived)
//	NACK            Ranges
//	HEARTBEAT       Seq (the last sequence number sent; 0: none yet)
//	BULK_BEGIN/END  Seq, Bulk (the bulk's id)
//	RESYNC_REQUEST  (nothing)
//	HELLO           Name
//	CHALLENGE       Name (the challenger), Nonce
//	RESPONSE        Name (the responder), Nonce (the challenge's), Seq (the
//	                responder's next sequence number)
//	EXPECT          Seq, Expects
//	(unknown >= 11) Seq only: taken from the stream and ignored
type message struct {
	Type    MsgType
	Seq     uint64
	Bulk    uint64
	Changes []cache.Change
	Ranges  []seqRange
	Name    string
	Nonce   []byte
	Expects []cache.ExpectChange
	Digest  *DigestPart // the digest types (digest.go)
	Info    *NodeInfo   // NODE_INFO (nodeinfo.go)
	// infoBudget bounds an encoded NODE_INFO body (the sender's MTU less
	// the header and the seal); 0: maxInfoBody.
	infoBudget int
}

// appendBody appends the encoded body of m to b.
func appendBody(b []byte, m *message) []byte {
	if isDigestType(m.Type) {
		return appendDigestBody(b, m)
	}
	if m.Type == MsgData || m.Type == MsgDataNow {
		b = binary.AppendUvarint(b, m.Seq)
		b = binary.AppendUvarint(b, uint64(len(m.Changes)))
		for i := range m.Changes {
			b = appendChange(b, &m.Changes[i])
		}
		return b
	}
	if m.Type == MsgExpect {
		return appendExpectBody(b, m)
	}
	if m.Type == MsgNodeInfo {
		budget := m.infoBudget
		if budget <= 0 {
			budget = maxInfoBody
		}
		return appendNodeInfo(b, m.Info, budget)
	}
	buf := bytes.NewBuffer(b)
	e := msgpack.NewEncoder(buf)
	// Writes to a bytes.Buffer do not fail.
	switch m.Type {
	case MsgAck, MsgHeartbeat:
		_ = e.EncodeArrayLen(1)
		_ = e.EncodeUint(m.Seq)
	case MsgNack:
		_ = e.EncodeArrayLen(1)
		_ = e.EncodeArrayLen(2 * len(m.Ranges))
		for _, r := range m.Ranges {
			_ = e.EncodeUint(r.First)
			_ = e.EncodeUint(r.Last)
		}
	case MsgBulkBegin, MsgBulkEnd:
		_ = e.EncodeArrayLen(2)
		_ = e.EncodeUint(m.Seq)
		_ = e.EncodeUint(m.Bulk)
	case MsgResyncRequest:
		_ = e.EncodeArrayLen(0)
	case MsgHello:
		_ = e.EncodeArrayLen(1)
		_ = e.EncodeString(m.Name)
	case MsgChallenge:
		_ = e.EncodeArrayLen(2)
		_ = e.EncodeString(m.Name)
		_ = e.EncodeBytes(m.Nonce)
	case MsgResponse:
		_ = e.EncodeArrayLen(3)
		_ = e.EncodeString(m.Name)
		_ = e.EncodeBytes(m.Nonce)
		_ = e.EncodeUint(m.Seq)
	}
	return buf.Bytes()
}

// decodeBody decodes a body of type t. It never panics, refuses trailing
// bytes and checks every length before allocating.
func decodeBody(t MsgType, b []byte) (*message, error) { return decodeBodyReuse(t, b, nil) }

// decodeBodyReuse is decodeBody decoding a DATA message's changes into
// changes' backing array when it is large enough (a receiver recycles the
// changes of the messages it applied).
func decodeBodyReuse(t MsgType, b []byte, changes []cache.Change) (*message, error) {
	if len(b) > MaxDatagram {
		return nil, fmt.Errorf("%w: body of %d bytes", ErrMalformed, len(b))
	}
	m := &message{Type: t}
	if t == MsgData || t == MsgDataNow {
		m.Changes = changes[:0]
	}
	var err error
	switch t {
	case MsgData, MsgDataNow:
		err = decodeData(b, m)
	case MsgAck, MsgNack, MsgHeartbeat, MsgBulkBegin, MsgBulkEnd, MsgResyncRequest,
		MsgHello, MsgChallenge, MsgResponse:
		err = decodeControl(b, m)
	case MsgExpect:
		err = decodeExpectBody(b, m)
	case MsgDigest, MsgDigestRequest, MsgRepair, MsgRepairEnd:
		err = decodeDigestBody(b, m)
	case MsgNodeInfo:
		err = decodeNodeInfo(b, m)
	default:
		if t >= firstStreamExt {
			err = decodeUnknownStream(b, m)
			break
		}
		err = fmt.Errorf("unknown message type %d", t)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, t, err)
	}
	return m, nil
}

func decodeData(b []byte, m *message) error {
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
	if cnt > MaxFlowsPerMessage {
		return fmt.Errorf("%d flows, over %d", cnt, MaxFlowsPerMessage)
	}
	if cnt*minChangeLen > uint64(len(b)) {
		return fmt.Errorf("%d flows cannot fit in %d bytes", cnt, len(b))
	}
	if seq == 0 {
		return fmt.Errorf("sequence number 0")
	}
	m.Seq = seq
	if uint64(cap(m.Changes)) >= cnt {
		m.Changes = m.Changes[:cnt]
	} else {
		m.Changes = make([]cache.Change, cnt)
	}
	for i := range m.Changes {
		n, err := decodeChange(b, &m.Changes[i])
		if err != nil {
			return fmt.Errorf("flow %d: %w", i, err)
		}
		b = b[n:]
	}
	if len(b) != 0 {
		return fmt.Errorf("%d trailing bytes", len(b))
	}
	return nil
}

// fields returns how many array elements a control message has.
func fields(t MsgType) int {
	switch t {
	case MsgResyncRequest:
		return 0
	case MsgBulkBegin, MsgBulkEnd, MsgChallenge:
		return 2
	case MsgResponse:
		return 3
	}
	return 1
}

func decodeControl(b []byte, m *message) error {
	r := bytes.NewReader(b)
	d := msgpack.NewDecoder(r)
	n, err := d.DecodeArrayLen()
	if err != nil {
		return err
	}
	want := fields(m.Type)
	if n < want {
		return fmt.Errorf("%d fields, want %d", n, want)
	}
	if n > 32 {
		return fmt.Errorf("%d fields", n)
	}
	switch m.Type {
	case MsgAck, MsgHeartbeat:
		m.Seq, err = d.DecodeUint64()
	case MsgNack:
		m.Ranges, err = decodeRanges(d)
	case MsgBulkBegin, MsgBulkEnd:
		if m.Seq, err = d.DecodeUint64(); err == nil {
			m.Bulk, err = d.DecodeUint64()
		}
		if err == nil && m.Seq == 0 {
			err = fmt.Errorf("sequence number 0")
		}
	case MsgHello:
		m.Name, err = decodeName(d, r)
	case MsgChallenge, MsgResponse:
		if m.Name, err = decodeName(d, r); err != nil {
			break
		}
		var nonce []byte
		if nonce, err = decodeBytes(d, r, NonceLen); err != nil {
			break
		}
		if len(nonce) != NonceLen {
			err = fmt.Errorf("nonce of %d bytes", len(nonce))
			break
		}
		m.Nonce = nonce
		if m.Type == MsgResponse {
			m.Seq, err = d.DecodeUint64()
		}
	}
	if err != nil {
		return err
	}
	for range n - want {
		if err := skipValue(r, 0); err != nil {
			return err
		}
	}
	if r.Len() != 0 {
		return fmt.Errorf("%d trailing bytes", r.Len())
	}
	return nil
}

// maxSkipDepth bounds the nesting of an unknown element.
const maxSkipDepth = 8

// skipValue skips one msgpack element of r, checking every length against
// what is left before skipping it: an unknown element costs no allocation
// whatever it claims (msgpack's own Skip allocates what a string claims).
func skipValue(r *bytes.Reader, depth int) error {
	if depth > maxSkipDepth {
		return fmt.Errorf("element nested over %d deep", maxSkipDepth)
	}
	c, err := r.ReadByte()
	if err != nil {
		return errShort
	}
	size := func(n int) (int, error) { // a big-endian length of n bytes
		var v int
		for range n {
			b, err := r.ReadByte()
			if err != nil {
				return 0, errShort
			}
			v = v<<8 | int(b)
		}
		return v, nil
	}
	skip := func(n int) error {
		if n < 0 || n > r.Len() {
			return fmt.Errorf("element of %d bytes, %d left", n, r.Len())
		}
		_, err := r.Seek(int64(n), io.SeekCurrent)
		return err
	}
	items := func(n int) error { // n elements follow
		if n > r.Len() {
			return fmt.Errorf("%d elements, %d bytes left", n, r.Len())
		}
		for range n {
			if err := skipValue(r, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3: // fixint, nil, bool
		return nil
	case c >= 0xa0 && c <= 0xbf: // fixstr
		return skip(int(c & 0x1f))
	case c >= 0x90 && c <= 0x9f: // fixarray
		return items(int(c & 0x0f))
	case c >= 0x80 && c <= 0x8f: // fixmap
		return items(2 * int(c&0x0f))
	}
	switch c {
	case 0xcc, 0xd0:
		return skip(1)
	case 0xcd, 0xd1:
		return skip(2)
	case 0xca, 0xce, 0xd2:
		return skip(4)
	case 0xcb, 0xcf, 0xd3:
		return skip(8)
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16 (+ type byte)
		return skip(1 + 1<<(c-0xd4))
	case 0xc4, 0xd9, 0xc5, 0xda, 0xc6, 0xdb: // bin, str 8/16/32
		w := map[byte]int{0xc4: 1, 0xd9: 1, 0xc5: 2, 0xda: 2, 0xc6: 4, 0xdb: 4}[c]
		n, err := size(w)
		if err != nil {
			return err
		}
		return skip(n)
	case 0xc7, 0xc8, 0xc9: // ext 8/16/32 (+ type byte)
		n, err := size(1 << (c - 0xc7))
		if err != nil {
			return err
		}
		return skip(n + 1)
	case 0xdc, 0xdd: // array 16/32
		n, err := size(2 << (c - 0xdc))
		if err != nil {
			return err
		}
		return items(n)
	case 0xde, 0xdf: // map 16/32
		n, err := size(2 << (c - 0xde))
		if err != nil {
			return err
		}
		if n > r.Len() {
			return fmt.Errorf("map of %d entries, %d bytes left", n, r.Len())
		}
		return items(2 * n)
	}
	return fmt.Errorf("msgpack code %#x", c)
}

func decodeRanges(d *msgpack.Decoder) ([]seqRange, error) {
	n, err := d.DecodeArrayLen()
	if err != nil {
		return nil, err
	}
	if n < 0 || n%2 != 0 || n/2 > MaxNackRanges {
		return nil, fmt.Errorf("%d range bounds", n)
	}
	out := make([]seqRange, n/2)
	for i := range out {
		if out[i].First, err = d.DecodeUint64(); err != nil {
			return nil, err
		}
		if out[i].Last, err = d.DecodeUint64(); err != nil {
			return nil, err
		}
		if out[i].First == 0 || out[i].Last < out[i].First {
			return nil, fmt.Errorf("bad range %d-%d", out[i].First, out[i].Last)
		}
	}
	return out, nil
}

// decodeBytes reads a msgpack str or bin of at most max bytes, checking the
// length against what is left before allocating. d reads r directly (a
// bytes.Reader is an io.ByteScanner, so msgpack does not buffer ahead).
func decodeBytes(d *msgpack.Decoder, r *bytes.Reader, max int) ([]byte, error) {
	n, err := d.DecodeBytesLen()
	if err != nil {
		return nil, err
	}
	if n < 0 || n > max || n > r.Len() {
		return nil, fmt.Errorf("string of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func decodeName(d *msgpack.Decoder, r *bytes.Reader) (string, error) {
	b, err := decodeBytes(d, r, MaxNameLen)
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", fmt.Errorf("empty node name")
	}
	return string(b), nil
}

// Flow encoding (DATA hot path).
//
//	flags    1 byte, chFlag* below
//	proto    1 byte
//	orig     src addr, dst addr (4 bytes each for IPv4, 16 for IPv6),
//	         src port, dst port (2 bytes each, big endian)
//	zone     2 bytes                      if chZone
//	-- the rest is absent for a removal (chDeleted) --
//	reply    like orig                    if chReply (else the inverse of orig)
//	status   uvarint
//	timeout  uvarint (seconds)
//	mark     uvarint                      if chMark
//	tcp      state, wscale orig, wscale reply, flags orig, flags reply
//	                                      if chTCP
//	idle     uvarint (milliseconds)       if chIdle
//	extra    1 byte of xFlag*, then each present part   if chExtra
const (
	chDeleted = 1 << iota
	chIPv6
	chReply
	chMark
	chZone
	chTCP
	chExtra
	chIdle
)

const (
	xLabels = 1 << iota
	xHelper
	xSeqAdjOrig
	xSeqAdjReply
	xSynProxy
	xSCTP
	xDCCP
)

// minChangeLen is the shortest encoded change (an IPv4 removal).
const minChangeLen = 2 + 12

func appendTuple(b []byte, t *flow.Tuple, v6 bool) []byte {
	if v6 {
		b = append(b, t.Src[:]...)
		b = append(b, t.Dst[:]...)
	} else {
		b = append(b, t.Src[:4]...)
		b = append(b, t.Dst[:4]...)
	}
	b = binary.BigEndian.AppendUint16(b, t.SrcPort)
	return binary.BigEndian.AppendUint16(b, t.DstPort)
}

func appendSeqAdj(b []byte, s *flow.SeqAdj) []byte {
	b = binary.BigEndian.AppendUint32(b, s.CorrectionPos)
	b = binary.BigEndian.AppendUint32(b, uint32(s.OffsetBefore))
	return binary.BigEndian.AppendUint32(b, uint32(s.OffsetAfter))
}

// appendChange appends the compact encoding of one change to b. An IPv4 TCP
// flow that is not NATed costs about 26 bytes.
func appendChange(b []byte, ch *cache.Change) []byte {
	f := &ch.Flow
	var fl byte
	v6 := f.Family == flow.FamilyIPv6
	if v6 {
		fl |= chIPv6
	}
	if f.Zone != 0 {
		fl |= chZone
	}
	if ch.Deleted {
		fl |= chDeleted
	} else {
		if f.Reply != f.Orig.Invert(f.Proto) {
			fl |= chReply
		}
		if f.Mark != 0 {
			fl |= chMark
		}
		if f.TCP != (flow.TCPInfo{}) {
			fl |= chTCP
		}
		if !f.Extra.IsZero() {
			fl |= chExtra
		}
		if ch.Idle >= 1e6 {
			fl |= chIdle
		}
	}
	b = append(b, fl, f.Proto)
	b = appendTuple(b, &f.Orig, v6)
	if fl&chZone != 0 {
		b = binary.BigEndian.AppendUint16(b, f.Zone)
	}
	if ch.Deleted {
		return b
	}
	if fl&chReply != 0 {
		b = appendTuple(b, &f.Reply, v6)
	}
	b = binary.AppendUvarint(b, uint64(f.Status))
	b = binary.AppendUvarint(b, uint64(f.Timeout))
	if fl&chMark != 0 {
		b = binary.AppendUvarint(b, uint64(f.Mark))
	}
	if fl&chTCP != 0 {
		t := &f.TCP
		b = append(b, t.State, t.WScaleOrig, t.WScaleRep, t.FlagsOrig, t.FlagsRep)
	}
	if fl&chIdle != 0 {
		b = binary.AppendUvarint(b, uint64(ch.Idle.Milliseconds()))
	}
	if fl&chExtra != 0 {
		b = appendExtra(b, f.Extra)
	}
	return b
}

func appendExtra(b []byte, x *flow.Extra) []byte {
	var xf byte
	if x.Labels != [16]byte{} {
		xf |= xLabels
	}
	if x.Helper != "" {
		xf |= xHelper
	}
	if x.SeqAdjOrig != (flow.SeqAdj{}) {
		xf |= xSeqAdjOrig
	}
	if x.SeqAdjReply != (flow.SeqAdj{}) {
		xf |= xSeqAdjReply
	}
	if x.SynProxy != (flow.SynProxy{}) {
		xf |= xSynProxy
	}
	if x.SCTP != (flow.SCTPInfo{}) {
		xf |= xSCTP
	}
	if x.DCCP != (flow.DCCPInfo{}) {
		xf |= xDCCP
	}
	b = append(b, xf)
	if xf&xLabels != 0 {
		b = append(b, x.Labels[:]...)
	}
	if xf&xHelper != 0 {
		h := x.Helper
		if len(h) > maxHelperLen {
			h = h[:maxHelperLen]
		}
		b = append(b, byte(len(h)))
		b = append(b, h...)
	}
	if xf&xSeqAdjOrig != 0 {
		b = appendSeqAdj(b, &x.SeqAdjOrig)
	}
	if xf&xSeqAdjReply != 0 {
		b = appendSeqAdj(b, &x.SeqAdjReply)
	}
	if xf&xSynProxy != 0 {
		b = binary.BigEndian.AppendUint32(b, x.SynProxy.ISN)
		b = binary.BigEndian.AppendUint32(b, x.SynProxy.ITS)
		b = binary.BigEndian.AppendUint32(b, x.SynProxy.TSOff)
	}
	if xf&xSCTP != 0 {
		b = append(b, x.SCTP.State)
		b = binary.BigEndian.AppendUint32(b, x.SCTP.VTagOriginal)
		b = binary.BigEndian.AppendUint32(b, x.SCTP.VTagReply)
	}
	if xf&xDCCP != 0 {
		b = append(b, x.DCCP.State, x.DCCP.Role)
		b = binary.BigEndian.AppendUint64(b, x.DCCP.HandshakeSeq)
	}
	return b
}

// reader is a bounds-checked cursor over a byte slice. After the first
// short read it returns zeros and keeps err set.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil || n < 0 || len(r.b)-r.off < n {
		r.err = errShort
		return nil
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

func (r *reader) byte() byte {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (r *reader) uvarint(max uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		r.err = errShort
		return 0
	}
	if v > max {
		r.err = fmt.Errorf("value %d over %d", v, max)
		return 0
	}
	r.off += n
	return v
}

func (r *reader) tuple(t *flow.Tuple, v6 bool) {
	n := 4
	if v6 {
		n = 16
	}
	copy(t.Src[:], r.take(n))
	copy(t.Dst[:], r.take(n))
	t.SrcPort = r.u16()
	t.DstPort = r.u16()
}

func (r *reader) seqAdj(s *flow.SeqAdj) {
	s.CorrectionPos = r.u32()
	s.OffsetBefore = int32(r.u32())
	s.OffsetAfter = int32(r.u32())
}

// maxIdleMs bounds a reported idleness (about 50 days).
const maxIdleMs = 1 << 32

// decodeChange decodes one change from the start of b into ch and returns
// the bytes used.
func decodeChange(b []byte, ch *cache.Change) (int, error) {
	r := reader{b: b}
	fl := r.byte()
	*ch = cache.Change{}
	f := &ch.Flow
	f.Proto = r.byte()
	v6 := fl&chIPv6 != 0
	f.Family = flow.FamilyIPv4
	if v6 {
		f.Family = flow.FamilyIPv6
	}
	r.tuple(&f.Orig, v6)
	if fl&chZone != 0 {
		f.Zone = r.u16()
	}
	if fl&chDeleted != 0 {
		if fl&^(chDeleted|chIPv6|chZone) != 0 {
			return 0, fmt.Errorf("removal with state flags %#x", fl)
		}
		ch.Deleted = true
		return r.off, r.err
	}
	if fl&chReply != 0 {
		r.tuple(&f.Reply, v6)
	} else {
		f.Reply = f.Orig.Invert(f.Proto)
	}
	f.Status = uint32(r.uvarint(1<<32 - 1))
	f.Timeout = uint32(r.uvarint(1<<32 - 1))
	if fl&chMark != 0 {
		f.Mark = uint32(r.uvarint(1<<32 - 1))
	}
	if fl&chTCP != 0 {
		t := &f.TCP
		if p := r.take(5); p != nil {
			t.State, t.WScaleOrig, t.WScaleRep, t.FlagsOrig, t.FlagsRep = p[0], p[1], p[2], p[3], p[4]
		}
	}
	if fl&chIdle != 0 {
		ch.Idle = time.Duration(r.uvarint(maxIdleMs)) * time.Millisecond
	}
	if fl&chExtra != 0 && r.err == nil {
		x, err := decodeExtra(&r)
		if err != nil {
			return 0, err
		}
		f.Extra = x
	}
	return r.off, r.err
}

func decodeExtra(r *reader) (*flow.Extra, error) {
	xf := r.byte()
	if r.err != nil {
		return nil, r.err
	}
	if xf == 0 || xf&0x80 != 0 {
		return nil, fmt.Errorf("bad extra flags %#x", xf)
	}
	x := new(flow.Extra)
	if xf&xLabels != 0 {
		copy(x.Labels[:], r.take(16))
	}
	if xf&xHelper != 0 {
		n := int(r.byte())
		if n == 0 || n > maxHelperLen {
			return nil, fmt.Errorf("helper name of %d bytes", n)
		}
		h := r.take(n)
		for _, c := range h {
			if c <= ' ' || c >= 0x7f {
				return nil, fmt.Errorf("helper name %q not printable ASCII", h)
			}
		}
		x.Helper = string(h)
	}
	if xf&xSeqAdjOrig != 0 {
		r.seqAdj(&x.SeqAdjOrig)
	}
	if xf&xSeqAdjReply != 0 {
		r.seqAdj(&x.SeqAdjReply)
	}
	if xf&xSynProxy != 0 {
		x.SynProxy.ISN = r.u32()
		x.SynProxy.ITS = r.u32()
		x.SynProxy.TSOff = r.u32()
	}
	if xf&xSCTP != 0 {
		x.SCTP.State = r.byte()
		x.SCTP.VTagOriginal = r.u32()
		x.SCTP.VTagReply = r.u32()
	}
	if xf&xDCCP != 0 {
		x.DCCP.State = r.byte()
		x.DCCP.Role = r.byte()
		x.DCCP.HandshakeSeq = r.u64()
	}
	return x, r.err
}
