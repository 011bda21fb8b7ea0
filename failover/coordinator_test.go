package failover

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fakeActions records the steps it runs. When gate is set, each step
// announces its start on started and waits for a value on gate.
type fakeActions struct {
	mu      sync.Mutex
	log     []State
	active  atomic.Int32
	overlap atomic.Bool
	started chan State
	gate    chan struct{}
	sleep   func() time.Duration
	fail    atomic.Pointer[error]
}

func (a *fakeActions) step(ctx context.Context, s State) error {
	if a.active.Add(1) > 1 {
		a.overlap.Store(true)
	}
	defer a.active.Add(-1)
	a.mu.Lock()
	a.log = append(a.log, s)
	a.mu.Unlock()
	if a.started != nil {
		a.started <- s
	}
	if a.gate != nil {
		select {
		case <-a.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if a.sleep != nil {
		time.Sleep(a.sleep())
	}
	if e := a.fail.Load(); e != nil {
		return *e
	}
	return nil
}

func (a *fakeActions) CommitSequence(ctx context.Context) (*Report, error) {
	if err := a.step(ctx, Master); err != nil {
		return nil, err
	}
	return &Report{Created: 1}, nil
}
func (a *fakeActions) BecomeBackup(ctx context.Context) error { return a.step(ctx, Backup) }
func (a *fakeActions) Fault(ctx context.Context) error        { return a.step(ctx, Fault) }

func (a *fakeActions) steps() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var b []string
	for _, s := range a.log {
		b = append(b, string(s))
	}
	return strings.Join(b, " ")
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func newTestCoordinator(t *testing.T, a *fakeActions) *Coordinator {
	c := NewCoordinator(a, testLogger(t))
	t.Cleanup(func() {
		if a.gate != nil {
			close(a.gate)
		}
		c.Close()
		c.Close()
	})
	return c
}

func notify(kind Kind, s State) Notify {
	return Notify{Kind: kind, Name: "fw", State: s, Priority: 100}
}

// handleAsync calls Handle on a goroutine; the result arrives on the channel.
func handleAsync(c *Coordinator, n Notify) <-chan outcome {
	ch := make(chan outcome, 1)
	go func() {
		r, err := c.Handle(context.Background(), n)
		ch <- outcome{r, err}
	}()
	return ch
}

type outcome struct {
	r   Result
	err error
}

// waitSeq waits, in a synctest bubble, until every goroutine of the test
// is blocked, and checks that the coordinator has accepted n calls by then.
func waitSeq(t *testing.T, c *Coordinator, n uint64) {
	t.Helper()
	synctest.Wait()
	c.mu.Lock()
	s := c.seq
	c.mu.Unlock()
	if s != n {
		t.Fatalf("%d calls accepted once all were blocked, want %d", s, n)
	}
}

// TestCoordinatorSequences replays notify sequences in random orders, one
// call after the other (keepalived's own order), and checks that the last
// transition wins, that no state is applied twice in a row, and that STOP
// and DELETED change nothing.
func TestCoordinatorSequences(t *testing.T) {
	pool := []Notify{
		notify(Group, Master), notify(Instance, Master),
		notify(Group, Backup), notify(Instance, Backup),
		notify(Group, Fault), notify(Instance, Fault),
		notify(Instance, Stop), notify(Instance, Deleted),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := range 500 {
		seq := make([]Notify, 1+rng.IntN(12))
		for i := range seq {
			seq[i] = pool[rng.IntN(len(pool))]
		}
		a := &fakeActions{}
		c := NewCoordinator(a, nil)
		var want State
		for _, n := range seq {
			r, err := c.Handle(context.Background(), n)
			if err != nil {
				t.Fatalf("sequence %v: %v", seq, err)
			}
			switch n.State {
			case Stop, Deleted:
				if r.Outcome != Ignored {
					t.Fatalf("sequence %v: %s %s", seq, n.State, r.Outcome)
				}
				continue
			}
			if (n.State == want) != (r.Outcome == Duplicate) {
				t.Fatalf("iteration %d, sequence %v: %s after %q: %s", iter, seq, n.State, want, r.Outcome)
			}
			want = n.State
			if n.State == Master && r.Report == nil {
				t.Fatalf("MASTER without a report")
			}
		}
		if got := c.State(); got != want {
			t.Fatalf("sequence %v: state %q, want %q", seq, got, want)
		}
		steps := strings.Fields(a.steps())
		for i := 1; i < len(steps); i++ {
			if steps[i] == steps[i-1] {
				t.Fatalf("sequence %v: %s applied twice in a row (%v)", seq, steps[i], steps)
			}
		}
		c.Close()
	}
}

// TestCoordinatorConcurrent fires random notifies from many goroutines at
// once (keepalived runs notify scripts asynchronously): steps never
// overlap, and the state in effect at the end is the one of the last call
// the coordinator accepted.
func TestCoordinatorConcurrent(t *testing.T) {
	states := []State{Master, Backup, Fault, Stop}
	for iter := range 50 {
		a := &fakeActions{sleep: func() time.Duration { return time.Duration(rand.IntN(300)) * time.Microsecond }}
		c := NewCoordinator(a, nil)
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			res []Result
		)
		for g := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					kind := Instance
					if g%2 == 0 {
						kind = Group
					}
					r, err := c.Handle(context.Background(), notify(kind, states[rand.IntN(len(states))]))
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					res = append(res, r)
					mu.Unlock()
					time.Sleep(time.Duration(rand.IntN(100)) * time.Microsecond)
				}
			}()
		}
		wg.Wait()
		var last Result
		for _, r := range res {
			if r.Outcome != Ignored && r.Seq > last.Seq {
				last = r
			}
		}
		if got := c.State(); got != last.State {
			t.Fatalf("iteration %d: state %q, last call #%d was %s", iter, got, last.Seq, last.State)
		}
		if a.overlap.Load() {
			t.Fatal("two steps ran at once")
		}
		c.Close()
	}
}

func TestCoordinatorDuplicateMasterJoins(t *testing.T) {
	// In a bubble: the waits for the calls to arrive take no real time.
	synctest.Test(t, func(t *testing.T) {
		a := &fakeActions{started: make(chan State, 10), gate: make(chan struct{})}
		c := newTestCoordinator(t, a)
		first := handleAsync(c, notify(Group, Master))
		<-a.started
		second := handleAsync(c, notify(Instance, Master))
		waitSeq(t, c, 2)
		a.gate <- struct{}{}
		r1, r2 := <-first, <-second
		if r1.err != nil || r2.err != nil {
			t.Fatal(r1.err, r2.err)
		}
		if r1.r.Outcome != Applied || r2.r.Outcome != Joined {
			t.Errorf("outcomes %s, %s; want applied, joined", r1.r.Outcome, r2.r.Outcome)
		}
		if r1.r.Report == nil || r1.r.Report != r2.r.Report {
			t.Errorf("the joined call did not get the same report")
		}
		if s := a.steps(); s != "MASTER" {
			t.Errorf("steps %q, want one commit", s)
		}
		// The same state again, nothing running: a duplicate with the last report.
		r, err := c.Handle(context.Background(), notify(Group, Master))
		if err != nil || r.Outcome != Duplicate || r.Report == nil || r.Report.Created != r1.r.Report.Created {
			t.Errorf("repeat: %+v %v", r, err)
		}
	})
}

func TestCoordinatorLastWins(t *testing.T) {
	// In a bubble: the waits for the calls to arrive take no real time.
	synctest.Test(t, func(t *testing.T) {
		a := &fakeActions{started: make(chan State, 10), gate: make(chan struct{})}
		c := newTestCoordinator(t, a)
		m := handleAsync(c, notify(Group, Master))
		<-a.started
		// While the commit runs: BACKUP, FAULT, BACKUP. The commit finishes;
		// then only the newest, BACKUP, runs.
		b1 := handleAsync(c, notify(Group, Backup))
		waitSeq(t, c, 2)
		f := handleAsync(c, notify(Group, Fault))
		waitSeq(t, c, 3)
		b2 := handleAsync(c, notify(Instance, Backup))
		waitSeq(t, c, 4)
		if r := <-b1; r.r.Outcome != Superseded || r.err != nil {
			t.Errorf("first BACKUP: %+v", r)
		}
		if r := <-f; r.r.Outcome != Superseded || r.err != nil {
			t.Errorf("FAULT: %+v", r)
		}
		a.gate <- struct{}{} // the commit ends
		if r := <-m; r.r.Outcome != Applied || r.err != nil {
			t.Errorf("MASTER: %+v", r)
		}
		if s := <-a.started; s != Backup {
			t.Fatalf("next step %s", s)
		}
		a.gate <- struct{}{}
		if r := <-b2; r.r.Outcome != Applied || r.err != nil {
			t.Errorf("last BACKUP: %+v", r)
		}
		if s := a.steps(); s != "MASTER BACKUP" {
			t.Errorf("steps %q", s)
		}
		if c.State() != Backup {
			t.Errorf("state %s", c.State())
		}
	})
}

func TestCoordinatorBackToRunning(t *testing.T) {
	// In a bubble: the waits for the calls to arrive take no real time.
	synctest.Test(t, func(t *testing.T) {
		// MASTER runs, BACKUP queued, MASTER again: the BACKUP is dropped and
		// the second MASTER joins the running commit.
		a := &fakeActions{started: make(chan State, 10), gate: make(chan struct{})}
		c := newTestCoordinator(t, a)
		m1 := handleAsync(c, notify(Group, Master))
		<-a.started
		b := handleAsync(c, notify(Group, Backup))
		waitSeq(t, c, 2)
		m2 := handleAsync(c, notify(Group, Master))
		waitSeq(t, c, 3)
		if r := <-b; r.r.Outcome != Superseded {
			t.Errorf("BACKUP: %+v", r)
		}
		a.gate <- struct{}{}
		if r := <-m1; r.r.Outcome != Applied {
			t.Errorf("first MASTER %+v", r)
		}
		if r := <-m2; r.r.Outcome != Joined {
			t.Errorf("second MASTER %+v", r)
		}
		if s := a.steps(); s != "MASTER" || c.State() != Master {
			t.Errorf("steps %q, state %s", s, c.State())
		}
	})
}

func TestCoordinatorFailureRetries(t *testing.T) {
	a := &fakeActions{}
	boom := errors.New("boom")
	a.fail.Store(&boom)
	c := newTestCoordinator(t, a)
	if _, err := c.Handle(context.Background(), notify(Group, Backup)); !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
	if c.State() != "" {
		t.Errorf("state %q after a failure", c.State())
	}
	a.fail.Store(nil)
	r, err := c.Handle(context.Background(), notify(Group, Backup))
	if err != nil || r.Outcome != Applied {
		t.Fatalf("retry %+v %v", r, err)
	}
	if s := a.steps(); s != "BACKUP BACKUP" {
		t.Errorf("steps %q", s)
	}
}

func TestCoordinatorCallerGone(t *testing.T) {
	a := &fakeActions{started: make(chan State, 10), gate: make(chan struct{})}
	c := newTestCoordinator(t, a)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Handle(ctx, notify(Group, Master))
		done <- err
	}()
	<-a.started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	// The commit still completes.
	a.gate <- struct{}{}
	r, err := c.Handle(context.Background(), notify(Group, Master))
	if err != nil || (r.Outcome != Duplicate && r.Outcome != Joined) {
		t.Errorf("%+v %v", r, err)
	}
}

func TestCoordinatorClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := &fakeActions{started: make(chan State, 10), gate: make(chan struct{})}
		c := NewCoordinator(a, nil)
		m := handleAsync(c, notify(Group, Master))
		<-a.started
		b := handleAsync(c, notify(Group, Backup))
		waitSeq(t, c, 2)
		c.Close() // cancels the running commit; the queued BACKUP fails
		if r := <-m; !errors.Is(r.err, context.Canceled) {
			t.Errorf("running step: %v", r.err)
		}
		if r := <-b; !errors.Is(r.err, ErrClosed) {
			t.Errorf("queued step: %v", r.err)
		}
		if _, err := c.Handle(context.Background(), notify(Group, Master)); !errors.Is(err, ErrClosed) {
			t.Errorf("after Close: %v", err)
		}
		c.Close()
	})
}
