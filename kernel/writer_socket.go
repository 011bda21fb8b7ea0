package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Per-request outcome codes of a round: 0 success, > 0 an errno, codePending
// not answered (the round was cut short).
const codePending int32 = -1

// encodeFunc appends request k of a round to b as one netlink message with
// the given sequence number and flags (NLM_F_REQUEST and, on the last of a
// batch, NLM_F_ACK are already set; the function adds its own).
type encodeFunc func(b []byte, k int, seq uint32, flags netlink.HeaderFlags) []byte

// replyFunc receives a non-error reply (a GET's answer) to request k. m's
// data alias the socket buffer and are valid only during the call.
type replyFunc func(k int, m netlink.Message)

// writeConn is what a writeSocket needs of its netlink socket: send one
// datagram of requests, receive one datagram of replies split into
// messages, move its deadline (how a context ends a blocked round), its
// port id, close. *rawSocket is the real one; the writer's root-free tests
// put a fake under it that answers requests with ACKs, errors and replies
// as the kernel does (writer_seam_test.go).
type writeConn interface {
	send(b []byte) error
	recv(fn func(m netlink.Message) error) error
	setDeadline(t time.Time) error
	portID() uint32
	close() error
}

// writeSocket is one of the writer's netlink sockets. It is used by one
// goroutine of a round at a time; seq is touched only by that goroutine.
type writeSocket struct {
	s       writeConn
	seq     uint32
	buf     []byte // the batch being sent, reused
	maxSend int    // bytes per sendmsg the socket accepts (below sk_sndbuf)
}

func dialWriteSocket(netns int) (*writeSocket, error) {
	s, err := dialNetfilter(netns, 0)
	if err != nil {
		return nil, err
	}
	// Errors of a whole batch come back at once: a large receive buffer
	// keeps them from being dropped. NETLINK_CAP_ACK trims each error reply
	// to the failing message's header.
	if err := s.setReadBuffer(writerReadBuffer); err != nil {
		s.close()
		return nil, err
	}
	var serr error
	if err := s.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, writerWriteBuffer)
	}); err != nil || serr != nil {
		_ = s.conn.SetWriteBuffer(writerWriteBuffer)
	}
	_ = s.conn.SetOption(netlink.CapAcknowledge, true)
	// netlink_sendmsg refuses (EMSGSIZE) a datagram above sk_sndbuf - 32;
	// a batch larger than half the send buffer goes out in several
	// sendmsg calls, split at message boundaries.
	maxSend := 64 << 10
	if n, err := s.conn.WriteBuffer(); err == nil && n/2 > maxSend {
		maxSend = n / 2
	}
	return newWriteSocket(s, maxSend), nil
}

// newWriteSocket wraps c; maxSend is the most bytes one send may carry.
func newWriteSocket(c writeConn, maxSend int) *writeSocket {
	return &writeSocket{s: c, seq: uint32(time.Now().UnixNano()), maxSend: maxSend}
}

const (
	writerReadBuffer  = 16 << 20
	writerWriteBuffer = 8 << 20
)

// round sends n requests over all sockets in batches and collects one code
// per request. Sockets take batches from a shared counter, one goroutine
// each. It returns early with ctx's error (requests not answered stay
// codePending) or with a socket's error.
func (w *Writer) round(ctx context.Context, n int, enc encodeFunc, onReply replyFunc) ([]int32, error) {
	return w.roundOn(ctx, w.socks, w.opts.Batch, n, enc, onReply)
}

// roundOn is round over the given sockets and batch size.
func (w *Writer) roundOn(ctx context.Context, socks []*writeSocket, batch, n int, enc encodeFunc, onReply replyFunc) ([]int32, error) {
	codes := make([]int32, n)
	for i := range codes {
		codes[i] = codePending
	}
	if n == 0 {
		return codes, nil
	}
	nbatches := (n + batch - 1) / batch
	if len(socks) > nbatches {
		socks = socks[:nbatches]
	}

	// ctx ends a round by moving all deadlines into the past, which
	// interrupts blocked reads and writes; they are reset afterwards.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		for _, s := range socks {
			_ = s.s.setDeadline(time.Unix(1, 0))
		}
	})
	defer func() {
		if !stop() {
			<-fired
			for _, s := range socks {
				_ = s.s.setDeadline(time.Time{})
			}
		}
	}()

	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		rerr    error
	)
	for _, s := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				b := int(next.Add(1) - 1)
				if b >= nbatches {
					return
				}
				lo := b * batch
				hi := min(lo+batch, n)
				if err := s.batch(lo, hi, codes, enc, onReply); err != nil {
					errOnce.Do(func() { rerr = err })
					next.Store(int64(nbatches)) // stop the others too
					return
				}
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return codes, ctx.Err()
	}
	return codes, rerr
}

// batch sends requests [lo, hi) in one sendmsg and reads the replies until
// the last request's ACK or error. NLMSG_ERROR replies carry the sequence
// number of the request they answer.
func (s *writeSocket) batch(lo, hi int, codes []int32, enc encodeFunc, onReply replyFunc) error {
	base := s.seq + 1
	s.buf = s.buf[:0]
	for k := lo; k < hi; k++ {
		flags := netlink.Request
		if k == hi-1 {
			flags |= netlink.Acknowledge
		}
		s.buf = enc(s.buf, k, base+uint32(k-lo), flags)
	}
	s.seq += uint32(hi - lo)
	last := s.seq

	if err := s.sendSplit(s.buf); err != nil {
		return err
	}
	done := false
	handle := func(m netlink.Message) error {
		off := m.Header.Sequence - base
		if off >= uint32(hi-lo) {
			return nil // a late reply of an earlier, interrupted batch
		}
		k := lo + int(off)
		if m.Header.Type == netlink.Error {
			codes[k] = int32(errnoOf(m))
			if m.Header.Sequence == last {
				done = true
			}
			return nil
		}
		if onReply != nil {
			onReply(k, m)
		}
		return nil
	}
	for !done {
		err := s.s.recv(handle)
		if err == nil {
			continue
		}
		if errors.Is(err, ErrOverrun) {
			// Replies were dropped: the outcome of the unanswered requests
			// of this batch is unknown. Report them as ENOBUFS; later
			// replies of this batch are ignored by sequence number.
			for k := lo; k < hi; k++ {
				if codes[k] == codePending {
					codes[k] = int32(unix.ENOBUFS)
				}
			}
			return nil
		}
		return err
	}
	// Success is silent but for the last message's ACK.
	for k := lo; k < hi; k++ {
		if codes[k] == codePending {
			codes[k] = 0
		}
	}
	return nil
}

// sendSplit sends b, a sequence of netlink messages, in as few sendmsg
// calls of at most maxSend bytes as it can. The kernel handles each call's
// messages in order before the call returns.
func (s *writeSocket) sendSplit(b []byte) error {
	for len(b) > 0 {
		n := 0
		for n < len(b) {
			l := int(binary.NativeEndian.Uint32(b[n:]))
			if n > 0 && n+l > s.maxSend {
				break
			}
			n += l
		}
		if err := s.send(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func (s *writeSocket) send(b []byte) error { return s.s.send(b) }

// send sends b as one datagram to the kernel.
func (s *rawSocket) send(b []byte) error {
	var serr error
	err := s.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN && serr != unix.EWOULDBLOCK
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		return &OpError{Op: "send", Err: err}
	}
	return nil
}

func (s *rawSocket) setDeadline(t time.Time) error { return s.conn.SetDeadline(t) }

func (s *rawSocket) portID() uint32 { return s.conn.PID() }

// dump reads the whole table (both families) on the writer's first socket
// and calls fn for each entry; m's data are valid only during the call.
func (w *Writer) dump(ctx context.Context, fn func(m netlink.Message)) error {
	s := w.socks[0]
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		_ = s.s.setDeadline(time.Unix(1, 0))
	})
	defer func() {
		if !stop() {
			<-fired
			_ = s.s.setDeadline(time.Time{})
		}
	}()
	s.seq++
	seq := s.seq
	e := msgEncoder{s.buf[:0]}
	m := e.begin(ctType(msgCTGet), netlink.Request|netlink.Dump, seq, unix.AF_UNSPEC)
	e.end(m)
	s.buf = e.b
	if err := s.send(s.buf); err != nil {
		return err
	}
	var derr error
	done := false
	handle := func(m netlink.Message) error {
		if m.Header.Sequence != seq {
			return nil
		}
		switch m.Header.Type {
		case netlink.Done:
			done = true
		case netlink.Error:
			if c := errnoOf(m); c != 0 {
				derr = &OpError{Op: "dump", Err: c}
			}
			done = true
		default:
			fn(m)
		}
		return nil
	}
	for !done {
		if err := s.s.recv(handle); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
	return derr
}
