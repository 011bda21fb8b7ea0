package kernel

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
)

// This file is the request/response side of the conntrack table used by
// the public library (package conntrack) and `ctsyncctl ct`: one entry at a
// time (get, create, update, delete), flushes, filtered dumps and the
// statistics. Batched writes stay with Writer; events with Listener.

// TableOptions configure OpenTable.
type TableOptions struct {
	// NetNS, when non-zero, is a file descriptor of the network namespace
	// whose table to use; 0 means the calling thread's namespace.
	NetNS int
}

// Table sends single requests to the conntrack table over one netlink
// socket. Its methods may be called from any goroutine; requests run one
// at a time (Dump opens a socket of its own and runs concurrently). Close
// interrupts a running request.
type Table struct {
	netns int

	// mu serializes requests on s (sequence numbers, the receive buffer).
	mu  sync.Mutex
	s   *rawSocket
	seq uint32
	buf []byte

	closeOnce sync.Once
	closeErr  error
}

// OpenTable opens a socket for requests to the conntrack table.
func OpenTable(opts TableOptions) (*Table, error) {
	s, err := dialNetfilter(opts.NetNS, 0)
	if err != nil {
		return nil, err
	}
	_ = s.conn.SetOption(netlink.CapAcknowledge, true)
	return &Table{netns: opts.NetNS, s: s, seq: uint32(time.Now().UnixNano())}, nil
}

// Close closes the socket. Safe to call twice.
func (t *Table) Close() error {
	t.closeOnce.Do(func() { t.closeErr = t.s.close() })
	return t.closeErr
}

// PortID is the netlink port id of the table's socket: the events its
// requests cause carry it.
func (t *Table) PortID() uint32 { return t.s.conn.PID() }

// request sends the message that enc appends (with NLM_F_REQUEST|ACK and a
// fresh sequence number) and waits for its ACK or error. Replies before it
// go to onReply; their data alias the socket buffer. An error answer is an
// *OpError wrapping the errno.
func (t *Table) request(ctx context.Context, op string, enc func(b []byte, seq uint32, fl netlink.HeaderFlags) []byte, onReply func(m netlink.Message) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		_ = t.s.conn.SetDeadline(time.Unix(1, 0))
	})
	defer func() {
		if !stop() {
			<-fired
			_ = t.s.conn.SetDeadline(time.Time{})
		}
	}()
	t.seq++
	seq := t.seq
	t.buf = enc(t.buf[:0], seq, netlink.Request|netlink.Acknowledge)
	if err := sendRaw(t.s, t.buf); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &OpError{Op: op, Err: err}
	}
	var rerr error
	done := false
	handle := func(m netlink.Message) error {
		if m.Header.Sequence != seq {
			return nil // a late answer to an interrupted request
		}
		if m.Header.Type == netlink.Error {
			if c := errnoOf(m); c != 0 {
				rerr = &OpError{Op: op, Err: c}
			}
			done = true
			return nil
		}
		if onReply != nil && rerr == nil {
			rerr = onReply(m)
		}
		return nil
	}
	for !done {
		if err := t.s.recv(handle); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return &OpError{Op: op, Err: err}
		}
	}
	return rerr
}

// sendRaw writes one datagram of netlink messages.
func sendRaw(s *rawSocket, b []byte) error {
	var serr error
	err := s.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN && serr != unix.EWOULDBLOCK
	})
	if err == nil {
		err = serr
	}
	return err
}

// Get reads the entry with the key's original tuple and zone. A missing
// entry is an *OpError wrapping unix.ENOENT.
func (t *Table) Get(ctx context.Context, k flow.Key) (flow.Flow, error) {
	var f flow.Flow
	if err := validKey(&k); err != nil {
		return f, &OpError{Op: "get", Err: err}
	}
	found := false
	err := t.request(ctx, "get", func(b []byte, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendKeyMsg(b, msgCTGet, &k, seq, fl)
	}, func(m netlink.Message) error {
		if !decodeFlow(m, &f) {
			return &OpError{Op: "get", Err: ErrMalformed}
		}
		found = true
		return nil
	})
	if err == nil && !found {
		err = &OpError{Op: "get", Err: unix.ENOENT}
	}
	return f, err
}

// Create creates f exclusively with f.Timeout (seconds). Its reply tuple
// may differ from the inverse of the original: the kernel is then asked
// for the source and destination NAT that produce it, as the Writer does.
// Status bits other than SEEN_REPLY, ASSURED and FIXED_TIMEOUT are the
// kernel's; TCP flows are created with BE_LIBERAL window tracking. An
// existing entry is an *OpError wrapping unix.EEXIST.
func (t *Table) Create(ctx context.Context, f *flow.Flow) error {
	if err := validKey(&f.Key); err != nil {
		return &OpError{Op: "create", Err: err}
	}
	return t.request(ctx, "create", func(b []byte, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendCreate(b, f, f.Timeout, seq, fl|netlink.Create|netlink.Excl)
	}, nil)
}

// Change is what Update changes in an entry; fields not flagged are left
// alone.
type Change struct {
	// SetMark: the new mark is (old &^ MarkMask) | (Mark & MarkMask); a
	// MarkMask of 0 means all bits.
	SetMark  bool
	Mark     uint32
	MarkMask uint32
	// SetTimeout: the entry expires Timeout seconds from now.
	SetTimeout bool
	Timeout    uint32
	// SetStatus: the new status word. The kernel refuses (EBUSY) to clear
	// CONFIRMED, SEEN_REPLY or ASSURED and ignores the bits it owns; send
	// the old status plus the bits to set.
	SetStatus bool
	Status    uint32
	// SetLabels: the new labels are (old &^ LabelsMask) | (Labels &
	// LabelsMask). The entry needs a label extension (it has one when
	// labels were in use when it was created), else ENOSPC.
	SetLabels  bool
	Labels     [16]byte
	LabelsMask [16]byte
}

// Update changes the entry with the key's original tuple and zone. A
// missing entry is an *OpError wrapping unix.ENOENT.
func (t *Table) Update(ctx context.Context, k flow.Key, c Change) error {
	if err := validKey(&k); err != nil {
		return &OpError{Op: "update", Err: err}
	}
	return t.request(ctx, "update", func(b []byte, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendChange(b, &k, &c, seq, fl)
	}, nil)
}

// appendChange appends an IPCTNL_MSG_CT_NEW without NLM_F_CREATE that
// changes only the attributes c flags.
func appendChange(b []byte, k *flow.Key, c *Change, seq uint32, flags netlink.HeaderFlags) []byte {
	e := msgEncoder{b}
	m := e.begin(ctType(msgCTNew), flags, seq, k.Family)
	e.tuple(ctaTupleOrig, k.Family, k.Proto, &k.Orig)
	e.zone(k.Zone)
	if c.SetStatus {
		e.be32(ctaStatus, c.Status)
	}
	if c.SetTimeout {
		e.be32(ctaTimeout, c.Timeout)
	}
	if c.SetMark {
		mask := c.MarkMask
		if mask == 0 {
			mask = ^uint32(0)
		}
		// ctnetlink: new = (old & ~CTA_MARK_MASK) ^ CTA_MARK.
		e.be32(ctaMark, c.Mark&mask)
		e.be32(ctaMarkMask, mask)
	}
	if c.SetLabels {
		var l [16]byte
		for i := range l {
			l[i] = c.Labels[i] & c.LabelsMask[i]
		}
		e.bytes(ctaLabels, l[:])
		e.bytes(ctaLabelsMask, c.LabelsMask[:])
	}
	e.end(m)
	return e.b
}

// Delete deletes the entry with the key's original tuple and zone. A
// missing entry is an *OpError wrapping unix.ENOENT.
func (t *Table) Delete(ctx context.Context, k flow.Key) error {
	if err := validKey(&k); err != nil {
		return &OpError{Op: "delete", Err: err}
	}
	return t.request(ctx, "delete", func(b []byte, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendKeyMsg(b, msgCTDelete, &k, seq, fl)
	}, nil)
}

// Flush deletes every entry of one family (flow.FamilyIPv4 or
// flow.FamilyIPv6), all zones.
func (t *Table) Flush(ctx context.Context, family uint8) error {
	if family != flow.FamilyIPv4 && family != flow.FamilyIPv6 {
		return &OpError{Op: "flush", Err: fmt.Errorf("address family %d: %w", family, unix.EAFNOSUPPORT)}
	}
	return t.request(ctx, "flush", func(b []byte, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendFlush(b, family, seq, fl)
	}, nil)
}
