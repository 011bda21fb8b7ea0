package kernel

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Each conntrack event is a datagram of its own, so reading them one
// recvfrom at a time costs a system call per event: half of the ingest CPU
// (pprof). batchReader reads up to batchSlots datagrams per recvmmsg(2).

const (
	batchSlots    = 32
	batchSlotSize = 32 << 10 // an event datagram is a few hundred bytes
)

type batchReader struct {
	buf  []byte
	iov  [batchSlots]unix.Iovec
	msgs [batchSlots]unix.Mmsghdr // its layout per GOARCH (32-bit: no padding)
}

func newBatchReader() *batchReader {
	r := &batchReader{buf: make([]byte, batchSlots*batchSlotSize)}
	for i := range r.msgs {
		r.iov[i].Base = &r.buf[i*batchSlotSize]
		r.iov[i].SetLen(batchSlotSize)
		r.msgs[i].Hdr.Iov = &r.iov[i]
		r.msgs[i].Hdr.SetIovlen(1)
	}
	return r
}

// recvBatch reads the datagrams waiting on s (at least one, blocking until
// one arrives) and calls fn for each netlink message in them. Like recv it
// returns ErrOverrun for ENOBUFS; a datagram cut short is ErrMalformed.
// idle, when not nil, is called each time the socket's queue is found empty,
// before waiting for more.
func (s *rawSocket) recvBatch(r *batchReader, fn func(m netlink.Message) error, idle func()) error {
	var (
		n     int
		errno unix.Errno
	)
	err := s.rc.Read(func(fd uintptr) bool {
		for i := range r.msgs {
			r.msgs[i].Hdr.Flags = 0
			r.msgs[i].Len = 0
		}
		r1, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.msgs[0])),
			batchSlots, unix.MSG_DONTWAIT, 0, 0)
		n, errno = int(r1), e
		if errno == unix.EAGAIN || errno == unix.EWOULDBLOCK {
			if idle != nil {
				idle()
			}
			return false
		}
		return true
	})
	if err != nil {
		return &OpError{Op: "receive", Err: err}
	}
	if errno != 0 {
		if errors.Is(errno, unix.ENOBUFS) {
			return ErrOverrun
		}
		return &OpError{Op: "receive", Err: errno}
	}
	for i := range n {
		m := &r.msgs[i]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			return fmt.Errorf("%w: a datagram longer than %d bytes was cut short", ErrMalformed, batchSlotSize)
		}
		if err := parseMessages(r.buf[i*batchSlotSize:i*batchSlotSize+int(m.Len)], fn); err != nil {
			return err
		}
	}
	return nil
}
