package sync

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// MemNetwork is an in-memory network of Transports for tests: every
// endpoint's Send reaches every other endpoint. Loss, duplication,
// reordering, per-link drops and partitions are configurable; the random
// choices come from one seeded source, so a run with the same seed and the
// same sequence of sends makes the same choices.
type MemNetwork struct {
	// mu guards every field below.
	mu        sync.Mutex
	rnd       *rand.Rand
	endpoints map[string]*MemTransport
	loss      float64 // probability a datagram is lost
	dup       float64 // probability a datagram is delivered twice
	reorder   float64 // probability a datagram is held back
	delay     time.Duration
	down      map[[2]string]bool // directed links that drop everything
	filter    func(from, to string, b []byte) bool
	sent      uint64
	dropped   uint64
}

// NewMemNetwork returns an empty network whose random choices are seeded by
// seed.
func NewMemNetwork(seed uint64) *MemNetwork {
	return &MemNetwork{
		rnd:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		endpoints: make(map[string]*MemTransport),
		down:      make(map[[2]string]bool),
		delay:     2 * time.Millisecond,
	}
}

// SetFaults sets the probabilities (0..1) that a datagram is lost,
// duplicated and reordered (held back for a few milliseconds, so that later
// ones overtake it).
func (n *MemNetwork) SetFaults(loss, dup, reorder float64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.loss, n.dup, n.reorder = loss, dup, reorder
}

// SetLink brings the directed link from → to down (up = false) or up.
func (n *MemNetwork) SetLink(from, to string, up bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if up {
		delete(n.down, [2]string{from, to})
	} else {
		n.down[[2]string{from, to}] = true
	}
}

// Partition cuts both directions between a and b (up = false) or heals it.
func (n *MemNetwork) Partition(a, b string, up bool) {
	n.SetLink(a, b, up)
	n.SetLink(b, a, up)
}

// SetFilter installs a function that sees every datagram before delivery;
// returning false drops it. nil removes the filter. It is called with the
// network's lock held: it must not call the network.
func (n *MemNetwork) SetFilter(f func(from, to string, b []byte) bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.filter = f
}

// Counts returns how many datagrams were sent and dropped.
func (n *MemNetwork) Counts() (sent, dropped uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sent, n.dropped
}

// Inject delivers a datagram to an endpoint as if from sent it, bypassing
// faults (tests: replays, forgeries).
func (n *MemNetwork) Inject(from, to string, b []byte) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	ep, ok := n.endpoints[to]
	if !ok {
		return fmt.Errorf("inject to %s: %w", to, ErrUnknownPeer)
	}
	ep.deliverLocked(Packet{From: from, Data: slices.Clone(b)})
	return nil
}

// Endpoint returns a new Transport at address addr, replacing (closing) an
// endpoint with the same address: a node restarting.
func (n *MemNetwork) Endpoint(addr string) *MemTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if old, ok := n.endpoints[addr]; ok {
		old.closeLocked()
	}
	t := &MemTransport{net: n, addr: addr, ch: make(chan Packet, 8192)}
	n.endpoints[addr] = t
	return t
}

// send delivers b from one endpoint to others (to == "": every other).
func (n *MemNetwork) send(from *MemTransport, to string, b []byte) error {
	if len(b) > MaxDatagram {
		return fmt.Errorf("send: %d bytes: %w", len(b), ErrTooLarge)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if from.closed {
		return fmt.Errorf("send: %w", ErrClosed)
	}
	var dsts []*MemTransport
	if to != "" {
		ep, ok := n.endpoints[to]
		if !ok {
			return nil // like UDP: nobody listens there
		}
		dsts = append(dsts, ep)
	} else {
		for _, addr := range slices.Sorted(mapKeys(n.endpoints)) {
			if addr != from.addr {
				dsts = append(dsts, n.endpoints[addr])
			}
		}
	}
	for _, ep := range dsts {
		n.sent++
		if n.down[[2]string{from.addr, ep.addr}] || n.rnd.Float64() < n.loss ||
			(n.filter != nil && !n.filter(from.addr, ep.addr, b)) {
			n.dropped++
			continue
		}
		copies := 1
		if n.rnd.Float64() < n.dup {
			copies = 2
		}
		for range copies {
			p := Packet{From: from.addr, Data: slices.Clone(b)}
			if n.rnd.Float64() < n.reorder {
				d := n.delay + time.Duration(n.rnd.IntN(int(n.delay)+1))
				time.AfterFunc(d, func() {
					n.mu.Lock()
					defer n.mu.Unlock()
					ep.deliverLocked(p)
				})
				continue
			}
			ep.deliverLocked(p)
		}
	}
	return nil
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// MemTransport is one endpoint of a MemNetwork.
type MemTransport struct {
	net  *MemNetwork
	addr string
	ch   chan Packet
	// closed is guarded by net.mu.
	closed bool
}

var _ Transport = (*MemTransport)(nil)

// deliverLocked queues p; a full queue drops it, like a socket buffer.
func (t *MemTransport) deliverLocked(p Packet) {
	if t.closed {
		return
	}
	select {
	case t.ch <- p:
	default:
		t.net.dropped++
	}
}

func (t *MemTransport) closeLocked() {
	if !t.closed {
		t.closed = true
		close(t.ch)
	}
}

// Addr returns the endpoint's address.
func (t *MemTransport) Addr() string { return t.addr }

// Send sends b to every other endpoint.
func (t *MemTransport) Send(b []byte) error { return t.net.send(t, "", b) }

// SendTo sends b to the endpoint at peer.
func (t *MemTransport) SendTo(peer string, b []byte) error { return t.net.send(t, peer, b) }

// Packets returns the endpoint's receive channel.
func (t *MemTransport) Packets() <-chan Packet { return t.ch }

// Peers returns the other endpoints' addresses.
func (t *MemTransport) Peers() []string {
	t.net.mu.Lock()
	defer t.net.mu.Unlock()
	var out []string
	for addr := range t.net.endpoints {
		if addr != t.addr {
			out = append(out, addr)
		}
	}
	slices.Sort(out)
	return out
}

// Close detaches the endpoint and closes its channel. Safe to call twice.
func (t *MemTransport) Close() error {
	t.net.mu.Lock()
	defer t.net.mu.Unlock()
	t.closeLocked()
	if t.net.endpoints[t.addr] == t {
		delete(t.net.endpoints, t.addr)
	}
	return nil
}
