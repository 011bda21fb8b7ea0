package sync

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
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

	// Bounds on what peers (and strangers) can make a node hold or send.
	// Messages beyond them are refused and counted (PeerStats.Drops).

	// MaxDatagramIn is the largest datagram accepted; default 4 × MTU
	// (a resend of a message whose flows grew may exceed the sender's
	// MTU). Peers must use an MTU of at most a quarter of it.
	MaxDatagramIn int
	// MaxBufferBytes bounds the memory (estimated) held per peer for its
	// messages received ahead of a gap; default 16 MiB.
	MaxBufferBytes int64
	// MaxPeers bounds the peers whose epochs are accepted (and the origins
	// of the external cache); default 64.
	MaxPeers int
	// MaxFlowsPerOrigin bounds the flows the external cache keeps per
	// peer; default 2097152 (2 Mi). New flows beyond it are refused.
	MaxFlowsPerOrigin int
	// ResendRate bounds the bytes per second resent to one peer on its
	// NACKs (a burst of a quarter second's worth is allowed); default
	// 8 MiB/s.
	ResendRate int
	// MinBulkInterval is the least time between two bulks started on a
	// peer's request; a request within it waits. Default HeartbeatInterval.
	MinBulkInterval time.Duration
	// Policy, when set, decides which of a peer's flows enter the external
	// cache (and may sanitize them); nil admits every flow.
	Policy Policy
	// Applied, if set, is called with the changes of each DATA or
	// DATA_NOW message from origin that the policy admitted and the
	// external cache took (inject mode writes them into the kernel). It
	// runs on the node's goroutine with the node locked: it must not call
	// the Node. urgent is set for DATA_NOW, which is acknowledged as soon
	// as Applied returns.
	Applied func(origin string, chs []cache.Change, urgent bool)
}

// Policy decides what a peer may put into the external cache (and from
// there into this node's kernel). Admit may modify f to sanitize it; false
// refuses it (and removes what the origin had of it). It is called from
// Run's goroutine.
type Policy interface {
	Admit(origin string, f *flow.Flow) bool
}

func (o *Options) setDefaults() error {
	if err := ValidateName(o.NodeName); err != nil {
		return fmt.Errorf("sync: node name: %w", err)
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
	if o.MaxDatagramIn <= 0 {
		o.MaxDatagramIn = min(4*o.MTU, MaxDatagram)
	}
	if o.MaxDatagramIn < o.MTU || o.MaxDatagramIn > MaxDatagram {
		return fmt.Errorf("sync: largest datagram accepted %d out of range %d..%d", o.MaxDatagramIn, o.MTU, MaxDatagram)
	}
	if o.MaxBufferBytes <= 0 {
		o.MaxBufferBytes = 16 << 20
	}
	if o.MaxPeers <= 0 {
		o.MaxPeers = 64
	}
	if o.MaxFlowsPerOrigin <= 0 {
		o.MaxFlowsPerOrigin = 2 << 20
	}
	if o.ResendRate <= 0 {
		o.ResendRate = 8 << 20
	}
	if o.MinBulkInterval <= 0 {
		o.MinBulkInterval = o.HeartbeatInterval
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
	// NotForUs counts datagrams addressed to another node or to an earlier
	// epoch of this one: a capture replayed across receivers, or (normal)
	// replies between two other nodes that went to every peer (multicast
	// with three nodes or more, or a sender whose address the transport
	// does not know as a peer).
	NotForUs uint64 `json:"not_for_us"`
	// RateLimited counts datagrams dropped by a rate limit before they were
	// answered or cost a key derivation.
	RateLimited uint64 `json:"rate_limited"`
	// Overflow counts messages refused because a bound on buffered bytes,
	// peers or flows was reached.
	Overflow uint64 `json:"overflow"`
	// TooLarge counts datagrams over Options.MaxDatagramIn.
	TooLarge uint64 `json:"too_large"`
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
	// ExpectsIn counts expectation changes applied; ExpectsRefused those
	// of helpers sync.expectation_helpers does not accept.
	ExpectsIn      uint64 `json:"expects_in"`
	ExpectsRefused uint64 `json:"expects_refused,omitempty"`

	AcksIn   uint64 `json:"acks_in"`
	AcksOut  uint64 `json:"acks_out"`
	NacksIn  uint64 `json:"nacks_in"`
	NacksOut uint64 `json:"nacks_out"`
	Resends  uint64 `json:"resends"` // messages resent to the peer on its NACKs
	// ResendsRefused counts NACKs (or their tails) not answered because
	// the peer's resend budget (Options.ResendRate) was spent.
	ResendsRefused uint64 `json:"resends_refused"`
	// PolicyRefused counts the peer's flows refused by the receive policy.
	PolicyRefused uint64 `json:"policy_refused"`

	// ResyncRequestsIn counts the peer's requests for a bulk.
	ResyncRequestsIn uint64 `json:"resync_requests_in"`
	BulksSent        uint64 `json:"bulks_sent"`
	BulksReceived    uint64 `json:"bulks_received"`
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

	// iexp, sendExpect and acceptExpect are set by SetExpectations
	// before Run.
	iexp                     *cache.InternalExpect
	sendExpect, acceptExpect func(helper string) bool
	now                      func() time.Time

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
	anon       map[string]*PeerStats     // senders not identified, by address
	keys       map[[2]uint64]cipher.AEAD // keys of epochs not accepted yet
	challenges map[[2]uint64]*challenge  // by (node id, epoch)
	bulk       *bulkState
	lastBegin  uint64      // sequence number of the last BULK_BEGIN sent
	waiters    []nowWaiter // SendNow calls waiting for acknowledgements, in sequence order (urgent.go)
	scratch    []byte
	// admScratch and takeScratch are apply's per-change verdicts, reused;
	// changeScratch is sendChanges' batch; freeChanges the changes of an
	// applied DATA message, for the next one to decode into.
	admScratch, takeScratch    []bool
	changeScratch, freeChanges []cache.Change
	stopped                    bool // Run returned: datagrams still delivered are dropped
	// kick wakes Run when a datagram handled on the transport's goroutine
	// began a bulk or a repair while Run's bulk ticker is off
	// (bulkTicking).
	kick         chan struct{}
	bulkTicking  bool
	out          []byte
	lastTwinWarn time.Time   // a datagram from another node with our name was logged
	info         *NodeInfo   // what this node announces (NODE_INFO); nil: nothing yet
	lastInfo     time.Time   // when NODE_INFO was last sent
	dg           digestState // drift detection (digest.go)

	derive       bucket              // key derivations for epochs not accepted
	hsGlobal     bucket              // CHALLENGEs and RESPONSEs sent
	hsSource     *limiter[string]    // ... per source address
	hsChallenger *limiter[[2]uint64] // RESPONSEs per challenger epoch
	lastBulk     time.Time           // when the last bulk began
	bulkPending  bool                // a requested bulk waits for MinBulkInterval
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
		opt:          opt,
		log:          opt.Logger.With("node", opt.NodeName),
		id:           NodeID(opt.NodeName),
		internal:     internal,
		external:     external,
		tr:           tr,
		now:          time.Now,
		bulkReq:      make(chan struct{}, 1),
		resyncReq:    make(chan struct{}, 1),
		kick:         make(chan struct{}, 1),
		nextSeq:      1,
		queue:        resendQueue{max: opt.ResendQueue},
		peers:        make(map[uint64]*peer),
		anon:         make(map[string]*PeerStats),
		keys:         make(map[[2]uint64]cipher.AEAD),
		challenges:   make(map[[2]uint64]*challenge),
		hsSource:     newLimiter[string](handshakeRate, handshakeBurst, maxLimited),
		hsChallenger: newLimiter[[2]uint64](handshakeRate, handshakeBurst, maxLimited),
	}
	external.SetLimits(opt.MaxFlowsPerOrigin, opt.MaxPeers)
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
// transport's channel closes (ErrClosed). Run does its work on the calling
// goroutine and starts none, except that a Deliverer transport's datagrams
// are handled on its receive goroutine (under the same lock). It does not
// close the transport. A Node runs once.
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
	n.sendAll(&message{Type: MsgHello, Name: n.opt.NodeName})
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
	if d, ok := n.tr.(Deliverer); ok {
		// Datagrams are handled on the transport's receive goroutine, under
		// mu like everything else; the channel only tells that it closed.
		d.Deliver(func(p Packet) {
			n.mu.Lock()
			defer n.mu.Unlock()
			if n.stopped {
				return
			}
			n.handle(p)
			if !n.bulkTicking && (n.bulk != nil || n.repairing()) {
				select { // a bulk or repair began: Run starts its ticker
				case n.kick <- struct{}{}:
				default:
				}
			}
		})
		defer func() {
			n.mu.Lock()
			n.stopped = true
			n.mu.Unlock()
			d.Deliver(nil)
		}()
	}
	changed := n.internal.Changed()
	n.mu.Lock()
	expChanged := n.expectChanged() // nil without expectations: never ready
	n.mu.Unlock()
	digestC, stopDigests := n.digestTicker() // nil when off: never ready
	defer stopDigests()
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
		case <-expChanged:
			n.mu.Lock()
			n.sendExpectChanges()
			n.mu.Unlock()
		case <-ack.C:
			n.mu.Lock()
			n.ackTick()
			n.mu.Unlock()
		case <-hb.C:
			n.mu.Lock()
			n.sendAll(&message{Type: MsgHeartbeat, Seq: n.nextSeq - 1})
			if n.now().Sub(n.lastInfo) >= nodeInfoEvery {
				n.sendInfo()
			}
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
			n.repairStep()
			n.mu.Unlock()
		case <-digestC:
			n.mu.Lock()
			n.sendDigest()
			n.mu.Unlock()
		case <-n.kick:
		}
		n.mu.Lock()
		active := n.bulk != nil || n.repairing()
		switch {
		case active && bulkTick == nil:
			bulkTick = time.NewTicker(time.Millisecond)
			bulkC = bulkTick.C
		case !active && bulkTick != nil:
			bulkTick.Stop()
			bulkTick, bulkC = nil, nil
		}
		n.bulkTicking = bulkTick != nil
		n.mu.Unlock()
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
		s.Name, s.Addr, s.Epoch = pr.name, pr.lastFrom, pr.epoch
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
