// Package api is ctsyncd's remote management interface: an authenticated
// HTTP/JSON API under /api/v1/ and the web console (package console) at /.
//
// The handler authenticates every request before it looks at its
// parameters or body: a Bearer token from the tokens file, or the session
// cookie the console's login sets (then modifications also need the
// session's CSRF header). Read tokens may read; admin tokens may also
// delete and change flows and trigger actions. Failed logins are rate
// limited per client address. Every modification is written to the audit
// log: token name, action, filter, count.
//
// What it is not: it holds no flows and speaks no netlink. It calls small
// interfaces (Flows, Status, Actions, Expectations) that the daemon
// implements; the filter model is the caller's (the conntrack package's),
// parsed by Flows.ParseFilter and applied by the flow source.
//
// Concurrency: a Handler serves requests concurrently; its sessions and
// rate limiter have their own locks. Flow listings are streamed, so a
// listing of a million flows never sits in memory.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Source names a table the API lists.
type Source string

// The tables a listing can read.
const (
	SourceKernel   Source = "kernel"   // the kernel's conntrack table
	SourceInternal Source = "internal" // this node's internal cache
	SourceExternal Source = "external" // flows replicated from peers
)

// Sources lists the valid sources, for errors and docs.
var Sources = []Source{SourceKernel, SourceInternal, SourceExternal}

// Filter is a parsed flow filter. The API treats it as opaque: the flow
// source built it (ParseFilter) and applies it.
type Filter interface {
	// Empty reports whether the filter selects every flow.
	Empty() bool
	// String is the filter as logged in the audit log.
	String() string
}

// Item is one flow of a listing. Flow is reused after the callback
// returns; copy what is kept.
type Item struct {
	Flow   *flow.Flow
	Origin string        // the node a replicated flow came from (external)
	Idle   time.Duration // time since the cache last saw it change (caches)
}

// Change is what PATCH sets on the matching flows; nil fields stay.
type Change struct {
	Mark    *uint32 `json:"mark,omitempty"`
	Timeout *uint32 `json:"timeout,omitempty"`
}

// Flows is the flow side of the daemon.
type Flows interface {
	// ParseFilter parses the filter parameters of a query (proto, src,
	// dst, sport, dport, state, mark, zone, origin, ...). The API has
	// removed its own parameters (source, sort, order, offset, limit)
	// first. An error should be a *ParamError naming the parameter.
	ParseFilter(q url.Values) (Filter, error)
	// List calls fn for every flow of src that f selects, until fn
	// returns an error (which List returns).
	List(ctx context.Context, src Source, f Filter, fn func(*Item) error) error
	// Delete deletes the kernel's flows that f selects and returns how
	// many it deleted.
	Delete(ctx context.Context, f Filter) (int, error)
	// Update applies c to the kernel's flows that f selects and returns
	// how many it changed.
	Update(ctx context.Context, f Filter, c Change) (int, error)
}

// Status returns the node's status as a JSON-encodable value.
type Status interface {
	Status(ctx context.Context) (any, error)
}

// Action names the operations POST /api/v1/actions/{name} triggers.
var Action = []string{"commit", "resync", "bulk", "request-resync", "purge"}

// Actions runs the daemon's operations (the same as the control socket's).
type Actions interface {
	// Action runs one of Action and returns its report and the number of
	// flows it touched (for the audit log).
	Action(ctx context.Context, name string) (report any, count int, err error)
}

// Expectations lists the kernel's expectations.
type Expectations interface {
	ListExpectations(ctx context.Context, fn func(v any) error) error
}

// ErrUnavailable is wrapped by errors of operations this node cannot do in
// its configuration (no replication, for example): answered with 409.
var ErrUnavailable = errors.New("not available on this node")

// ParamError is a bad query parameter or body field: answered with 400
// naming it.
type ParamError struct {
	Param   string
	Problem string
}

func (e *ParamError) Error() string { return fmt.Sprintf("%s: %s", e.Param, e.Problem) }

// Options configure a Handler.
type Options struct {
	Tokens       []Token
	Flows        Flows
	Status       Status
	Actions      Actions
	Expectations Expectations // nil: GET /api/v1/expectations answers 501
	// Log is the daemon's logger; Audit receives the audit records
	// (default: Log with part=audit).
	Log   *slog.Logger
	Audit *slog.Logger
	// SecureCookie marks the session cookie Secure (served over TLS).
	SecureCookie bool
	// Clock, if set, replaces time.Now (tests).
	Clock func() time.Time
	// FailuresPerMinute is the rate of failed authentications allowed per
	// client address (default 10), with a burst of as many.
	FailuresPerMinute int
	// SessionTTL is how long a console login lasts (default 12h).
	SessionTTL time.Duration
	// Console serves the web console at /; nil serves none.
	Console http.Handler
}
