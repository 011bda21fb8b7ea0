package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// rawSocket reads netlink datagrams itself instead of through
// netlink.Conn.Receive, which gathers a whole multipart dump in memory and
// hides the header of each event. Writes and options still go through the
// netlink.Conn.
type rawSocket struct {
	conn *netlink.Conn
	rc   syscall.RawConn
	buf  []byte
}

func dialNetfilter(netns int, groups uint32) (*rawSocket, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns, Groups: groups})
	if err != nil {
		return nil, &OpError{Op: "dial", Err: err}
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, &OpError{Op: "dial", Err: err}
	}
	// One datagram holds at most one page-sized skb of dump records or a
	// batch of events; 1 MiB is ample and is read without copying.
	return &rawSocket{conn: c, rc: rc, buf: make([]byte, 1<<20)}, nil
}

// setReadBuffer sets SO_RCVBUFFORCE (root may exceed net.core.rmem_max),
// falling back to SO_RCVBUF.
func (s *rawSocket) setReadBuffer(n int) error {
	var serr error
	err := s.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	})
	if err == nil && serr == nil {
		return nil
	}
	if err := s.conn.SetReadBuffer(n); err != nil {
		return &OpError{Op: "set read buffer", Err: err}
	}
	return nil
}

// readBuffer returns the socket's effective receive buffer size.
func (s *rawSocket) readBuffer() int {
	n, _ := s.conn.ReadBuffer()
	return n
}

// recv reads one datagram and calls fn for each netlink message in it. The
// message data alias the socket's buffer and are valid only during fn.
// An ENOBUFS error (the kernel dropped messages for this socket) is
// returned as ErrOverrun.
func (s *rawSocket) recv(fn func(m netlink.Message) error) error {
	var n int
	var rerr error
	err := s.rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), s.buf, 0)
		return rerr != unix.EAGAIN && rerr != unix.EWOULDBLOCK
	})
	if err != nil {
		return &OpError{Op: "receive", Err: err}
	}
	if rerr != nil {
		if errors.Is(rerr, unix.ENOBUFS) {
			return ErrOverrun
		}
		return &OpError{Op: "receive", Err: rerr}
	}
	return parseMessages(s.buf[:n], fn)
}

// parseMessages splits a datagram into netlink messages.
func parseMessages(b []byte, fn func(m netlink.Message) error) error {
	const hdrLen = 16
	for len(b) >= hdrLen {
		l := binary.NativeEndian.Uint32(b[0:4])
		if l < hdrLen || int(l) > len(b) {
			return fmt.Errorf("%w: netlink message length %d, %d bytes left", ErrMalformed, l, len(b))
		}
		m := netlink.Message{
			Header: netlink.Header{
				Length:   l,
				Type:     netlink.HeaderType(binary.NativeEndian.Uint16(b[4:6])),
				Flags:    netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:8])),
				Sequence: binary.NativeEndian.Uint32(b[8:12]),
				PID:      binary.NativeEndian.Uint32(b[12:16]),
			},
			Data: b[hdrLen:l:l],
		}
		if err := fn(m); err != nil {
			return err
		}
		adv := (int(l) + 3) &^ 3
		if adv > len(b) {
			adv = len(b)
		}
		b = b[adv:]
	}
	return nil
}

// errnoOf decodes the error code of an NLMSG_ERROR message (0: an ACK).
func errnoOf(m netlink.Message) unix.Errno {
	if len(m.Data) < 4 {
		return unix.EBADMSG
	}
	code := int32(binary.NativeEndian.Uint32(m.Data[:4]))
	if code < 0 {
		code = -code
	}
	return unix.Errno(code)
}

func (s *rawSocket) close() error {
	return s.conn.Close()
}
