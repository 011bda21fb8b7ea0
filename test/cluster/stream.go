package cluster

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// StreamInterval is how often a stream's senders send.
const StreamInterval = 10 * time.Millisecond

// Direction names one direction of a stream.
type Direction int

// Directions.
const (
	ClientToServer Direction = iota
	ServerToClient
)

func (d Direction) String() string {
	if d == ClientToServer {
		return "client→server"
	}
	return "server→client"
}

// flowMeter records arrivals in one direction.
type flowMeter struct {
	mu       sync.Mutex
	received int
	last     time.Time
	maxGap   time.Duration
	gapAt    time.Time // when the longest gap ended
	err      error
}

func (m *flowMeter) arrive(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.last.IsZero() {
		if g := now.Sub(m.last); g > m.maxGap {
			m.maxGap, m.gapAt = g, now
		}
	}
	m.last = now
	m.received++
}

func (m *flowMeter) fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil {
		m.err = err
	}
}

// DirStats are a stream's numbers in one direction.
type DirStats struct {
	Received int
	// Last is when the last message arrived.
	Last time.Time
	// MaxStall is the longest time between two arrivals so far; Stall is
	// the time since the last arrival.
	MaxStall, Stall time.Duration
	// Err is the receiver's error (a reset, a timeout), if any.
	Err error
}

func (m *flowMeter) stats(now time.Time) DirStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := DirStats{Received: m.received, Last: m.last, MaxStall: m.maxGap, Err: m.err}
	if !m.last.IsZero() {
		s.Stall = now.Sub(m.last)
		s.MaxStall = max(s.MaxStall, s.Stall)
	}
	return s
}

// Stream is traffic through the firewalls whose interruptions it measures:
// a TCP connection on which both ends send a small message every
// StreamInterval, or a UDP flow driven by the server (the client sends one
// datagram to open it, then only receives: a client-driven UDP flow would
// be re-admitted as new by the standby and survive without any sync).
type Stream struct {
	Name   string
	meters [2]flowMeter // by Direction
	dirs   []Direction  // the directions that carry traffic
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed sync.Once
	conns  []io.Closer
}

// Stats returns the numbers of direction d.
func (s *Stream) Stats(d Direction) DirStats { return s.meters[d].stats(time.Now()) }

// Directions returns the directions the stream carries.
func (s *Stream) Directions() []Direction { return s.dirs }

// WaitFlowing waits until every direction has received at least one new
// message after now, or fails t after WaitTimeout.
func (s *Stream) WaitFlowing(t testing.TB) {
	t.Helper()
	start := time.Now()
	for {
		ok := true
		for _, d := range s.Directions() {
			if st := s.Stats(d); st.Err != nil {
				t.Fatalf("%s %s: %v", s.Name, d, st.Err)
			} else if !st.Last.After(start) {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Since(start) > WaitTimeout {
			t.Fatalf("%s: no traffic within %v", s.Name, WaitTimeout)
		}
		time.Sleep(StreamInterval)
	}
}

// InFlight is how long after a firewall died messages may still be
// counted as arrivals although they were on their way before (read from
// the socket a little later); Survived ignores them.
const InFlight = 50 * time.Millisecond

// Survived waits up to within for traffic in every direction after since
// (the moment a firewall died, as KillFirewall returns it), ignoring
// arrivals in the first InFlight. It reports whether traffic came, and the
// longest stall any direction has had (the failover's, when it is the
// longest).
func (s *Stream) Survived(since time.Time, within time.Duration) (bool, time.Duration) {
	deadline := since.Add(within)
	since = since.Add(InFlight)
	for {
		ok := true
		var stall time.Duration
		for _, d := range s.Directions() {
			st := s.Stats(d)
			if st.Err != nil || !st.Last.After(since) {
				ok = false
			}
			stall = max(stall, st.MaxStall)
		}
		if ok {
			return true, stall
		}
		if time.Now().After(deadline) {
			return false, stall
		}
		time.Sleep(StreamInterval)
	}
}

// Close stops the stream. Safe to call twice.
func (s *Stream) Close() {
	s.closed.Do(func() {
		s.cancel()
		for _, c := range s.conns {
			c.Close()
		}
		s.wg.Wait()
	})
}

func (s *Stream) goRun(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// sendLoop writes an 8-byte counter every StreamInterval.
func (s *Stream) sendLoop(ctx context.Context, w io.Writer, m *flowMeter) {
	tick := time.NewTicker(StreamInterval)
	defer tick.Stop()
	var buf [8]byte
	for n := uint64(0); ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		binary.BigEndian.PutUint64(buf[:], n)
		if _, err := w.Write(buf[:]); err != nil {
			if ctx.Err() == nil {
				m.fail(fmt.Errorf("send: %w", err))
			}
			return
		}
	}
}

// recvLoop counts arrivals of 8-byte messages on a TCP stream.
func (s *Stream) recvLoop(ctx context.Context, r io.Reader, m *flowMeter) {
	var buf [8]byte
	for {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			if ctx.Err() == nil {
				m.fail(fmt.Errorf("receive: %w", err))
			}
			return
		}
		m.arrive(time.Now())
	}
}

// TCPStream opens a TCP connection from the client to the server over
// IPv4 or IPv6 (v6) through the firewalls and starts sending both ways.
// The stream is closed in t.Cleanup.
func (tp *Topology) TCPStream(t testing.TB, v6 bool) *Stream {
	t.Helper()
	network, srv := "tcp4", ServerV4
	if v6 {
		network, srv = "tcp6", ServerV6
	}
	var ln net.Listener
	tp.Server.Do(t, func() {
		var err error
		ln, err = net.Listen(network, net.JoinHostPort(srv, "0"))
		if err != nil {
			t.Fatalf("listen in server: %v", err)
		}
	})
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Stream{Name: network + " " + addr, cancel: cancel, conns: []io.Closer{ln},
		dirs: []Direction{ClientToServer, ServerToClient}}
	t.Cleanup(s.Close)

	accepted := make(chan net.Conn, 1)
	s.goRun(func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	})
	var c net.Conn
	tp.Client.Do(t, func() {
		var err error
		d := net.Dialer{Timeout: 10 * time.Second}
		c, err = d.DialContext(ctx, network, addr)
		if err != nil {
			t.Fatalf("dial %s from client: %v", addr, err)
		}
	})
	var sc net.Conn
	select {
	case sc = <-accepted:
	case <-time.After(10 * time.Second):
	}
	if sc == nil {
		c.Close()
		t.Fatalf("server did not accept %s", addr)
	}
	s.conns = append(s.conns, c, sc)
	s.goRun(func() { s.sendLoop(ctx, c, &s.meters[ClientToServer]) })
	s.goRun(func() { s.recvLoop(ctx, sc, &s.meters[ClientToServer]) })
	s.goRun(func() { s.sendLoop(ctx, sc, &s.meters[ServerToClient]) })
	s.goRun(func() { s.recvLoop(ctx, c, &s.meters[ServerToClient]) })
	return s
}

// UDPStream opens a server-driven UDP flow: the client sends one datagram
// to the server, which then sends a datagram every StreamInterval back to
// the client's address (through the conntrack entry the client's datagram
// created). Only ServerToClient carries traffic. The stream is closed in
// t.Cleanup.
func (tp *Topology) UDPStream(t testing.TB, v6 bool) *Stream {
	t.Helper()
	network, srv := "udp4", ServerV4
	if v6 {
		network, srv = "udp6", ServerV6
	}
	var sconn *net.UDPConn
	tp.Server.Do(t, func() {
		pc, err := net.ListenPacket(network, net.JoinHostPort(srv, "0"))
		if err != nil {
			t.Fatalf("listen in server: %v", err)
		}
		sconn = pc.(*net.UDPConn)
	})
	addr := sconn.LocalAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Stream{Name: network + " " + addr, cancel: cancel, conns: []io.Closer{sconn},
		dirs: []Direction{ServerToClient}}
	t.Cleanup(s.Close)

	var cconn net.Conn
	tp.Client.Do(t, func() {
		var err error
		cconn, err = net.Dial(network, addr)
		if err != nil {
			t.Fatalf("dial %s from client: %v", addr, err)
		}
	})
	s.conns = append(s.conns, cconn)
	// The client's hello, repeated until the server has heard it.
	peer := make(chan net.Addr, 1)
	s.goRun(func() {
		buf := make([]byte, 64)
		for {
			n, from, err := sconn.ReadFrom(buf)
			if err != nil {
				return
			}
			if n == 5 && string(buf[:5]) == "hello" {
				select {
				case peer <- from:
				default:
				}
				return
			}
		}
	})
	var to net.Addr
	deadline := time.Now().Add(10 * time.Second)
	for to == nil {
		if _, err := cconn.Write([]byte("hello")); err != nil {
			t.Fatalf("udp hello: %v", err)
		}
		select {
		case to = <-peer:
		case <-time.After(200 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatalf("server never heard the client on %s", addr)
			}
		}
	}
	s.goRun(func() { s.sendLoop(ctx, packetWriter{sconn, to}, &s.meters[ServerToClient]) })
	s.goRun(func() {
		m := &s.meters[ServerToClient]
		buf := make([]byte, 64)
		for {
			if _, err := cconn.Read(buf); err != nil {
				if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
					// ICMP errors (port unreachable) surface here
					// transiently; keep reading.
					time.Sleep(StreamInterval)
					continue
				}
				return
			}
			m.arrive(time.Now())
		}
	})
	return s
}

type packetWriter struct {
	c  *net.UDPConn
	to net.Addr
}

func (p packetWriter) Write(b []byte) (int, error) {
	n, err := p.c.WriteTo(b, p.to)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		// A transient send error (e.g. no route while the VIP moves) is
		// not the end of the stream.
		return n, nil
	}
	return n, err
}
