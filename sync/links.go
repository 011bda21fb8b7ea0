package sync

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Links joins several transports, one per dedicated sync link, into one
// Transport: redundant sync links. Every datagram is sent on every link, so
// that a cut cable or a dead NIC loses nothing and needs no failover: the
// copies that arrive on the other links carry on, and the node's replay
// window drops the second copy of a datagram before it is decrypted, so
// nothing is applied twice. The cost is the sync traffic once per link.
//
// The links' transports must list the same peers in the same order (peer j
// on link 0 is peer j on every link). A peer is named by its address on link
// 0 (the canonical address): Packets reports datagrams from a peer's address
// on any link under its canonical address, and SendTo of a canonical
// address sends to that peer on every link.
//
// Concurrency: every method is safe for concurrent use. NewLinks starts one
// goroutine per link that forwards its datagrams; Close stops the links,
// waits for those goroutines and closes the Packets channel.
type Links struct {
	links []*link
	canon map[string]int // any link's peer address → peer index
	addrs [][]string     // addrs[i][j]: peer j's address on link i
	ch    chan Packet
	wg    sync.WaitGroup
	once  sync.Once
	errs  []error
	alive time.Duration
}

type link struct {
	name string
	tr   Transport

	packetsIn, bytesIn, packetsOut, bytesOut, sendErrors atomic.Uint64
	lastIn                                               atomic.Int64 // Unix ns of the last datagram received
}

// LinkStatus is the state of one sync link, as `ctsyncctl status` shows it.
type LinkStatus struct {
	Name       string    `json:"name"`
	Up         bool      `json:"up"` // a datagram arrived within the peer timeout
	LastIn     time.Time `json:"last_in,omitzero"`
	PacketsIn  uint64    `json:"packets_in"`
	BytesIn    uint64    `json:"bytes_in"`
	PacketsOut uint64    `json:"packets_out"`
	BytesOut   uint64    `json:"bytes_out"`
	SendErrors uint64    `json:"send_errors"`
}

// ErrLinkPeers is returned by NewLinks when the links do not list the same
// number of peers.
var ErrLinkPeers = errors.New("sync links must list the same peers, in the same order")

// NewLinks joins transports; names name the links (their interfaces) in
// Status. alive is how recent a datagram must be for a link to count as up
// (the peer timeout). It takes ownership of the transports.
func NewLinks(names []string, trs []Transport, alive time.Duration) (*Links, error) {
	if len(trs) == 0 || len(names) != len(trs) {
		return nil, fmt.Errorf("sync links: %d names for %d transports", len(names), len(trs))
	}
	l := &Links{canon: map[string]int{}, ch: make(chan Packet, packetQueue), alive: alive}
	for i, tr := range trs {
		ps := tr.Peers()
		if i > 0 && len(ps) != len(l.addrs[0]) {
			return nil, fmt.Errorf("link %s has %d peers, link %s %d: %w", names[i], len(ps), names[0], len(l.addrs[0]), ErrLinkPeers)
		}
		for j, p := range ps {
			if k, dup := l.canon[p]; dup && k != j {
				return nil, fmt.Errorf("peer address %s stands for two peers: %w", p, ErrLinkPeers)
			}
			l.canon[p] = j
		}
		l.addrs = append(l.addrs, ps)
		l.links = append(l.links, &link{name: names[i], tr: tr})
	}
	for _, ln := range l.links {
		l.wg.Add(1)
		go l.forward(ln)
	}
	go func() {
		l.wg.Wait()
		close(l.ch)
	}()
	return l, nil
}

// forward moves one link's datagrams to the joint channel, renamed to the
// peer's canonical address. It ends when the link's transport closes.
func (l *Links) forward(ln *link) {
	defer l.wg.Done()
	for p := range ln.tr.Packets() {
		ln.packetsIn.Add(1)
		ln.bytesIn.Add(uint64(len(p.Data)))
		ln.lastIn.Store(time.Now().UnixNano())
		if j, ok := l.canon[p.From]; ok {
			p.From = l.addrs[0][j]
		}
		select {
		case l.ch <- p:
		default: // the node is behind: drop, like a full socket buffer
		}
	}
}

func (ln *link) sent(b []byte, err error) error {
	if err != nil {
		ln.sendErrors.Add(1)
		return err
	}
	ln.packetsOut.Add(1)
	ln.bytesOut.Add(uint64(len(b)))
	return nil
}

// Send sends b to every peer on every link. It fails only when no link
// took it.
func (l *Links) Send(b []byte) error {
	var errs []error
	for _, ln := range l.links {
		if err := ln.sent(b, ln.tr.Send(b)); err != nil {
			errs = append(errs, fmt.Errorf("link %s: %w", ln.name, err))
		}
	}
	if len(errs) == len(l.links) {
		return errors.Join(errs...)
	}
	return nil
}

// SendTo sends b to one peer, named by its canonical address, on every link.
func (l *Links) SendTo(peer string, b []byte) error {
	j, ok := l.canon[peer]
	if !ok {
		return fmt.Errorf("sync links: send to %q: %w", peer, ErrUnknownPeer)
	}
	var errs []error
	for i, ln := range l.links {
		if err := ln.sent(b, ln.tr.SendTo(l.addrs[i][j], b)); err != nil {
			errs = append(errs, fmt.Errorf("link %s: %w", ln.name, err))
		}
	}
	if len(errs) == len(l.links) {
		return errors.Join(errs...)
	}
	return nil
}

// Packets returns the datagrams of every link.
func (l *Links) Packets() <-chan Packet { return l.ch }

// Peers returns the peers' canonical addresses.
func (l *Links) Peers() []string { return slices.Clone(l.addrs[0]) }

// Status returns the state of each link, in configuration order.
func (l *Links) Status() []LinkStatus {
	now := time.Now()
	out := make([]LinkStatus, len(l.links))
	for i, ln := range l.links {
		s := LinkStatus{Name: ln.name, PacketsIn: ln.packetsIn.Load(), BytesIn: ln.bytesIn.Load(),
			PacketsOut: ln.packetsOut.Load(), BytesOut: ln.bytesOut.Load(), SendErrors: ln.sendErrors.Load()}
		if t := ln.lastIn.Load(); t != 0 {
			s.LastIn = time.Unix(0, t)
			s.Up = now.Sub(s.LastIn) < l.alive
		}
		out[i] = s
	}
	return out
}

// Close closes every link and waits until their datagrams stop. Safe to
// call twice.
func (l *Links) Close() error {
	l.once.Do(func() {
		for _, ln := range l.links {
			if err := ln.tr.Close(); err != nil {
				l.errs = append(l.errs, fmt.Errorf("link %s: %w", ln.name, err))
			}
		}
		l.wg.Wait()
	})
	return errors.Join(l.errs...)
}
