package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"

	"github.com/ctsyncd/ctsyncd/flow"
)

// EventType is the kind of a conntrack event.
type EventType uint8

// Event kinds.
const (
	EventNew     EventType = 1 // IPCTNL_MSG_CT_NEW with NLM_F_CREATE
	EventUpdate  EventType = 2 // IPCTNL_MSG_CT_NEW without it
	EventDestroy EventType = 3 // IPCTNL_MSG_CT_DELETE
)

func (t EventType) String() string {
	switch t {
	case EventNew:
		return "NEW"
	case EventUpdate:
		return "UPDATE"
	case EventDestroy:
		return "DESTROY"
	}
	return "UNKNOWN"
}

// Event is one conntrack event. PortID is the netlink port id of the socket
// whose request caused the change, 0 when the kernel itself did (traffic,
// timeouts): events caused by ctsyncd's own writer are recognized by it.
type Event struct {
	Type   EventType
	PortID uint32
	Flow   flow.Flow
	// Counters holds a DESTROY event's packets, bytes and times (what
	// the kernel reports: see flow.Counters); zero for other events.
	Counters flow.Counters
}

// Multicast groups of ctnetlink as a legacy bitmask: group g is bit g-1
// (enum nfnetlink_groups).
const (
	groupNew     = 0x1 // NFNLGRP_CONNTRACK_NEW (1)
	groupUpdate  = 0x2 // NFNLGRP_CONNTRACK_UPDATE (2)
	groupDestroy = 0x4 // NFNLGRP_CONNTRACK_DESTROY (3)
)

// ListenOptions configure a Listener.
type ListenOptions struct {
	// ReadBuffer is the socket's receive buffer in bytes (SO_RCVBUFFORCE).
	// A 100k-flow flush overruns 8 MiB; 64 MiB holds. 0 means 64 MiB.
	ReadBuffer int
	// NetNS, when non-zero, is a file descriptor of the network namespace
	// to listen in (tests); 0 means the calling thread's namespace.
	NetNS int
	// Expectations subscribes to expectation events (NEW and DESTROY) on the
	// same socket, so that they keep their order with the flows' events.
	// They go to the handler's ExpectEvent (see ExpectHandler).
	Expectations bool
}

// DefaultReadBuffer is the event socket's default receive buffer.
const DefaultReadBuffer = 64 << 20

// Listener receives conntrack events.
type Listener struct {
	sock *rawSocket

	// closeOnce guards closing sock: Close may race with Run's own close.
	closeOnce sync.Once
	closeErr  error

	events   atomic.Uint64
	overruns atomic.Uint64
	bad      atomic.Uint64
	own      atomic.Uint64

	// kernelFilter is whether the BPF filter of IgnorePorts is attached.
	kernelFilter atomic.Bool

	// ignore holds the port ids whose events are dropped undecoded.
	ignore atomic.Pointer[[]uint32]
}

// IgnorePorts makes the listener drop, without decoding them, the events
// caused by the sockets with these netlink port ids: the daemon's own
// writes (a commit's million NEW events cost nothing to skip). Safe to call
// while Run runs.
//
// The kernel drops them too, before queueing them on the socket, through a
// classic BPF filter on the event socket (SO_ATTACH_FILTER): a commit's
// events then cost neither a copy to user space nor room in the receive
// buffer. The check here stays as the fallback where attaching fails.
func (l *Listener) IgnorePorts(ports []uint32) {
	p := slices.Clone(ports)
	l.ignore.Store(&p)
	l.kernelFilter.Store(l.sock.conn.SetBPF(ownPortsFilter(p)) == nil)
}

// PauseNew leaves (pause true) or joins again (false) the group of NEW
// events; UPDATE and DESTROY events keep coming. The kernel builds a
// conntrack event only when some socket listens to its group, and
// building it is a large part of a create's cost: while no socket listens
// to NEW events, a failover commit's creates take about half the time
// (200k creates on this machine: 0.6 s without a NEW listener, 1.0-1.2 s
// with one, even one whose BPF filter drops them all). Safe to call while
// Run runs.
func (l *Listener) PauseNew(pause bool) error {
	const nfnlgrpConntrackNew = 1
	var err error
	op := "join NEW events"
	if pause {
		op = "leave NEW events"
		err = l.sock.conn.LeaveGroup(nfnlgrpConntrackNew)
	} else {
		err = l.sock.conn.JoinGroup(nfnlgrpConntrackNew)
	}
	if err != nil {
		return &OpError{Op: op, Err: err}
	}
	return nil
}

// KernelFiltered reports whether the kernel drops the ignored ports' events
// (the BPF filter is attached): they are then not counted in Stats.Own.
func (l *Listener) KernelFiltered() bool { return l.kernelFilter.Load() }

// ownPortsFilter is a classic BPF program for a netlink socket that drops
// every message whose header's port id (nlmsg_pid, at offset 12) is one of
// ports and accepts the rest. Conntrack events come one to a datagram, so
// the first header is the event's. BPF loads words big-endian; the header
// is in host order, so the constants are the ports' host-order bytes read
// big-endian. At most 255 ports.
func ownPortsFilter(ports []uint32) []bpf.RawInstruction {
	ports = ports[:min(len(ports), 255)]
	prog := []bpf.Instruction{bpf.LoadAbsolute{Off: 12, Size: 4}}
	for i, p := range ports {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], p)
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(b[:]), SkipTrue: uint8(len(ports) - i)})
	}
	prog = append(prog, bpf.RetConstant{Val: 0xffffffff}, bpf.RetConstant{Val: 0})
	raw, err := bpf.Assemble(prog)
	if err != nil {
		panic("kernel: own-ports filter: " + err.Error()) // the program is fixed; only a bug gets here
	}
	return raw
}

// Listen subscribes to conntrack NEW, UPDATE and DESTROY events. Subscribe
// before dumping the table, so that no change falls between the two.
func Listen(opts ListenOptions) (*Listener, error) {
	groups := uint32(groupNew | groupUpdate | groupDestroy)
	if opts.Expectations {
		groups |= groupExpNew | groupExpDestroy
	}
	s, err := dialNetfilter(opts.NetNS, groups)
	if err != nil {
		return nil, err
	}
	n := opts.ReadBuffer
	if n <= 0 {
		n = DefaultReadBuffer
	}
	if err := s.setReadBuffer(n); err != nil {
		s.close()
		return nil, err
	}
	return &Listener{sock: s}, nil
}

// ReadBuffer returns the effective receive buffer size in bytes.
func (l *Listener) ReadBuffer() int { return l.sock.readBuffer() }

// Handler receives events from a Listener. Its methods are called from the
// Run goroutine one at a time and must not block for long: while they run,
// the socket fills. ev is reused after Event returns.
type Handler interface {
	Event(ev *Event)
	// Overrun is called when the kernel dropped events for this socket
	// (ENOBUFS), and again once the socket's queue has drained after that:
	// the kernel reports ENOBUFS once and then drops silently until the
	// queue is empty (NETLINK_S_CONGESTED), so only a table read begun after
	// the drain is sure to see every change. The handler must re-read the
	// table; reading goes on. It must not block.
	Overrun()
}

// ExpectEvent is one expectation event: EventNew or EventDestroy.
type ExpectEvent struct {
	Type   EventType
	PortID uint32
	Expect flow.Expect
}

// ExpectHandler is implemented by a Handler that wants expectation events
// (ListenOptions.Expectations). ExpectEvent is called from the Run
// goroutine like Event; ev is reused after it returns. A Handler without
// it has expectation events counted and dropped.
type ExpectHandler interface {
	ExpectEvent(ev *ExpectEvent)
}

// ListenerStats are counters of a Listener.
type ListenerStats struct {
	Events    uint64 // events decoded and handed on
	Overruns  uint64 // ENOBUFS seen
	Malformed uint64 // messages that did not decode
	Own       uint64 // events of ignored ports (our own writes), skipped
}

// Stats returns the listener's counters.
func (l *Listener) Stats() ListenerStats {
	return ListenerStats{Events: l.events.Load(), Overruns: l.overruns.Load(), Malformed: l.bad.Load(), Own: l.own.Load()}
}

// Run reads events until ctx is done or the socket fails, and then closes the
// listener. It returns nil when ctx ended it.
func (l *Listener) Run(ctx context.Context, h Handler) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()

	var ev Event
	var xev ExpectEvent
	xh, _ := h.(ExpectHandler)
	handle := func(m netlink.Message) error {
		if pid := m.Header.PID; pid != 0 {
			if ign := l.ignore.Load(); ign != nil && slices.Contains(*ign, pid) {
				l.own.Add(1)
				return nil
			}
		}
		if m.Header.Type>>8 == subsysCTNetlinkExp {
			t, ok := expectEventType(m.Header)
			if !ok || !decodeExpect(m, &xev.Expect) {
				l.bad.Add(1)
				return nil
			}
			l.events.Add(1)
			if xh != nil {
				xev.Type = t
				xev.PortID = m.Header.PID
				xh.ExpectEvent(&xev)
			}
			return nil
		}
		t, ok := eventType(m.Header)
		if !ok || !decodeFlow(m, &ev.Flow) {
			l.bad.Add(1)
			return nil
		}
		ev.Type = t
		ev.PortID = m.Header.PID
		if t == EventDestroy {
			decodeCounters(m, &ev.Counters)
		} else {
			ev.Counters = flow.Counters{}
		}
		l.events.Add(1)
		h.Event(&ev)
		return nil
	}
	batch := newBatchReader()
	congested := false
	idle := func() {
		if congested {
			congested = false
			h.Overrun()
		}
	}
	for {
		err := l.sock.recvBatch(batch, handle, idle)
		switch {
		case err == nil:
		case errors.Is(err, ErrOverrun):
			l.overruns.Add(1)
			congested = true
			h.Overrun()
		case errors.Is(err, ErrMalformed):
			// A datagram that does not parse may have carried events:
			// count it and re-read the table, as for an overrun.
			l.bad.Add(1)
			h.Overrun()
		case ctx.Err() != nil:
			return nil
		default:
			return fmt.Errorf("conntrack events: %w", err)
		}
	}
}

// Close closes the socket; a blocked Run returns. Safe to call twice.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.sock.close() })
	return l.closeErr
}
