package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
)

// The writer's root-free tests: a fake netlink socket under the writer
// (writeConn) answers each request as ctnetlink does — nothing for a success
// without NLM_F_ACK, an ACK for one with it, an NLMSG_ERROR (capped to the
// request's header) for a failure, the entry before the ACK for a GET — and
// packs several replies per datagram. The kernel tier checks the same paths
// against the real table (writer_kernel_test.go).

// fakeReq is one request the fake received.
type fakeReq struct {
	msg   uint8 // msgCTNew, msgCTGet, msgCTDelete
	flags netlink.HeaderFlags
	seq   uint32
	key   flow.Key
}

// fakeAnswer decides the outcome of a request: an errno (0: success) and,
// for a GET, the entry to return.
type fakeAnswer func(r fakeReq) (unix.Errno, *flow.Flow)

type fakeConn struct {
	answer   fakeAnswer
	perDgram int // replies packed per datagram; default 3

	mu       sync.Mutex
	sends    [][]byte  // each datagram sent, copied
	reqs     []fakeReq // each request, in order
	queue    [][]byte  // reply datagrams not yet read
	hold     func(r fakeReq) bool
	held     [][]byte // replies held back until release
	overrun  int      // the n-th recv (1-based) returns ErrOverrun
	recvs    int
	deadline time.Time
	closed   bool
	wake     chan struct{}
	waiting  chan struct{} // signalled when recv finds nothing to read
}

func newFakeConn(answer fakeAnswer) *fakeConn {
	return &fakeConn{answer: answer, perDgram: 3, wake: make(chan struct{}, 1), waiting: make(chan struct{}, 1)}
}

func (c *fakeConn) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// reqKey decodes the original tuple and zone a request names.
func reqKey(m netlink.Message) (flow.Key, error) {
	var k flow.Key
	if len(m.Data) < 4 {
		return k, errors.New("short nfgenmsg")
	}
	k.Family = m.Data[0]
	for b := m.Data[4:]; len(b) > 0; {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return k, errors.New("bad attribute")
		}
		b = rest
		switch typ {
		case ctaTupleOrig:
			if !decodeTuple(p, &k.Orig, &k.Proto) {
				return k, errors.New("bad tuple")
			}
		case ctaZone:
			k.Zone = binary.BigEndian.Uint16(p)
		}
	}
	return k, nil
}

func errMsg(req netlink.Header, errno unix.Errno) []byte {
	b := make([]byte, 16+4+16)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], uint16(netlink.Error))
	binary.NativeEndian.PutUint16(b[6:], 0x100) // NLM_F_CAPPED
	binary.NativeEndian.PutUint32(b[8:], req.Sequence)
	binary.NativeEndian.PutUint32(b[16:], uint32(-int32(errno)))
	binary.NativeEndian.PutUint32(b[20:], req.Length)
	binary.NativeEndian.PutUint16(b[24:], uint16(req.Type))
	binary.NativeEndian.PutUint16(b[26:], uint16(req.Flags))
	binary.NativeEndian.PutUint32(b[28:], req.Sequence)
	return b
}

func (c *fakeConn) send(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return &OpError{Op: "send", Err: unix.EBADF}
	}
	c.sends = append(c.sends, append([]byte(nil), b...))
	var replies [][]byte
	err := parseMessages(b, func(m netlink.Message) error {
		k, err := reqKey(m)
		if err != nil {
			return err
		}
		r := fakeReq{msg: uint8(m.Header.Type), flags: m.Header.Flags, seq: m.Header.Sequence, key: k}
		c.reqs = append(c.reqs, r)
		errno, entry := c.answer(r)
		var out [][]byte
		if errno != 0 {
			out = append(out, errMsg(m.Header, errno))
		} else {
			if entry != nil {
				out = append(out, appendCreate(nil, entry, 60, m.Header.Sequence, 0))
			}
			if m.Header.Flags&netlink.Acknowledge != 0 {
				out = append(out, errMsg(m.Header, 0))
			}
		}
		if c.hold != nil && c.hold(r) {
			c.held = append(c.held, out...)
			return nil
		}
		replies = append(replies, out...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("fake: %w", err)
	}
	c.queueLocked(replies)
	return nil
}

// queueLocked packs replies perDgram to a datagram.
func (c *fakeConn) queueLocked(replies [][]byte) {
	for len(replies) > 0 {
		n := min(c.perDgram, len(replies))
		var d []byte
		for _, r := range replies[:n] {
			d = append(d, r...)
		}
		c.queue = append(c.queue, d)
		replies = replies[n:]
	}
	c.signal(c.wake)
}

// release queues the held replies.
func (c *fakeConn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queueLocked(c.held)
	c.held = nil
}

func (c *fakeConn) recv(fn func(m netlink.Message) error) error {
	for {
		c.mu.Lock()
		c.recvs++
		if c.recvs == c.overrun {
			c.mu.Unlock()
			return ErrOverrun
		}
		switch {
		case c.closed:
			c.mu.Unlock()
			return &OpError{Op: "receive", Err: unix.EBADF}
		case len(c.queue) > 0:
			d := c.queue[0]
			c.queue = c.queue[1:]
			c.mu.Unlock()
			return parseMessages(d, fn)
		case !c.deadline.IsZero() && !c.deadline.After(time.Now()):
			c.mu.Unlock()
			return &OpError{Op: "receive", Err: os.ErrDeadlineExceeded}
		}
		c.mu.Unlock()
		c.signal(c.waiting)
		<-c.wake
	}
}

func (c *fakeConn) setDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	c.signal(c.wake)
	return nil
}

func (c *fakeConn) portID() uint32 { return 4242 }

func (c *fakeConn) close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.signal(c.wake)
	return nil
}

// fakeWriter makes a Writer over one fake socket per answer.
func fakeWriter(opts WriterOptions, maxSend int, conns ...*fakeConn) *Writer {
	opts = opts.withDefaults()
	opts.Sockets = len(conns)
	var socks []*writeSocket
	for _, c := range conns {
		socks = append(socks, newWriteSocket(c, maxSend))
	}
	return newWriterOn(opts, socks)
}

func keysOf(flows []flow.Flow) []flow.Key {
	keys := make([]flow.Key, len(flows))
	for i := range flows {
		keys[i] = flows[i].Key
	}
	return keys
}

// datagrams splits each sent datagram into its requests' headers.
func datagrams(t *testing.T, c *fakeConn) [][]netlink.Header {
	t.Helper()
	var out [][]netlink.Header
	for _, d := range c.sends {
		var hs []netlink.Header
		if err := parseMessages(d, func(m netlink.Message) error { hs = append(hs, m.Header); return nil }); err != nil {
			t.Fatal(err)
		}
		out = append(out, hs)
	}
	return out
}

// A round goes out in batches of opts.Batch requests, one sendmsg each;
// only the last request of a batch asks for an ACK; sequence numbers run on
// across batches.
func TestWriterSeamBatching(t *testing.T) {
	c := newFakeConn(func(fakeReq) (unix.Errno, *flow.Flow) { return 0, nil })
	w := fakeWriter(WriterOptions{Batch: 100}, 1<<20, c)
	keys := keysOf(testFlows(250))
	res, err := w.Delete(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Op != Deleted || r.Err != nil || r.Key != keys[i] {
			t.Fatalf("flow %d: %v %v", i, r.Op, r.Err)
		}
	}
	dg := datagrams(t, c)
	if len(dg) != 3 || len(dg[0]) != 100 || len(dg[1]) != 100 || len(dg[2]) != 50 {
		t.Fatalf("datagrams of %v requests, want 100, 100, 50", lens(dg))
	}
	seq := dg[0][0].Sequence
	for b, hs := range dg {
		for i, h := range hs {
			if h.Sequence != seq {
				t.Fatalf("batch %d message %d: sequence %d, want %d", b, i, h.Sequence, seq)
			}
			seq++
			if ack := h.Flags&netlink.Acknowledge != 0; ack != (i == len(hs)-1) {
				t.Errorf("batch %d message %d of %d: ACK flag %v", b, i, len(hs), ack)
			}
			if h.Flags&netlink.Request == 0 {
				t.Errorf("batch %d message %d: no NLM_F_REQUEST", b, i)
			}
		}
	}
	for i, r := range c.reqs {
		if r.msg != msgCTDelete || r.key != keys[i] {
			t.Fatalf("request %d: type %d key %v, want delete of %v", i, r.msg, r.key, keys[i])
		}
	}
}

func lens(dg [][]netlink.Header) []int {
	var n []int
	for _, hs := range dg {
		n = append(n, len(hs))
	}
	return n
}

// A batch larger than a sendmsg may carry is split at message boundaries;
// the ACK is still asked of the batch's last message only.
func TestWriterSeamSplitSend(t *testing.T) {
	c := newFakeConn(func(fakeReq) (unix.Errno, *flow.Flow) { return 0, nil })
	w := fakeWriter(WriterOptions{Batch: 256}, 1000, c)
	flows := testFlows(300)
	res, err := w.Commit(context.Background(), flows, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Op != Created {
			t.Fatalf("flow %d: %v %v", i, r.Op, r.Err)
		}
	}
	dg := datagrams(t, c)
	if len(dg) < 4 {
		t.Fatalf("%d sendmsg calls for 300 creates of at most 1000 bytes each", len(dg))
	}
	acks, n := 0, 0
	for i, d := range c.sends {
		if len(d) > 1000 && len(dg[i]) > 1 {
			t.Errorf("datagram %d: %d bytes, %d messages", i, len(d), len(dg[i]))
		}
		for _, h := range dg[i] {
			n++
			if h.Flags&netlink.Acknowledge != 0 {
				acks++
				if n != 256 && n != 300 {
					t.Errorf("ACK asked of request %d", n)
				}
			}
		}
	}
	if n != 300 || acks != 2 {
		t.Errorf("%d requests, %d ACKs asked; want 300, 2", n, acks)
	}
}

// Each request's errno lands on its own flow, over two sockets whose
// batches interleave; the round waits for the last message's ACK even after
// errors came back for earlier ones.
func TestWriterSeamErrnoPerFlow(t *testing.T) {
	keys := keysOf(testFlows(1000))
	idx := make(map[flow.Key]int, len(keys))
	for i, k := range keys {
		idx[k] = i
	}
	want := func(i int) unix.Errno {
		switch {
		case i%7 == 0:
			return unix.ENOENT
		case i%11 == 0:
			return unix.EPERM
		case i%64 == 63: // the last of a batch
			return unix.EINVAL
		}
		return 0
	}
	answer := func(r fakeReq) (unix.Errno, *flow.Flow) { return want(idx[r.key]), nil }
	// Each socket answers its first request only once the other has one,
	// so that both carry batches whatever the scheduling.
	aSeen, bSeen := make(chan struct{}), make(chan struct{})
	var aOnce, bOnce sync.Once
	a := newFakeConn(func(r fakeReq) (unix.Errno, *flow.Flow) {
		aOnce.Do(func() { close(aSeen) })
		<-bSeen
		return answer(r)
	})
	b := newFakeConn(func(r fakeReq) (unix.Errno, *flow.Flow) {
		bOnce.Do(func() { close(bSeen) })
		<-aSeen
		return answer(r)
	})
	w := fakeWriter(WriterOptions{Batch: 64}, 1<<20, a, b)
	res, err := w.Delete(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		e := want(i)
		if e == 0 {
			if r.Op != Deleted || r.Err != nil {
				t.Errorf("flow %d: %v %v, want deleted", i, r.Op, r.Err)
			}
			continue
		}
		var oe *OpError
		if r.Op != Failed || !errors.Is(r.Err, e) || !errors.As(r.Err, &oe) || oe.Op != "delete" {
			t.Errorf("flow %d: %v %v, want failed with %v", i, r.Op, r.Err, e)
		}
	}
	if len(a.reqs) == 0 || len(b.reqs) == 0 {
		t.Errorf("requests per socket: %d, %d; want both used", len(a.reqs), len(b.reqs))
	}
}

// The writer does not settle a batch before its last message's ACK: with the
// errors of earlier messages read and the ACK not yet there, it waits.
func TestWriterSeamWaitsForLastAck(t *testing.T) {
	keys := keysOf(testFlows(10))
	c := newFakeConn(func(r fakeReq) (unix.Errno, *flow.Flow) {
		if r.key == keys[2] || r.key == keys[5] {
			return unix.ENOENT, nil
		}
		return 0, nil
	})
	c.hold = func(r fakeReq) bool { return r.flags&netlink.Acknowledge != 0 }
	w := fakeWriter(WriterOptions{Batch: 10}, 1<<20, c)
	type out struct {
		res []Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := w.Delete(context.Background(), keys)
		done <- out{res, err}
	}()
	// The errors are queued at once; the writer reads them and must then
	// wait for the held ACK.
	for {
		select {
		case o := <-done:
			t.Fatalf("Delete returned before the last message's ACK: %v %v", o.res, o.err)
		case <-c.waiting:
		}
		c.mu.Lock()
		drained := len(c.queue) == 0 && len(c.reqs) == len(keys)
		c.mu.Unlock()
		if drained {
			break
		}
	}
	c.release()
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	for i, r := range o.res {
		if (i == 2 || i == 5) != (r.Op == Failed) || r.Op == Failed && !errors.Is(r.Err, unix.ENOENT) {
			t.Errorf("flow %d: %v %v", i, r.Op, r.Err)
		}
	}
}

// Commit's rounds as the replies drive them: a create that finds the entry
// (EEXIST) reads it back (GET) and updates it, or, when the entry lacks the
// flow's NAT, deletes and creates it anew; other errnos fail the flow.
func TestWriterSeamCommitRounds(t *testing.T) {
	flows := testFlows(40)
	var mu sync.Mutex
	table := map[flow.Key]flow.Flow{}
	for i := range flows {
		if i%2 == 0 {
			f := flows[i]
			f.Reply = f.Orig.Invert(f.Proto)
			table[f.Key] = f
		}
	}
	refused := flows[3].Key
	answer := func(r fakeReq) (unix.Errno, *flow.Flow) {
		mu.Lock()
		defer mu.Unlock()
		f, ok := table[r.key]
		switch {
		case r.key == refused:
			return unix.EPERM, nil
		case r.msg == msgCTGet && ok:
			return 0, &f
		case r.msg == msgCTGet || r.msg == msgCTDelete && !ok:
			return unix.ENOENT, nil
		case r.msg == msgCTDelete:
			delete(table, r.key)
		case r.msg == msgCTNew && r.flags&netlink.Create != 0:
			if ok {
				return unix.EEXIST, nil
			}
			table[r.key] = flow.Flow{Key: r.key}
		case r.msg == msgCTNew && !ok:
			return unix.ENOENT, nil
		}
		return 0, nil
	}
	c := newFakeConn(answer)
	w := fakeWriter(WriterOptions{Batch: 16}, 1<<20, c)
	res, err := w.Commit(context.Background(), flows, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		want := Created
		switch {
		case i == 3:
			want = Failed
		case i%2 == 0 && natted(&flows[i]):
			want = Replaced
		case i%2 == 0:
			want = Updated
		}
		if r.Op != want {
			t.Errorf("flow %d: %v %v, want %v", i, r.Op, r.Err, want)
		}
	}
	if !errors.Is(res[3].Err, unix.EPERM) {
		t.Errorf("flow 3: %v, want EPERM", res[3].Err)
	}
	nat := 0
	for i := 0; i < len(flows); i += 2 {
		if natted(&flows[i]) {
			nat++
		}
	}
	if nat == 0 || nat == 20 {
		t.Fatalf("%d of the 20 existing flows are NATed: the test needs both kinds", nat)
	}
	var gets, updates, deletes int
	for _, r := range c.reqs {
		switch {
		case r.msg == msgCTGet:
			gets++
		case r.msg == msgCTDelete:
			deletes++
		case r.msg == msgCTNew && r.flags&netlink.Create == 0:
			updates++
		}
	}
	if gets != 20 || updates != 20-nat || deletes != nat {
		t.Errorf("%d GETs, %d updates, %d deletes; want 20, %d, %d", gets, updates, deletes, 20-nat, nat)
	}
}

// natted reports whether f's reply tuple is not the inverse of its original.
func natted(f *flow.Flow) bool { return f.Reply != f.Orig.Invert(f.Proto) }

// Replies the kernel dropped (ENOBUFS on receive) leave their requests'
// outcome unknown: those flows fail with ENOBUFS, the answered ones keep
// their result.
func TestWriterSeamOverrun(t *testing.T) {
	keys := keysOf(testFlows(9))
	c := newFakeConn(func(r fakeReq) (unix.Errno, *flow.Flow) {
		if r.key == keys[0] || r.key == keys[4] {
			return unix.ENOENT, nil
		}
		return 0, nil
	})
	c.perDgram = 1
	c.overrun = 2 // the first datagram (flow 0's error) is read, then the overrun
	w := fakeWriter(WriterOptions{Batch: 16}, 1<<20, c)
	res, err := w.Delete(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		want := unix.ENOBUFS
		if i == 0 {
			want = unix.ENOENT
		}
		if r.Op != Failed || !errors.Is(r.Err, want) {
			t.Errorf("flow %d: %v %v, want failed with %v", i, r.Op, r.Err, want)
		}
	}
	// The next round is not confused by the stale replies of this one.
	res, err = w.Delete(context.Background(), keys[1:2])
	if err != nil || res[0].Op != Deleted {
		t.Fatalf("next round: %v %v", res, err)
	}
}

// A context ending a round interrupts the blocked read through the
// deadline; the unanswered flows fail with the context's error and the
// deadline is cleared for the next round.
func TestWriterSeamContext(t *testing.T) {
	keys := keysOf(testFlows(5))
	c := newFakeConn(func(fakeReq) (unix.Errno, *flow.Flow) { return 0, nil })
	c.hold = func(fakeReq) bool { return true }
	w := fakeWriter(WriterOptions{}, 1<<20, c)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-c.waiting
		cancel()
	}()
	res, err := w.Delete(ctx, keys)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	for i, r := range res {
		if r.Op != Failed || !errors.Is(r.Err, context.Canceled) {
			t.Errorf("flow %d: %v %v", i, r.Op, r.Err)
		}
	}
	c.mu.Lock()
	dl := c.deadline
	c.held = nil
	c.hold = nil
	c.mu.Unlock()
	if !dl.IsZero() {
		t.Errorf("deadline left at %v", dl)
	}
	if res, err := w.Delete(context.Background(), keys[:1]); err != nil || res[0].Op != Deleted {
		t.Fatalf("next round: %v %v", res, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Delete(context.Background(), keys); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}
