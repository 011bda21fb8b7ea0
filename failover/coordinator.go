package failover

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Actions are the steps a Coordinator runs; the daemon implements them.
// Each is called with the Coordinator's context (canceled by Close), never
// with a caller's, and never two at a time.
type Actions interface {
	// CommitSequence makes this node the master: commit the external
	// cache into the kernel, then re-read the kernel into the internal
	// cache and send it to the peers in bulk (conntrackd -c -f -R -B).
	CommitSequence(ctx context.Context) (*Report, error)
	// BecomeBackup makes this node a backup: ask the peers for their
	// tables (request-resync) and purge the flows the new master owns.
	BecomeBackup(ctx context.Context) error
	// Fault purges the flows this node no longer owns.
	Fault(ctx context.Context) error
}

// Outcome says what a Handle call did.
type Outcome string

// Outcomes of Handle.
const (
	// Applied: this call's transition ran.
	Applied Outcome = "applied"
	// Joined: the same transition was already running or queued; the call
	// waited for it and shares its result (instance and group notifies,
	// or a repeated notify).
	Joined Outcome = "joined"
	// Duplicate: the state was already in effect; nothing ran.
	Duplicate Outcome = "duplicate"
	// Superseded: a newer transition replaced this one before it ran.
	Superseded Outcome = "superseded"
	// Ignored: STOP and DELETED change nothing.
	Ignored Outcome = "ignored"
)

// Result is the outcome of one Handle call.
type Result struct {
	// Seq is the call's arrival number (1 for the first call): the order
	// in which transitions were accepted.
	Seq     uint64  `json:"seq"`
	State   State   `json:"state"`
	Outcome Outcome `json:"outcome"`
	// Report is the commit report of a MASTER transition (also of the one
	// joined); for a Duplicate MASTER, the Summary of the last one applied.
	Report *Report `json:"report,omitempty"`
}

// step is one transition to run; waiters block on done.
type step struct {
	state State
	seq   uint64
	done  chan struct{} // closed when rep, err and superseded are final
	rep   *Report
	err   error
	// superseded is set when a newer transition replaced the step before
	// it ran.
	superseded bool
}

// Coordinator serializes keepalived transitions. keepalived runs notify
// scripts asynchronously: they may overlap and arrive out of order, and the
// instance and group notifies of one transition both fire. Rules:
//
//   - Transitions run one at a time, in arrival order; the last one wins.
//     A running step is never torn down midway (a half-done commit helps
//     nobody): a newer transition waits for it, then runs. While one runs,
//     only the newest arrival stays queued; the older queued one is
//     Superseded and never runs.
//   - A transition to the state already running (or queued) joins it: a
//     second MASTER while the commit runs waits for the same report
//     instead of committing twice. When a transition to the running
//     state arrives while another is queued, the queued one is superseded
//     (last wins) and the call joins the running one.
//   - A transition to the state already in effect (the last step applied
//     succeeded, nothing running) is a Duplicate and runs nothing. After a
//     failed step the state is unknown, so the next notify runs again.
//   - STOP and DELETED succeed and do nothing.
//
// Methods are safe for concurrent use.
type Coordinator struct {
	actions Actions
	log     *slog.Logger
	ctx     context.Context // the steps' context; canceled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup // the worker

	// mu guards every field below.
	mu         sync.Mutex
	seq        uint64
	working    bool  // the worker goroutine runs
	running    *step // the step running now, or nil
	queued     *step // the newest transition waiting for running, or nil
	current    State // the state in effect; "" when unknown
	lastReport *Report
	closed     bool
}

// NewCoordinator returns a Coordinator that runs actions. log may be nil.
func NewCoordinator(actions Actions, log *slog.Logger) *Coordinator {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Coordinator{actions: actions, log: log, ctx: ctx, cancel: cancel}
}

// State returns the state in effect: the last transition applied
// successfully, or "" before the first one and after a failed one.
func (c *Coordinator) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Close cancels a running step, fails the queued one with ErrClosed and
// waits for the worker. Later calls of Handle fail with ErrClosed. Safe to
// call twice.
func (c *Coordinator) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}

// Handle applies keepalived's notify n following the rules on Coordinator
// and waits for the outcome; ctx bounds only the wait: when it ends, the
// transition still runs and Handle returns ctx's error. The error is the
// step's own when it ran (Applied or Joined) and failed.
func (c *Coordinator) Handle(ctx context.Context, n Notify) (Result, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return Result{State: n.State}, ErrClosed
	}
	c.seq++
	res := Result{Seq: c.seq, State: n.State}
	var s *step
	switch {
	case n.State != Master && n.State != Backup && n.State != Fault:
		res.Outcome = Ignored
	case c.queued != nil && c.queued.state == n.State:
		s, res.Outcome = c.queued, Joined
	case c.running != nil && c.running.state == n.State:
		c.supersedeLocked()
		s, res.Outcome = c.running, Joined
	case c.running == nil && c.current == n.State:
		c.supersedeLocked()
		res.Outcome = Duplicate
		if n.State == Master {
			res.Report = c.lastReport
		}
	default:
		c.supersedeLocked()
		s = &step{state: n.State, seq: res.Seq, done: make(chan struct{})}
		c.queued = s
		res.Outcome = Applied
		if !c.working {
			c.working = true
			c.wg.Add(1)
			go c.work()
		}
	}
	c.mu.Unlock()

	if s == nil {
		c.log.Info("keepalived transition", "notify", n.String(), "seq", res.Seq, "outcome", res.Outcome)
		return res, nil
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		return res, fmt.Errorf("failover: %s: %w", n.State, ctx.Err())
	}
	if s.superseded {
		res.Outcome = Superseded
		c.log.Info("keepalived transition", "notify", n.String(), "seq", res.Seq, "outcome", res.Outcome)
		return res, nil
	}
	res.Report = s.rep
	if s.err != nil {
		return res, fmt.Errorf("failover: %s: %w", n.State, s.err)
	}
	return res, nil
}

// supersedeLocked drops the queued step: a newer transition replaces it.
func (c *Coordinator) supersedeLocked() {
	if q := c.queued; q != nil {
		q.superseded = true
		close(q.done)
		c.queued = nil
	}
}

// work runs queued steps until none is left.
func (c *Coordinator) work() {
	defer c.wg.Done()
	c.mu.Lock()
	for c.queued != nil {
		s := c.queued
		c.queued = nil
		c.running = s
		c.mu.Unlock()

		rep, err := c.run(s)

		c.mu.Lock()
		s.rep, s.err = rep, err
		if err == nil {
			c.current = s.state
			if s.state == Master && rep != nil {
				c.lastReport = rep.Summary()
			}
		} else {
			c.current = ""
		}
		c.running = nil
		close(s.done)
	}
	c.working = false
	c.mu.Unlock()
}

// run runs one step's action.
func (c *Coordinator) run(s *step) (*Report, error) {
	if c.ctx.Err() != nil {
		return nil, ErrClosed
	}
	start := time.Now()
	var (
		rep *Report
		err error
	)
	switch s.state {
	case Master:
		rep, err = c.actions.CommitSequence(c.ctx)
	case Backup:
		err = c.actions.BecomeBackup(c.ctx)
	case Fault:
		err = c.actions.Fault(c.ctx)
	}
	attrs := []any{"state", s.state, "seq", s.seq, "seconds", time.Since(start).Seconds()}
	if rep != nil {
		attrs = append(attrs, "created", rep.Created, "updated", rep.Updated,
			"replaced", rep.Replaced, "failed", rep.Failed)
	}
	if err != nil {
		c.log.Error("keepalived transition failed", append(attrs, "err", err)...)
	} else {
		c.log.Info("keepalived transition applied", attrs...)
	}
	return rep, err
}
