package failover

import "errors"

// Sentinel errors of package failover.
var (
	// ErrNotify means keepalived notify arguments could not be parsed.
	ErrNotify = errors.New("bad keepalived notify arguments")
	// ErrCommitTimeout means a commit ran out of its time budget
	// (failover.commit_timeout) before every flow was written.
	ErrCommitTimeout = errors.New("commit timeout")
	// ErrClosed means the Coordinator was closed.
	ErrClosed = errors.New("failover coordinator closed")
)
