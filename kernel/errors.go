package kernel

import (
	"errors"
	"fmt"
)

// Sentinel errors of package kernel.
var (
	// ErrOverrun means the kernel dropped messages for a socket (ENOBUFS):
	// events were lost and the table must be re-read.
	ErrOverrun = errors.New("netlink receive buffer overrun, events lost")
	// ErrMalformed means a netlink message could not be decoded.
	ErrMalformed = errors.New("malformed netlink message")
	// ErrClosed means the socket was closed.
	ErrClosed = errors.New("kernel socket closed")
)

// OpError is an error of a netlink operation. Err is usually a
// unix.Errno or an error wrapping one, so errors.Is(err, unix.EEXIST) works.
type OpError struct {
	Op  string
	Err error
}

func (e *OpError) Error() string { return fmt.Sprintf("conntrack %s: %v", e.Op, e.Err) }

// Unwrap returns the underlying error.
func (e *OpError) Unwrap() error { return e.Err }
