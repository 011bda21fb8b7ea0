package sync

import "errors"

// Sentinel errors of package sync. Errors returned by the package wrap one
// of these with %w and the operation as a prefix.
var (
	// ErrMalformed means a datagram or body could not be decoded.
	ErrMalformed = errors.New("malformed message")
	// ErrVersion means a datagram carries another protocol version.
	ErrVersion = errors.New("unsupported protocol version")
	// ErrAuth means a datagram failed authentication (wrong key, forged or
	// corrupted, or sealed when this node runs insecure and vice versa).
	ErrAuth = errors.New("message authentication failed")
	// ErrKeyFile means the pre-shared key file is unusable: unreadable,
	// not 64 hexadecimal characters, or readable by group or others.
	ErrKeyFile = errors.New("bad sync key file")
	// ErrClosed means the transport was closed.
	ErrClosed = errors.New("sync transport closed")
	// ErrUnknownPeer means SendTo named an address the transport does not
	// know.
	ErrUnknownPeer = errors.New("unknown peer")
	// ErrTooLarge means a datagram exceeds the transport's limit.
	ErrTooLarge = errors.New("datagram too large")
)

// errShort is the detail of a truncated encoding; it is always wrapped in
// ErrMalformed before leaving the package.
var errShort = errors.New("truncated")
