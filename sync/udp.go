package sync

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// setBuffers asks for large socket buffers; with CAP_NET_ADMIN it goes past
// net.core.rmem_max / wmem_max (SO_RCVBUFFORCE / SO_SNDBUFFORCE), as
// conntrackd does.
func setBuffers(c syscall.Conn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpReadBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpReadBuffer)
		}
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, udpWriteBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, udpWriteBuffer)
		}
	})
}

// listenGroup opens the multicast transport's socket by hand: Go's
// ListenPacket binds a multicast address as the wildcard address with
// SO_REUSEADDR, which lets a socket of any user share the port. This one
// is bound to the group address itself, on the interface only
// (SO_BINDTODEVICE: only datagrams that arrived on it reach the socket, and
// what it sends leaves by it whatever the routing table says), without
// SO_REUSEADDR or SO_REUSEPORT: no other socket can bind the port on the
// wildcard or the group address.
func listenGroup(group netip.AddrPort, ifi *net.Interface) (net.PacketConn, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr
	if group.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(group.Port()), Addr: group.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(group.Port()), Addr: group.Addr().As16(), ZoneId: uint32(ifi.Index)}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
	}
	if err := unix.BindToDevice(fd, ifi.Name); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind to device %s: %w", ifi.Name, err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %v: %w", group, err)
	}
	f := os.NewFile(uintptr(fd), "multicast "+group.String())
	defer f.Close() // FilePacketConn dups it
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Socket buffer sizes asked for (see setBuffers).
const (
	udpReadBuffer  = 8 << 20
	udpWriteBuffer = 4 << 20
	packetQueue    = 4096 // received datagrams waiting for the node
)

// UDPOptions configure a unicast UDP transport.
type UDPOptions struct {
	// Listen is the local address, e.g. "10.200.0.1:3780" or "[fd00::1]:3780".
	Listen string
	// Peers are the peers' addresses; Send sends to each. Datagrams from
	// other IP addresses are dropped before any decoding.
	Peers []string
	// Interface, when set, binds the socket to that interface
	// (SO_BINDTODEVICE): only datagrams that arrived on it are read, and
	// what is sent leaves by it.
	Interface string
}

// listenUDP opens a UDP socket on laddr, bound to the interface ifname
// when it is set.
func listenUDP(laddr netip.AddrPort, ifname string) (*net.UDPConn, error) {
	var lc net.ListenConfig
	if ifname != "" {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), ifname) })
			if serr != nil {
				serr = fmt.Errorf("bind to device %s: %w", ifname, serr)
			}
			return errors.Join(err, serr)
		}
	}
	c, err := lc.ListenPacket(context.Background(), "udp", laddr.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// UDP is a unicast UDP transport: Send sends one datagram to each peer.
type UDP struct {
	conn  *net.UDPConn
	peers []netip.AddrPort
	allow map[netip.Addr]bool
	rx    receiver
}

var _ Transport = (*UDP)(nil)

// NewUDP opens a unicast UDP transport. Its receive goroutine runs until
// Close.
func NewUDP(opt UDPOptions) (*UDP, error) {
	laddr, err := netip.ParseAddrPort(opt.Listen)
	if err != nil {
		return nil, fmt.Errorf("udp: listen address %q: %w", opt.Listen, err)
	}
	t := &UDP{allow: make(map[netip.Addr]bool)}
	for _, p := range opt.Peers {
		ap, err := netip.ParseAddrPort(p)
		if err != nil {
			return nil, fmt.Errorf("udp: peer address %q: %w", p, err)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		t.peers = append(t.peers, ap)
		t.allow[ap.Addr()] = true
	}
	conn, err := listenUDP(laddr, opt.Interface)
	if err != nil {
		return nil, fmt.Errorf("udp: listen: %w", err)
	}
	setBuffers(conn)
	t.conn = conn
	t.rx.start(func(buf []byte) (int, netip.AddrPort, bool, error) {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return 0, from, false, err
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		return n, from, t.allow[from.Addr()], nil
	})
	return t, nil
}

// LocalAddr returns the bound address (useful with port 0).
func (t *UDP) LocalAddr() netip.AddrPort {
	return t.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Send sends b to every peer; it returns the first error.
func (t *UDP) Send(b []byte) error {
	var first error
	for _, p := range t.peers {
		if err := t.write(b, p); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// SendTo sends b to one address ("ip:port").
func (t *UDP) SendTo(peer string, b []byte) error {
	ap, err := netip.ParseAddrPort(peer)
	if err != nil {
		return fmt.Errorf("udp: send to %q: %w", peer, ErrUnknownPeer)
	}
	return t.write(b, ap)
}

func (t *UDP) write(b []byte, to netip.AddrPort) error {
	if len(b) > MaxDatagram {
		return fmt.Errorf("udp: send: %d bytes: %w", len(b), ErrTooLarge)
	}
	if _, err := t.conn.WriteToUDPAddrPort(b, to); err != nil {
		if errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("udp: send: %w", ErrClosed)
		}
		return fmt.Errorf("udp: send to %v: %w", to, err)
	}
	return nil
}

// Packets returns the channel of received datagrams.
func (t *UDP) Packets() <-chan Packet { return t.rx.ch }

// Deliver implements Deliverer.
func (t *UDP) Deliver(fn func(Packet)) { t.rx.deliver(fn) }

// Peers returns the configured peers.
func (t *UDP) Peers() []string {
	out := make([]string, len(t.peers))
	for i, p := range t.peers {
		out[i] = p.String()
	}
	return out
}

// Close closes the socket, waits for the receive goroutine and closes the
// Packets channel. Safe to call twice.
func (t *UDP) Close() error {
	return t.rx.close(t.conn.Close)
}

// receiver runs the receive goroutine of a socket transport.
type receiver struct {
	ch       chan Packet
	fn       atomic.Pointer[func(Packet)] // Deliver's function, nil: the channel
	from     netip.AddrPort               // the last sender, and its name
	fromName string
	wg       sync.WaitGroup
	once     sync.Once
	closeErr error
}

// deliver makes the receive goroutine call fn for each datagram (nil:
// send it on the channel again).
func (r *receiver) deliver(fn func(Packet)) {
	if fn == nil {
		r.fn.Store(nil)
		return
	}
	r.fn.Store(&fn)
}

// name returns from as a Packet's From, formatting it only when the sender
// changed.
func (r *receiver) name(from netip.AddrPort) string {
	if from != r.from || r.fromName == "" {
		r.from, r.fromName = from, from.String()
	}
	return r.fromName
}

// start runs read in a goroutine until it fails; ok false drops a datagram.
func (r *receiver) start(read func([]byte) (n int, from netip.AddrPort, ok bool, err error)) {
	r.ch = make(chan Packet, packetQueue)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(r.ch)
		buf := make([]byte, MaxDatagram+1)
		for {
			n, from, ok, err := read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // e.g. ECONNREFUSED from an earlier send: keep reading
			}
			if !ok || n > MaxDatagram {
				continue
			}
			p := Packet{From: r.name(from), Data: slices.Clone(buf[:n])}
			if fn := r.fn.Load(); fn != nil {
				(*fn)(p)
				continue
			}
			select {
			case r.ch <- p:
			default: // the node is behind: drop, like a full socket buffer
			}
		}
	}()
}

func (r *receiver) close(closeConn func() error) error {
	r.once.Do(func() {
		r.closeErr = closeConn()
		r.wg.Wait()
	})
	return r.closeErr
}

// MulticastOptions configure a multicast UDP transport.
type MulticastOptions struct {
	// Group is the multicast group and port, e.g. "225.0.0.50:3780" or
	// "[ff02::3780]:3780".
	Group string
	// Interface is the dedicated sync link. The group is joined there,
	// datagrams are sent there, and only datagrams that arrived on it are
	// accepted.
	Interface string
}

// Multicast is a multicast UDP transport: Send sends once to the group;
// SendTo goes by unicast from the same socket. The socket is bound to the
// group address on the interface (SO_BINDTODEVICE), without SO_REUSEADDR:
// it receives only the group's datagrams from the sync link, and no other
// socket can bind the group's port. A Node's replies go to the group too
// (a datagram's source is no transport peer), so there is no unicast for
// a local socket bound to this node's address and port to take.
type Multicast struct {
	group netip.AddrPort
	ifi   *net.Interface
	conn  net.PacketConn
	p4    *ipv4.PacketConn
	p6    *ipv6.PacketConn
	rx    receiver
}

var _ Transport = (*Multicast)(nil)

// NewMulticast joins the group on the interface. Its receive goroutine runs
// until Close.
func NewMulticast(opt MulticastOptions) (*Multicast, error) {
	group, err := netip.ParseAddrPort(opt.Group)
	if err != nil {
		return nil, fmt.Errorf("multicast: group %q: %w", opt.Group, err)
	}
	group = netip.AddrPortFrom(group.Addr().Unmap(), group.Port())
	if !group.Addr().IsMulticast() {
		return nil, fmt.Errorf("multicast: %v is not a multicast address", group.Addr())
	}
	ifi, err := net.InterfaceByName(opt.Interface)
	if err != nil {
		return nil, fmt.Errorf("multicast: interface %q: %w", opt.Interface, err)
	}
	t := &Multicast{group: group, ifi: ifi}
	gaddr := &net.UDPAddr{IP: group.Addr().AsSlice()}
	if group.Addr().Is4() {
		t.conn, err = listenGroup(group, ifi)
		if err != nil {
			return nil, fmt.Errorf("multicast: listen: %w", err)
		}
		p := ipv4.NewPacketConn(t.conn)
		err = errors.Join(
			p.JoinGroup(ifi, gaddr),
			p.SetMulticastInterface(ifi),
			p.SetMulticastTTL(1),
			p.SetMulticastLoopback(false),
			p.SetControlMessage(ipv4.FlagInterface, true),
		)
		t.p4 = p
	} else {
		t.conn, err = listenGroup(group, ifi)
		if err != nil {
			return nil, fmt.Errorf("multicast: listen: %w", err)
		}
		p := ipv6.NewPacketConn(t.conn)
		err = errors.Join(
			p.JoinGroup(ifi, gaddr),
			p.SetMulticastInterface(ifi),
			p.SetMulticastHopLimit(1),
			p.SetMulticastLoopback(false),
			p.SetControlMessage(ipv6.FlagInterface, true),
		)
		t.p6 = p
	}
	if err != nil {
		t.conn.Close()
		return nil, fmt.Errorf("multicast: join %v on %s: %w", group.Addr(), ifi.Name, err)
	}
	if sc, ok := t.conn.(syscall.Conn); ok {
		setBuffers(sc)
	}
	t.rx.start(t.read)
	return t, nil
}

func (t *Multicast) read(buf []byte) (int, netip.AddrPort, bool, error) {
	var (
		n     int
		src   net.Addr
		ifidx int
		err   error
	)
	if t.p4 != nil {
		var cm *ipv4.ControlMessage
		n, cm, src, err = t.p4.ReadFrom(buf)
		if cm != nil {
			ifidx = cm.IfIndex
		}
	} else {
		var cm *ipv6.ControlMessage
		n, cm, src, err = t.p6.ReadFrom(buf)
		if cm != nil {
			ifidx = cm.IfIndex
		}
	}
	if err != nil {
		return 0, netip.AddrPort{}, false, err
	}
	ua, _ := src.(*net.UDPAddr)
	if ua == nil {
		return 0, netip.AddrPort{}, false, nil
	}
	from := ua.AddrPort()
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	return n, from, ifidx == t.ifi.Index, nil
}

// Send sends b once to the group.
func (t *Multicast) Send(b []byte) error {
	return t.write(b, t.group)
}

// SendTo sends b by unicast to one address ("ip:port") on the interface.
func (t *Multicast) SendTo(peer string, b []byte) error {
	ap, err := netip.ParseAddrPort(peer)
	if err != nil {
		return fmt.Errorf("multicast: send to %q: %w", peer, ErrUnknownPeer)
	}
	return t.write(b, ap)
}

func (t *Multicast) write(b []byte, to netip.AddrPort) error {
	if len(b) > MaxDatagram {
		return fmt.Errorf("multicast: send: %d bytes: %w", len(b), ErrTooLarge)
	}
	dst := net.UDPAddrFromAddrPort(to)
	var err error
	if t.p4 != nil {
		_, err = t.p4.WriteTo(b, nil, dst)
	} else {
		_, err = t.p6.WriteTo(b, nil, dst)
	}
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("multicast: send: %w", ErrClosed)
		}
		return fmt.Errorf("multicast: send to %v: %w", to, err)
	}
	return nil
}

// Packets returns the channel of received datagrams.
func (t *Multicast) Packets() <-chan Packet { return t.rx.ch }

// Deliver implements Deliverer.
func (t *Multicast) Deliver(fn func(Packet)) { t.rx.deliver(fn) }

// Peers returns the group address: Send reaches every member at once.
func (t *Multicast) Peers() []string { return []string{t.group.String()} }

// Close leaves the group, closes the socket, waits for the receive
// goroutine and closes the Packets channel. Safe to call twice.
func (t *Multicast) Close() error {
	return t.rx.close(t.conn.Close)
}
