package sync

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// GossipOptions configure a gossip transport.
type GossipOptions struct {
	// NodeName is the member name; the node's sync name.
	NodeName string
	// Listen is the data channel's address, e.g. "10.200.0.1:3780".
	// memberlist binds the same IP, port+1 (TCP and UDP).
	Listen string
	// Seeds are other members' data addresses ("ip:port", as in Listen);
	// their gossip port is derived the same way. The transport keeps
	// trying to join them while it knows no other member.
	Seeds []string
	// Interface, when set, binds the data channel's socket to that
	// interface (SO_BINDTODEVICE); memberlist's own sockets are not.
	Interface string
	// Key, when set, encrypts memberlist's own gossip with a key derived
	// from it (the data channel is sealed by the Node anyway).
	Key *[KeyLen]byte
	// Logger receives memberlist's logs at debug level; nil discards them.
	Logger *slog.Logger
}

// Gossip is a transport for clusters of N nodes: memberlist provides
// membership and failure detection, and the flow state travels as
// unicast UDP datagrams on the data channel to every live member.
// memberlist's own broadcast queue carries no flows (it is far too small
// for conntrack churn).
type Gossip struct {
	self  string
	conn  *net.UDPConn
	ml    *memberlist.Memberlist
	seeds []string // gossip addresses of the seeds
	rx    receiver

	// mu guards members.
	mu      sync.Mutex
	members map[string]netip.AddrPort // other live members' data addresses, by name

	stop     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
}

var _ Transport = (*Gossip)(nil)

// gossipAddr is the memberlist address that belongs to a data address.
func gossipAddr(ap netip.AddrPort) string {
	return net.JoinHostPort(ap.Addr().String(), strconv.Itoa(int(ap.Port())+1))
}

// NewGossip opens the data channel, starts memberlist and joins the seeds
// (in the background, until one answers). Close stops all of it.
func NewGossip(opt GossipOptions) (*Gossip, error) {
	laddr, err := netip.ParseAddrPort(opt.Listen)
	if err != nil {
		return nil, fmt.Errorf("gossip: listen address %q: %w", opt.Listen, err)
	}
	if laddr.Port() == 0 || laddr.Port() == 65535 {
		return nil, fmt.Errorf("gossip: listen port must be 1..65534 (memberlist takes port+1)")
	}
	g := &Gossip{self: opt.NodeName, members: make(map[string]netip.AddrPort), stop: make(chan struct{})}
	for _, s := range opt.Seeds {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("gossip: seed address %q: %w", s, err)
		}
		g.seeds = append(g.seeds, gossipAddr(ap))
	}

	conn, err := listenUDP(laddr, opt.Interface)
	if err != nil {
		return nil, fmt.Errorf("gossip: listen: %w", err)
	}
	setBuffers(conn)
	g.conn = conn

	cfg := memberlist.DefaultLANConfig()
	cfg.Name = opt.NodeName
	cfg.BindAddr = laddr.Addr().String()
	cfg.BindPort = int(laddr.Port()) + 1
	if !laddr.Addr().IsUnspecified() {
		cfg.AdvertiseAddr = cfg.BindAddr
		cfg.AdvertisePort = cfg.BindPort
	}
	cfg.Delegate = gossipDelegate{port: laddr.Port()}
	cfg.Events = gossipEvents{g: g}
	logger := opt.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = slog.NewLogLogger(logger.Handler(), slog.LevelDebug)
	if opt.Key != nil {
		k, err := hkdf.Key(sha256.New, opt.Key[:], nil, "ctsyncd gossip key v1", 32)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("gossip: key: %w", err)
		}
		cfg.SecretKey = k
	}
	ml, err := memberlist.Create(cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("gossip: memberlist: %w", err)
	}
	g.ml = ml
	g.rx.start(func(buf []byte) (int, netip.AddrPort, bool, error) {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return 0, from, false, err
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		return n, from, g.isMember(from.Addr()), nil
	})
	if len(g.seeds) > 0 {
		g.wg.Add(1)
		go g.joinLoop(logger)
	}
	return g, nil
}

// joinLoop joins the seeds, again whenever no other member is known.
func (g *Gossip) joinLoop(log *slog.Logger) {
	defer g.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if g.ml.NumMembers() <= 1 {
			if _, err := g.ml.Join(g.seeds); err != nil {
				log.Debug("gossip: join failed; retrying", "seeds", g.seeds, "err", err)
			}
		}
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
	}
}

func (g *Gossip) isMember(a netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, ap := range g.members {
		if ap.Addr() == a {
			return true
		}
	}
	return false
}

func (g *Gossip) setMember(n *memberlist.Node, alive bool) {
	if n.Name == g.self {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !alive {
		delete(g.members, n.Name)
		return
	}
	ip, ok := netip.AddrFromSlice(n.Addr)
	if !ok || len(n.Meta) < 2 {
		return
	}
	g.members[n.Name] = netip.AddrPortFrom(ip.Unmap(), binary.BigEndian.Uint16(n.Meta))
}

// Send sends b to every other live member's data address.
func (g *Gossip) Send(b []byte) error {
	if len(b) > MaxDatagram {
		return fmt.Errorf("gossip: send: %d bytes: %w", len(b), ErrTooLarge)
	}
	g.mu.Lock()
	dsts := make([]netip.AddrPort, 0, len(g.members))
	for _, ap := range g.members {
		dsts = append(dsts, ap)
	}
	g.mu.Unlock()
	var first error
	for _, d := range dsts {
		if _, err := g.conn.WriteToUDPAddrPort(b, d); err != nil && first == nil {
			first = fmt.Errorf("gossip: send to %v: %w", d, err)
		}
	}
	return first
}

// SendTo sends b to one data address ("ip:port").
func (g *Gossip) SendTo(peer string, b []byte) error {
	ap, err := netip.ParseAddrPort(peer)
	if err != nil {
		return fmt.Errorf("gossip: send to %q: %w", peer, ErrUnknownPeer)
	}
	if len(b) > MaxDatagram {
		return fmt.Errorf("gossip: send: %d bytes: %w", len(b), ErrTooLarge)
	}
	if _, err := g.conn.WriteToUDPAddrPort(b, ap); err != nil {
		return fmt.Errorf("gossip: send to %v: %w", ap, err)
	}
	return nil
}

// Packets returns the channel of received datagrams.
func (g *Gossip) Packets() <-chan Packet { return g.rx.ch }

// Deliver implements Deliverer.
func (g *Gossip) Deliver(fn func(Packet)) { g.rx.deliver(fn) }

// Peers returns the data addresses of the other live members, sorted.
func (g *Gossip) Peers() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]string, 0, len(g.members))
	for _, ap := range g.members {
		out = append(out, ap.String())
	}
	slices.Sort(out)
	return out
}

// Members returns the names of the other live members, sorted.
func (g *Gossip) Members() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]string, 0, len(g.members))
	for name := range g.members {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// Close leaves the cluster (briefly waiting for the news to spread), stops
// memberlist and the join loop, closes the data channel and its Packets
// channel. Safe to call twice.
func (g *Gossip) Close() error {
	g.stopOnce.Do(func() {
		close(g.stop)
		g.wg.Wait()
		_ = g.ml.Leave(500 * time.Millisecond)
		_ = g.ml.Shutdown()
	})
	return g.rx.close(g.conn.Close)
}

// gossipDelegate publishes the data port as node metadata; memberlist's
// message and state hooks carry nothing.
type gossipDelegate struct{ port uint16 }

func (d gossipDelegate) NodeMeta(limit int) []byte {
	return binary.BigEndian.AppendUint16(nil, d.port)
}
func (gossipDelegate) NotifyMsg([]byte)                           {}
func (gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (gossipDelegate) LocalState(join bool) []byte                { return nil }
func (gossipDelegate) MergeRemoteState(buf []byte, join bool)     {}

// gossipEvents keeps the member table; memberlist calls it from its own
// goroutines, and it never blocks.
type gossipEvents struct{ g *Gossip }

func (e gossipEvents) NotifyJoin(n *memberlist.Node)   { e.g.setMember(n, true) }
func (e gossipEvents) NotifyLeave(n *memberlist.Node)  { e.g.setMember(n, false) }
func (e gossipEvents) NotifyUpdate(n *memberlist.Node) { e.g.setMember(n, true) }
