package sync

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// Options configure a Node. Zero values take the defaults given per field.
type Options struct {
	// NodeName names this node to its peers; required. Peers key the
	// flows they receive from this node by it.
	NodeName string
	// Key is the pre-shared key (see LoadKey). nil runs insecure: the same
	// framing, no authentication and no encryption (a warning is logged).
	Key *[KeyLen]byte
	// MTU is the largest datagram a node sends, header and tag included;
	// default 1400. Resends of messages whose flows grew may exceed it.
	MTU int
	// ResendQueue is how many sent messages are kept for repair by NACK;
	// default 4096. A gap older than that is repaired by a full resync.
	ResendQueue int
	// AckInterval is how often a receiver acknowledges (and repeats its
	// NACKs); default 50ms. A receiver also acknowledges every 32 messages.
	AckInterval time.Duration
	// HeartbeatInterval is how often a node tells its peers the last
	// sequence number it sent, so that a lost tail is noticed; default 1s.
	HeartbeatInterval time.Duration
	// PeerTimeout is how long a silent peer counts as up; default 5
	// heartbeat intervals. A peer that is down keeps its flows in the
	// external cache; it only stops holding back the resend queue.
	PeerTimeout time.Duration
	// BulkBurst is how many datagrams a bulk transfer sends per
	// millisecond; default 16 (about 20 MB/s at the default MTU).
	BulkBurst int
	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger
	// Applied, if set, is called with the changes of each DATA or
	// DATA_NOW message from origin right after the external cache took
	// them (inject mode writes them into the kernel). It runs on the
	// node's goroutine with the node locked: it must not call the Node.
	// urgent is set for DATA_NOW, which is acknowledged as soon as Applied
	// returns.
	Applied func(origin string, chs []cache.Change, urgent bool)
}

func (o *Options) setDefaults() error {
	if o.NodeName == "" || len(o.NodeName) > MaxNameLen {
		return fmt.Errorf("sync: node name must have 1 to %d bytes", MaxNameLen)
	}
	if o.MTU == 0 {
		o.MTU = 1400
	}
	if o.MTU < 256 || o.MTU > MaxDatagram {
		return fmt.Errorf("sync: MTU %d out of range 256..%d", o.MTU, MaxDatagram)
	}
	if o.ResendQueue <= 0 {
		o.ResendQueue = 4096
	}
	if o.AckInterval <= 0 {
		o.AckInterval = 50 * time.Millisecond
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = time.Second
	}
	if o.PeerTimeout <= 0 {
		o.PeerTimeout = 5 * o.HeartbeatInterval
	}
	if o.BulkBurst <= 0 {
		o.BulkBurst = 16
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Tuning that follows from Options.
const (
	ackEvery       = 32  // acknowledge at least every this many messages
	maxResendBurst = 512 // sequence numbers one NACK may have resent
	maxRetired     = 8   // old epochs remembered per peer
	maxAnon        = 256 // senders tracked before they are identified
	maxKeyCache    = 64  // derived peer epoch keys kept
	maxChallenges  = 1024
	nackRetry      = 4 // ack intervals before missing messages are NACKed again
)

// DropStats count datagrams dropped unapplied, by reason.
type DropStats struct {
	Auth       uint64 `json:"auth"`       // failed authentication
	Malformed  uint64 `json:"malformed"`  // undecodable header or body
	Replay     uint64 `json:"replay"`     // counter seen before or older than the window
	OldEpoch   uint64 `json:"old_epoch"`  // from a sender epoch that was replaced
	Unverified uint64 `json:"unverified"` // from an epoch not (yet) proven by a challenge
	Duplicate  uint64 `json:"duplicate"`  // stream message applied already
	Window     uint64 `json:"window"`     // stream message too far ahead to buffer
}

// PeerStats describe the exchange with one peer. Counters count from the
// node's start; in and out are datagrams.
type PeerStats struct {
	Name  string `json:"name"`
	Addr  string `json:"addr"`
	Up    bool   `json:"up"`
	Epoch uint64 `json:"epoch,omitempty"`

	MsgsIn   uint64 `json:"msgs_in"`
	MsgsOut  uint64 `json:"msgs_out"`
	BytesIn  uint64 `json:"bytes_in"`
	BytesOut uint64 `json:"bytes_out"`
	FlowsIn  uint64 `json:"flows_in"` // changes applied to the external cache

	AcksIn   uint64 `json:"acks_in"`
	AcksOut  uint64 `json:"acks_out"`
	NacksIn  uint64 `json:"nacks_in"`
	NacksOut uint64 `json:"nacks_out"`
	Resends  uint64 `json:"resends"` // messages resent to the peer on its NACKs

	BulksSent     uint64 `json:"bulks_sent"`
	BulksReceived uint64 `json:"bulks_received"`
	// FullResyncs counts gaps no NACK could repair: on the sending side,
	// NACKs for messages gone from the resend queue (answered by a bulk);
	// on the receiving side, resync requests for a gap that did not heal.
	FullResyncs uint64 `json:"full_resyncs"`
	// GapsSkipped counts gaps the receiver skipped because a bulk that
	// supersedes them began.
	GapsSkipped uint64 `json:"gaps_skipped"`

	Drops DropStats `json:"drops"`

	LastSeen time.Time `json:"last_seen,omitzero"`
	// Lag estimates how far the peer is behind this node's stream: the
	// age of the oldest message it has not acknowledged.
	Lag time.Duration `json:"lag_ns"`
	// Pending is how many of this node's messages the peer has not
	// acknowledged.
	Pending uint64 `json:"pending"`
}

// Node replicates the internal cache to every peer of a Transport and
// applies what peers replicate to the external cache. See the package
// documentation.
type Node struct {
	opt      Options
	log      *slog.Logger
	id       uint64
	epoch    uint64
	aead     cipher.AEAD // this node's epoch key; nil when insecure
	internal *cache.Internal
	external *cache.External
	tr       Transport
	now      func() time.Time

	bulkReq   chan struct{} // Bulk() asks; capacity 1
	resyncReq chan struct{} // RequestResync() asks; capacity 1

	// mu guards every field below. Run's goroutine holds it while it
	// handles one event; Stats takes it to copy.
	mu         sync.Mutex
	running    bool
	counter    uint64 // last datagram counter used
	nextSeq    uint64 // next stream sequence number
	queue      resendQueue
	peers      map[uint64]*peer
	anon       map[string]*PeerStats // senders not identified, by address
	keys       map[[2]uint64]cipher.AEAD
	challenges map[uint64]*challenge
	bulk       *bulkState
	lastBegin  uint64      // sequence number of the last BULK_BEGIN sent
	waiters    []nowWaiter // SendNow calls waiting for acknowledgements, in sequence order
	scratch    []byte
	out        []byte
	warnedTwin bool // a datagram from another node with our name was logged
}

type challenge struct {
	nonce [NonceLen]byte
	sent  time.Time
}

// peer is what a node knows of one other node, in both roles: the origin
// of a stream this node receives, and a receiver of this node's stream.
type peer struct {
	id      uint64
	name    string
	addr    string
	epoch   uint64 // accepted epoch
	retired []uint64
	window  replayWindow
	seen    time.Time

	rx rxState

	// Send side: what the peer acknowledged of this node's stream.
	acked    uint64
	ackKnown bool
	stats    PeerStats
}

// rxState is the receive state of one origin's stream.
type rxState struct {
	next         uint64 // next sequence number to apply
	buf          map[uint64]*Message
	maxSeen      uint64 // highest sequence number known to exist
	skipBelow    uint64 // a bulk began there: gaps below it need no repair
	ackedOut     uint64 // last cumulative ACK sent
	sinceAck     int
	ackDue       bool
	lastNack     time.Time
	nackedTo     uint64 // highest sequence number NACKed so far
	lastProgress time.Time
	resyncWanted bool // waiting for a bulk after accepting the epoch
	lastResync   time.Time
	ackNow       bool // a DATA_NOW was applied: acknowledge at once
}

// bulkState is a bulk transfer in progress.
type bulkState struct {
	id    uint64
	begin uint64
	keys  []flow.Key
	pos   int
}

// New returns a Node replicating internal to the peers of tr and applying
// what they replicate to external. The node does nothing until Run. It
// becomes the single reader of internal's change feed.
func New(opt Options, internal *cache.Internal, external *cache.External, tr Transport) (*Node, error) {
	if err := opt.setDefaults(); err != nil {
		return nil, err
	}
	if internal == nil || external == nil || tr == nil {
		return nil, errors.New("sync: New needs both caches and a transport")
	}
	n := &Node{
		opt:        opt,
		log:        opt.Logger.With("node", opt.NodeName),
		id:         NodeID(opt.NodeName),
		internal:   internal,
		external:   external,
		tr:         tr,
		now:        time.Now,
		bulkReq:    make(chan struct{}, 1),
		resyncReq:  make(chan struct{}, 1),
		nextSeq:    1,
		queue:      resendQueue{max: opt.ResendQueue},
		peers:      make(map[uint64]*peer),
		anon:       make(map[string]*PeerStats),
		keys:       make(map[[2]uint64]cipher.AEAD),
		challenges: make(map[uint64]*challenge),
	}
	for n.epoch == 0 {
		n.epoch = randUint64()
	}
	if opt.Key != nil {
		k := *opt.Key // the caller may reuse its array
		n.opt.Key = &k
		a, err := epochAEAD(n.opt.Key, n.id, n.epoch)
		if err != nil {
			return nil, fmt.Errorf("sync: epoch key: %w", err)
		}
		n.aead = a
	}
	return n, nil
}

func randUint64() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

// ID returns the node id, and Epoch the random epoch of this start.
func (n *Node) ID() uint64 { return n.id }

// Epoch returns the node's epoch.
func (n *Node) Epoch() uint64 { return n.epoch }

// Bulk asks the node to send its whole internal cache to every peer (a
// bulk transfer). It does not block; a request while one is pending or a
// bulk is in progress is merged with it.
func (n *Node) Bulk() {
	select {
	case n.bulkReq <- struct{}{}:
	default:
	}
}

// RequestResync asks every peer for a bulk transfer of its table. It does
// not block.
func (n *Node) RequestResync() {
	select {
	case n.resyncReq <- struct{}{}:
	default:
	}
}

// Run runs the node until ctx ends, then returns nil; or until the
// transport's channel closes (ErrClosed). Run owns the goroutines it starts
// and returns only after they ended. It does not close the transport. A
// Node runs once.
func (n *Node) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.running {
		n.mu.Unlock()
		return errors.New("sync: node already ran")
	}
	n.running = true
	if n.aead == nil {
		n.log.Warn("sync runs insecure: datagrams are neither authenticated nor encrypted")
	}
	n.log.Info("sync node starting", "id", fmt.Sprintf("%016x", n.id), "epoch", fmt.Sprintf("%016x", n.epoch))
	n.sendAll(&Message{Type: MsgHello, Name: n.opt.NodeName})
	n.mu.Unlock()

	ack := time.NewTicker(n.opt.AckInterval)
	defer ack.Stop()
	hb := time.NewTicker(n.opt.HeartbeatInterval)
	defer hb.Stop()
	var bulkTick *time.Ticker
	var bulkC <-chan time.Time
	defer func() {
		if bulkTick != nil {
			bulkTick.Stop()
		}
	}()
	pkts := n.tr.Packets()
	changed := n.internal.Changed()
	for {
		select {
		case <-ctx.Done():
			return nil
		case p, ok := <-pkts:
			if !ok {
				return fmt.Errorf("sync: receive: %w", ErrClosed)
			}
			n.mu.Lock()
			n.handle(p)
			n.mu.Unlock()
		case <-changed:
			n.mu.Lock()
			n.sendChanges()
			n.mu.Unlock()
		case <-ack.C:
			n.mu.Lock()
			n.ackTick()
			n.mu.Unlock()
		case <-hb.C:
			n.mu.Lock()
			n.sendAll(&Message{Type: MsgHeartbeat, Seq: n.nextSeq - 1})
			n.mu.Unlock()
		case <-n.bulkReq:
			n.mu.Lock()
			n.startBulk(false)
			n.mu.Unlock()
		case <-n.resyncReq:
			n.mu.Lock()
			for _, pr := range n.peers {
				n.requestResync(pr, n.now())
			}
			n.mu.Unlock()
		case <-bulkC:
			n.mu.Lock()
			n.bulkStep()
			n.mu.Unlock()
		}
		n.mu.Lock()
		active := n.bulk != nil
		n.mu.Unlock()
		switch {
		case active && bulkTick == nil:
			bulkTick = time.NewTicker(time.Millisecond)
			bulkC = bulkTick.C
		case !active && bulkTick != nil:
			bulkTick.Stop()
			bulkTick, bulkC = nil, nil
		}
	}
}

// Stats returns the exchange statistics per peer, keyed by node name (by
// transport address for senders not identified yet).
func (n *Node) Stats() map[string]PeerStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.now()
	out := make(map[string]PeerStats, len(n.peers)+len(n.anon))
	for addr, s := range n.anon {
		out[addr] = *s
	}
	for _, pr := range n.peers {
		s := pr.stats
		s.Name, s.Addr, s.Epoch = pr.name, pr.addr, pr.epoch
		s.Up = now.Sub(pr.seen) < n.opt.PeerTimeout
		s.LastSeen = pr.seen
		if last := n.nextSeq - 1; pr.ackKnown && pr.acked < last {
			s.Pending = last - pr.acked
			if e := n.queue.get(pr.acked + 1); e != nil {
				s.Lag = now.Sub(e.sent)
			}
		}
		out[pr.name] = s
	}
	return out
}

// NodeStatus describes this node's side of the protocol.
type NodeStatus struct {
	Name    string `json:"name"`
	ID      string `json:"id"`    // node id, hexadecimal
	Epoch   string `json:"epoch"` // epoch of this start, hexadecimal
	Secure  bool   `json:"secure"`
	LastSeq uint64 `json:"last_seq"` // last stream sequence number sent
	Queued  int    `json:"queued"`   // messages in the resend queue
	// BulkSent and BulkTotal are the progress of a bulk transfer in
	// progress (both 0 when none is).
	BulkSent  int `json:"bulk_sent"`
	BulkTotal int `json:"bulk_total"`
}

// Status returns this node's side of the protocol.
func (n *Node) Status() NodeStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := NodeStatus{
		Name:    n.opt.NodeName,
		ID:      fmt.Sprintf("%016x", n.id),
		Epoch:   fmt.Sprintf("%016x", n.epoch),
		Secure:  n.aead != nil,
		LastSeq: n.nextSeq - 1,
		Queued:  n.queue.Len(),
	}
	if b := n.bulk; b != nil {
		s.BulkSent, s.BulkTotal = b.pos, len(b.keys)
	}
	return s
}

// statsFor returns the counters to charge for a datagram from addr claiming
// node id.
func (n *Node) statsFor(id uint64, addr string) *PeerStats {
	if pr, ok := n.peers[id]; ok {
		return &pr.stats
	}
	s, ok := n.anon[addr]
	if !ok {
		if len(n.anon) >= maxAnon {
			clear(n.anon)
		}
		s = &PeerStats{Addr: addr}
		n.anon[addr] = s
	}
	return s
}

// peerAEAD returns the key of a peer's epoch, nil when insecure.
func (n *Node) peerAEAD(id, epoch uint64) (cipher.AEAD, error) {
	if n.opt.Key == nil {
		return nil, nil
	}
	k := [2]uint64{id, epoch}
	if a, ok := n.keys[k]; ok {
		return a, nil
	}
	a, err := epochAEAD(n.opt.Key, id, epoch)
	if err != nil {
		return nil, err
	}
	if len(n.keys) >= maxKeyCache {
		for k2 := range n.keys {
			delete(n.keys, k2)
		}
		for _, pr := range n.peers {
			if pr.epoch != 0 {
				if a2, err := epochAEAD(n.opt.Key, pr.id, pr.epoch); err == nil {
					n.keys[[2]uint64{pr.id, pr.epoch}] = a2
				}
			}
		}
	}
	n.keys[k] = a
	return a, nil
}

// handle processes one received datagram. Order: header, authentication,
// epoch and replay checks, then body decoding, then effects.
func (n *Node) handle(p Packet) {
	now := n.now()
	h, err := ParseHeader(p.Data)
	if err != nil {
		n.statsFor(0, p.From).Drops.Malformed++
		n.log.Debug("dropped malformed datagram", "from", p.From, "err", err)
		return
	}
	if h.Node == n.id {
		if h.Epoch != n.epoch && !n.warnedTwin {
			n.warnedTwin = true
			n.log.Error("another node uses this node's name; its datagrams are ignored", "from", p.From)
		}
		return // our own, looped back by multicast
	}
	st := n.statsFor(h.Node, p.From)
	aead, err := n.peerAEAD(h.Node, h.Epoch)
	if err != nil {
		st.Drops.Auth++
		return
	}
	body, err := open(p.Data, &h, aead)
	if err != nil {
		st.Drops.Auth++
		n.log.Debug("dropped datagram failing authentication", "from", p.From, "err", err)
		return
	}
	pr := n.peers[h.Node]
	accepted := pr != nil && pr.epoch == h.Epoch
	if accepted && !pr.window.check(h.Counter) {
		st.Drops.Replay++
		return
	}
	if !accepted && pr != nil && slices.Contains(pr.retired, h.Epoch) {
		st.Drops.OldEpoch++
		return
	}
	m, err := DecodeBody(h.Type, body)
	if err != nil {
		st.Drops.Malformed++
		n.log.Debug("dropped malformed message", "from", p.From, "err", err)
		return
	}
	st.MsgsIn++
	st.BytesIn += uint64(len(p.Data))
	if accepted {
		pr.window.mark(h.Counter)
		pr.addr = p.From
		pr.seen = now
	}
	switch m.Type {
	case MsgChallenge:
		// Answer whoever asks: the answer proves only that we hold the key
		// and live in our epoch, and is sealed under that epoch.
		n.sendTo(p.From, &Message{Type: MsgResponse, Name: n.opt.NodeName, Nonce: m.Nonce, Seq: n.nextSeq})
		if !accepted {
			n.challenge(h.Node, p.From, now)
		}
		return
	case MsgResponse:
		if !accepted {
			n.verifyResponse(&h, m, p.From, now)
		}
		return
	}
	if !accepted {
		st.Drops.Unverified++
		n.challenge(h.Node, p.From, now)
		return
	}
	switch m.Type {
	case MsgData, MsgDataNow, MsgBulkBegin, MsgBulkEnd:
		n.receiveSeq(pr, m, now)
	case MsgHeartbeat:
		if m.Seq > pr.rx.maxSeen {
			pr.rx.maxSeen = m.Seq
		}
	case MsgAck:
		pr.stats.AcksIn++
		if m.Seq < n.nextSeq && (!pr.ackKnown || m.Seq > pr.acked) {
			pr.acked, pr.ackKnown = m.Seq, true
			n.trimQueue(now)
			n.releaseWaiters(now)
		}
	case MsgNack:
		pr.stats.NacksIn++
		n.repair(pr, m.Ranges)
	case MsgResyncRequest:
		n.log.Info("peer requests a resync", "peer", pr.name)
		n.startBulk(false)
	case MsgHello:
		// Known already; nothing to do.
	}
}

// challenge asks the sender of an unproven epoch to prove it, at most once
// per two ack intervals per node.
func (n *Node) challenge(id uint64, addr string, now time.Time) {
	c, ok := n.challenges[id]
	if ok && now.Sub(c.sent) < 2*n.opt.AckInterval {
		return
	}
	if !ok {
		if len(n.challenges) >= maxChallenges {
			clear(n.challenges)
		}
		c = &challenge{}
		n.challenges[id] = c
	}
	rand.Read(c.nonce[:])
	c.sent = now
	n.sendTo(addr, &Message{Type: MsgChallenge, Name: n.opt.NodeName, Nonce: c.nonce[:]})
}

// verifyResponse accepts a peer's epoch when it answered our current
// challenge: only a holder of the key living in that epoch can seal the
// fresh nonce under it.
func (n *Node) verifyResponse(h *Header, m *Message, addr string, now time.Time) {
	c, ok := n.challenges[h.Node]
	if !ok || subtle.ConstantTimeCompare(c.nonce[:], m.Nonce) != 1 {
		n.statsFor(h.Node, addr).Drops.Unverified++
		return
	}
	if NodeID(m.Name) != h.Node {
		n.statsFor(h.Node, addr).Drops.Malformed++
		n.log.Warn("peer's name does not match its node id", "name", m.Name, "from", addr)
		return
	}
	delete(n.challenges, h.Node)
	pr, ok := n.peers[h.Node]
	if !ok {
		pr = &peer{id: h.Node}
		if s, ok := n.anon[addr]; ok {
			pr.stats = *s
			delete(n.anon, addr)
		}
		n.peers[h.Node] = pr
	} else if pr.epoch != 0 {
		pr.retired = append(pr.retired, pr.epoch)
		if len(pr.retired) > maxRetired {
			pr.retired = pr.retired[1:]
		}
		delete(n.keys, [2]uint64{pr.id, pr.epoch})
	}
	if pr.name != "" && pr.name != m.Name {
		n.log.Warn("peer changed its name", "old", pr.name, "new", m.Name)
	}
	pr.name, pr.addr, pr.epoch, pr.seen = m.Name, addr, h.Epoch, now
	pr.window.reset(h.Counter)
	next := max(m.Seq, 1)
	pr.rx = rxState{next: next, buf: make(map[uint64]*Message), maxSeen: next - 1,
		ackedOut: next - 1, lastProgress: now}
	pr.acked, pr.ackKnown = 0, false
	n.log.Info("peer epoch accepted", "peer", pr.name, "addr", addr, "epoch", fmt.Sprintf("%016x", h.Epoch))
	pr.rx.resyncWanted = true
	n.requestResync(pr, now)
	n.sendAck(pr)
}

func (n *Node) requestResync(pr *peer, now time.Time) {
	pr.rx.lastResync = now
	n.sendTo(pr.addr, &Message{Type: MsgResyncRequest})
}

// receiveSeq takes a message of pr's stream: applies it when it is the
// next, buffers it when it is ahead, drops it when it was applied already.
func (n *Node) receiveSeq(pr *peer, m *Message, now time.Time) {
	rx := &pr.rx
	if m.Type == MsgBulkBegin {
		rx.resyncWanted = false
	}
	if m.Seq < rx.next {
		pr.stats.Drops.Duplicate++
		rx.ackDue = true
		return
	}
	if m.Seq > rx.maxSeen {
		rx.maxSeen = m.Seq
	}
	if m.Type == MsgBulkBegin {
		// A bulk supersedes everything sent before it: a gap below it
		// needs no repair (its BULK_END removes what the gap destroyed).
		rx.skipBelow = max(rx.skipBelow, m.Seq)
	} else if m.Seq >= rx.next+uint64(n.opt.ResendQueue) {
		pr.stats.Drops.Window++
		return
	}
	if _, dup := rx.buf[m.Seq]; dup {
		pr.stats.Drops.Duplicate++
		return
	}
	rx.buf[m.Seq] = m
	n.deliver(pr, now)
	if rx.maxSeen >= rx.next && rx.maxSeen > rx.nackedTo {
		n.sendNewNack(pr, now) // a new gap: ask at once
	}
	if rx.sinceAck >= ackEvery || rx.ackNow {
		rx.ackNow = false
		n.sendAck(pr)
	}
}

// deliver applies pr's buffered messages that are next in order.
func (n *Node) deliver(pr *peer, now time.Time) {
	rx := &pr.rx
	start := rx.next
	for {
		if m, ok := rx.buf[rx.next]; ok {
			delete(rx.buf, rx.next)
			n.apply(pr, m, now)
			rx.next++
			rx.sinceAck++
			continue
		}
		if rx.next >= rx.skipBelow {
			break
		}
		// Skip the gap up to the next buffered message or the bulk.
		to := rx.skipBelow
		for s := range rx.buf {
			if s > rx.next && s < to {
				to = s
			}
		}
		pr.stats.GapsSkipped++
		n.log.Debug("gap superseded by a bulk", "peer", pr.name, "from", rx.next, "to", to-1)
		rx.next = to
	}
	if rx.next != start {
		rx.lastProgress = now
	}
}

func (n *Node) apply(pr *peer, m *Message, now time.Time) {
	switch m.Type {
	case MsgData, MsgDataNow:
		for i := range m.Changes {
			n.external.Apply(pr.name, m.Changes[i], now)
		}
		pr.stats.FlowsIn += uint64(len(m.Changes))
		if n.opt.Applied != nil {
			n.opt.Applied(pr.name, m.Changes, m.Type == MsgDataNow)
		}
		if m.Type == MsgDataNow {
			pr.rx.ackNow = true
		}
	case MsgBulkBegin:
		pr.stats.BulksReceived++
		n.external.BeginBulk(pr.name, m.Bulk)
		n.log.Debug("bulk begins", "peer", pr.name, "bulk", m.Bulk)
	case MsgBulkEnd:
		removed := n.external.EndBulk(pr.name, m.Bulk)
		n.log.Info("bulk received", "peer", pr.name, "removed", removed)
	}
}

func (n *Node) sendAck(pr *peer) {
	rx := &pr.rx
	rx.sinceAck, rx.ackDue = 0, false
	rx.ackedOut = rx.next - 1
	pr.stats.AcksOut++
	n.sendTo(pr.addr, &Message{Type: MsgAck, Seq: rx.next - 1})
}

// missing returns the ranges of pr's stream not received, up to maxSeen.
func (rx *rxState) missing() []SeqRange {
	if rx.maxSeen < rx.next {
		return nil
	}
	have := make([]uint64, 0, len(rx.buf))
	for s := range rx.buf {
		have = append(have, s)
	}
	slices.Sort(have)
	var out []SeqRange
	from := rx.next
	for _, s := range have {
		if len(out) == MaxNackRanges {
			return out
		}
		if s > from {
			out = append(out, SeqRange{from, s - 1})
		}
		from = s + 1
	}
	if from <= rx.maxSeen && len(out) < MaxNackRanges {
		out = append(out, SeqRange{from, rx.maxSeen})
	}
	return out
}

// sendNewNack NACKs only what went missing since the last NACK.
func (n *Node) sendNewNack(pr *peer, now time.Time) {
	rx := &pr.rx
	var r []SeqRange
	for _, x := range rx.missing() {
		if x.Last <= rx.nackedTo {
			continue
		}
		x.First = max(x.First, rx.nackedTo+1)
		r = append(r, x)
	}
	rx.nackedTo = rx.maxSeen
	if len(r) == 0 {
		return
	}
	pr.stats.NacksOut++
	n.sendTo(pr.addr, &Message{Type: MsgNack, Ranges: r})
}

func (n *Node) sendNack(pr *peer, now time.Time) {
	rx := &pr.rx
	r := rx.missing()
	if len(r) == 0 {
		return
	}
	rx.lastNack = now
	rx.nackedTo = rx.maxSeen
	pr.stats.NacksOut++
	n.sendTo(pr.addr, &Message{Type: MsgNack, Ranges: r})
}

// ackTick runs every ack interval: acknowledgements, repeated NACKs,
// resync requests for gaps that do not heal, peer liveness.
func (n *Node) ackTick() {
	now := n.now()
	stuck := max(40*n.opt.AckInterval, 3*n.opt.HeartbeatInterval)
	for _, pr := range n.peers {
		rx := &pr.rx
		if rx.buf == nil {
			continue
		}
		if rx.next-1 > rx.ackedOut || rx.ackDue {
			n.sendAck(pr)
		}
		if rx.maxSeen >= rx.next {
			if now.Sub(rx.lastNack) >= nackRetry*n.opt.AckInterval {
				n.sendNack(pr, now)
			}
			if now.Sub(rx.lastProgress) > stuck && now.Sub(rx.lastResync) > stuck {
				pr.stats.FullResyncs++
				n.log.Info("gap does not heal: requesting a resync", "peer", pr.name, "at", rx.next)
				n.requestResync(pr, now)
			}
		} else {
			rx.lastProgress = now
		}
		if rx.resyncWanted && now.Sub(rx.lastResync) > n.opt.HeartbeatInterval {
			n.requestResync(pr, now)
		}
	}
	n.releaseWaiters(now) // peers may have gone down
}

// sendChanges sends the internal cache's pending changes.
func (n *Node) sendChanges() {
	for range 64 { // bounded per call; Changed fires again for the rest
		chs := n.internal.TakeChanges(1024)
		if len(chs) == 0 {
			return
		}
		n.sendBatch(chs)
	}
}

// bodyBudget is the room for changes in one DATA datagram.
func (n *Node) bodyBudget() int {
	return n.opt.MTU - HeaderLen - TagLen - 2*binary.MaxVarintLen64
}

// sendBatch packs changes into DATA messages up to the MTU and sends them.
func (n *Node) sendBatch(chs []cache.Change) {
	budget := n.bodyBudget()
	start, size := 0, 0
	for i := range chs {
		l := len(AppendChange(n.scratch[:0], &chs[i]))
		if i > start && size+l > budget {
			n.sendData(chs[start:i])
			start, size = i, 0
		}
		size += l
	}
	if start < len(chs) {
		n.sendData(chs[start:])
	}
}

func (n *Node) sendData(chs []cache.Change) {
	keys := make([]flow.Key, len(chs))
	for i := range chs {
		keys[i] = chs[i].Flow.Key
	}
	seq := n.nextSeq
	n.nextSeq++
	n.queue.push(queued{seq: seq, typ: MsgData, keys: keys, sent: n.now()})
	n.sendAll(&Message{Type: MsgData, Seq: seq, Changes: chs})
}

func (n *Node) sendMarker(t MsgType, bulk uint64) uint64 {
	seq := n.nextSeq
	n.nextSeq++
	n.queue.push(queued{seq: seq, typ: t, bulk: bulk, sent: n.now()})
	n.sendAll(&Message{Type: t, Seq: seq, Bulk: bulk})
	return seq
}

// repair answers a NACK: each lost message still queued is sent again to
// the peer under its sequence number, carrying the current state of the
// flows it carried (a flow destroyed since goes as a removal). A lost
// message no longer queued cannot be repaired: a bulk follows, unless one
// began after it.
func (n *Node) repair(pr *peer, ranges []SeqRange) {
	now := n.now()
	budget := maxResendBurst
	lost := false
	for _, r := range ranges {
		last := min(r.Last, n.nextSeq-1)
		first := r.First
		if pr.ackKnown && first <= pr.acked {
			first = pr.acked + 1 // a stale NACK, overtaken by an ACK
		}
		// The queue holds every sequence number from its oldest on.
		if qFirst := n.queue.first(n.nextSeq); first < qFirst {
			if min(last, qFirst-1) >= n.lastBegin {
				lost = true
				n.log.Debug("NACKed messages no longer queued", "from", first, "oldest queued", qFirst, "last bulk", n.lastBegin)
			}
			first = qFirst
		}
		for s := first; s <= last && budget > 0; s++ {
			e := n.queue.get(s)
			if e == nil {
				continue
			}
			if e.resentTo == pr.id && now.Sub(e.resentAt) < n.opt.AckInterval {
				continue // a duplicate NACK: the resend is on its way
			}
			e.resentTo, e.resentAt = pr.id, now
			budget--
			pr.stats.Resends++
			n.resend(pr, e)
		}
	}
	if lost {
		pr.stats.FullResyncs++
		n.log.Info("peer lost messages no longer queued: bulk follows", "peer", pr.name)
		n.startBulk(true)
	}
}

func (n *Node) resend(pr *peer, e *queued) {
	if e.typ == MsgDataNow {
		n.sendTo(pr.addr, &Message{Type: MsgDataNow, Seq: e.seq, Changes: e.chs})
		return
	}
	if e.typ != MsgData {
		n.sendTo(pr.addr, &Message{Type: e.typ, Seq: e.seq, Bulk: e.bulk})
		return
	}
	chs := make([]cache.Change, len(e.keys))
	for i, k := range e.keys {
		chs[i] = n.internal.Current(k)
	}
	n.sendTo(pr.addr, &Message{Type: MsgData, Seq: e.seq, Changes: chs})
}

// trimQueue forgets the messages every live peer acknowledged.
func (n *Node) trimQueue(now time.Time) {
	upTo := uint64(0)
	found := false
	for _, pr := range n.peers {
		if !pr.ackKnown || now.Sub(pr.seen) >= n.opt.PeerTimeout {
			continue
		}
		if !found || pr.acked < upTo {
			upTo = pr.acked
		}
		found = true
	}
	if found {
		n.queue.trim(upTo)
	}
}

// startBulk begins a bulk transfer of the internal cache. A bulk in
// progress continues, unless restart is set.
func (n *Node) startBulk(restart bool) {
	if n.bulk != nil && !restart {
		return
	}
	keys := n.internal.Keys()
	id := randUint64()
	begin := n.sendMarker(MsgBulkBegin, id)
	n.lastBegin = begin
	n.bulk = &bulkState{id: id, begin: begin, keys: keys}
	for _, pr := range n.peers {
		pr.stats.BulksSent++
	}
	n.log.Info("bulk transfer begins", "flows", len(keys))
}

// bulkStep sends the next datagrams of the bulk in progress, each change
// with the flow's state of now (flows destroyed since the bulk began are
// skipped: their removal went out as a change).
func (n *Node) bulkStep() {
	b := n.bulk
	if b == nil {
		return
	}
	budget := n.bodyBudget()
	for range n.opt.BulkBurst {
		var chs []cache.Change
		size := 0
		for b.pos < len(b.keys) {
			ch := n.internal.Current(b.keys[b.pos])
			if ch.Deleted {
				b.pos++
				continue
			}
			l := len(AppendChange(n.scratch[:0], &ch))
			if len(chs) > 0 && size+l > budget {
				break
			}
			chs = append(chs, ch)
			size += l
			b.pos++
		}
		if len(chs) > 0 {
			n.sendData(chs)
		}
		if b.pos >= len(b.keys) {
			n.sendMarker(MsgBulkEnd, b.id)
			n.bulk = nil
			n.log.Info("bulk transfer sent", "flows", len(b.keys))
			return
		}
	}
}

// seal encodes and seals m as this node's next datagram into n.out.
func (n *Node) seal(m *Message) []byte {
	n.scratch = AppendBody(n.scratch[:0], m)
	n.counter++
	h := Header{Type: m.Type, Node: n.id, Epoch: n.epoch, Counter: n.counter}
	n.out = seal(n.out[:0], h, n.scratch, n.aead)
	return n.out
}

// sendAll sends m to every peer.
func (n *Node) sendAll(m *Message) {
	b := n.seal(m)
	if len(b) > MaxDatagram {
		n.log.Error("message too large, not sent", "type", m.Type, "bytes", len(b))
		return
	}
	if err := n.tr.Send(b); err != nil {
		n.log.Debug("send failed", "type", m.Type, "err", err)
	}
	for _, pr := range n.peers {
		pr.stats.MsgsOut++
		pr.stats.BytesOut += uint64(len(b))
	}
}

// sendTo sends m to one transport address.
func (n *Node) sendTo(addr string, m *Message) {
	b := n.seal(m)
	if len(b) > MaxDatagram {
		n.log.Error("message too large, not sent", "type", m.Type, "bytes", len(b))
		return
	}
	if err := n.tr.SendTo(addr, b); err != nil {
		n.log.Debug("send failed", "type", m.Type, "to", addr, "err", err)
	}
	for _, pr := range n.peers {
		if pr.addr == addr {
			pr.stats.MsgsOut++
			pr.stats.BytesOut += uint64(len(b))
			return
		}
	}
}

// queued is a sent stream message kept for repair.
type queued struct {
	seq  uint64
	typ  MsgType
	keys []flow.Key     // DATA: the flows it carried
	bulk uint64         // BULK_BEGIN/END: the bulk id
	chs  []cache.Change // DATA_NOW: the changes, resent as they were (the flows may not be in the internal cache yet)
	sent time.Time

	resentTo uint64 // the peer it was last resent to, and when
	resentAt time.Time
}

// resendQueue holds the last max stream messages, in sequence order
// without holes (a ring).
type resendQueue struct {
	max   int
	items []queued
	head  int // index of the oldest
	n     int
}

func (q *resendQueue) push(e queued) {
	if q.items == nil {
		q.items = make([]queued, q.max)
	}
	if q.n == q.max {
		q.items[q.head] = queued{}
		q.head = (q.head + 1) % q.max
		q.n--
	}
	q.items[(q.head+q.n)%q.max] = e
	q.n++
}

func (q *resendQueue) get(seq uint64) *queued {
	if q.n == 0 {
		return nil
	}
	first := q.items[q.head].seq
	if seq < first || seq-first >= uint64(q.n) {
		return nil
	}
	return &q.items[(q.head+int(seq-first))%q.max]
}

// first returns the oldest queued sequence number, next when none is.
func (q *resendQueue) first(next uint64) uint64 {
	if q.n == 0 {
		return next
	}
	return q.items[q.head].seq
}

// trim drops the messages up to seq.
func (q *resendQueue) trim(seq uint64) {
	for q.n > 0 && q.items[q.head].seq <= seq {
		q.items[q.head] = queued{}
		q.head = (q.head + 1) % q.max
		q.n--
	}
}

// Len returns how many messages are queued.
func (q *resendQueue) Len() int { return q.n }
