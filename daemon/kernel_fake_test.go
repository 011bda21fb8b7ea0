package daemon

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// fakeKernel is a conntrack table in memory behind the daemon's Kernel
// interface. Tests change the table, feed events to the listener the daemon
// runs (each delivered before feed returns), set the local addresses, and
// read back what the daemon wrote.
type fakeKernel struct {
	mu      sync.Mutex
	table   map[flow.Key]flow.Flow
	dumps   int      // full dumps of the table
	ops     []string // writer operations, in order
	ignored []uint32 // ports the listener was told to ignore
	running bool     // the listener's Run has started
	// dumpDelay is how long a dump takes (a large table).
	dumpDelay time.Duration
	// newPaused: the listener left the NEW events (PauseNew); feed then
	// changes the table without a NEW event, as the kernel does.
	newPaused bool
	// duringCommit, when set, runs at the start of every writer Commit,
	// without the lock (traffic while a commit runs); an error it returns
	// is the Commit's, with nothing written.
	duringCommit func() error

	events chan fakeEvent
	addrs  chan []netip.Addr
}

// fakeEvent is an event (or, with overrun, an overrun) and a channel
// closed once the daemon has handled it.
type fakeEvent struct {
	ev      kernel.Event
	overrun bool
	done    chan struct{}
}

// fakePorts are the netlink port ids of the fake writer's sockets.
var fakePorts = []uint32{7001, 7002}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{table: map[flow.Key]flow.Flow{}, events: make(chan fakeEvent), addrs: make(chan []netip.Addr)}
}

// put sets entries in the table without events (as a lost event would).
func (k *fakeKernel) put(fs ...flow.Flow) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, f := range fs {
		k.table[f.Key] = f
	}
}

func (k *fakeKernel) get(key flow.Key) (flow.Flow, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f, ok := k.table[key]
	return f, ok
}

func (k *fakeKernel) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.table)
}

func (k *fakeKernel) dumpCount() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dumps
}

func (k *fakeKernel) opsDone() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.ops)
}

// remove deletes an entry from the table without an event.
func (k *fakeKernel) remove(key flow.Key) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.table, key)
}

// feed changes the table as the event says and delivers the event to the
// daemon; it returns once the daemon has handled it.
func (k *fakeKernel) feed(typ kernel.EventType, f flow.Flow, port uint32) {
	if typ == kernel.EventDestroy {
		k.remove(f.Key)
	} else {
		k.put(f)
	}
	k.mu.Lock()
	unheard := typ == kernel.EventNew && k.newPaused
	k.mu.Unlock()
	if unheard {
		return
	}
	e := fakeEvent{ev: kernel.Event{Type: typ, Flow: f, PortID: port}, done: make(chan struct{})}
	k.events <- e
	<-e.done
}

// overrun tells the daemon that events were lost.
func (k *fakeKernel) overrun() {
	e := fakeEvent{overrun: true, done: make(chan struct{})}
	k.events <- e
	<-e.done
}

func (k *fakeKernel) Listen(kernel.ListenOptions) (Events, error) { return fakeEvents{k}, nil }
func (k *fakeKernel) EnsureEvents() error                         { return nil }
func (k *fakeKernel) NewWriter(kernel.WriterOptions) (TableWriter, error) {
	return fakeWriter{k}, nil
}

func (k *fakeKernel) Dump(ctx context.Context, _ kernel.DumpOptions, fn func(*flow.Flow)) error {
	k.mu.Lock()
	k.dumps++
	all := make([]flow.Flow, 0, len(k.table))
	for _, f := range k.table {
		all = append(all, f)
	}
	delay := k.dumpDelay
	k.mu.Unlock()
	time.Sleep(delay)
	for i := range all {
		fn(&all[i])
	}
	return ctx.Err()
}

func (k *fakeKernel) DumpExpect(ctx context.Context, _ kernel.DumpOptions, _ func(*flow.Expect)) error {
	return ctx.Err()
}

func (k *fakeKernel) WatchAddrs(ctx context.Context, _ int, fn func([]netip.Addr)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case a := <-k.addrs:
			fn(a)
		}
	}
}

type fakeEvents struct{ k *fakeKernel }

func (l fakeEvents) Run(ctx context.Context, h kernel.Handler) error {
	l.k.mu.Lock()
	l.k.running = true
	l.k.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-l.k.events:
			if e.overrun {
				h.Overrun()
			} else {
				h.Event(&e.ev)
			}
			close(e.done)
		}
	}
}

func (l fakeEvents) IgnorePorts(ports []uint32) {
	l.k.mu.Lock()
	defer l.k.mu.Unlock()
	if l.k.running {
		panic("IgnorePorts after the listener started")
	}
	l.k.ignored = slices.Clone(ports)
}

func (l fakeEvents) PauseNew(pause bool) error {
	l.k.mu.Lock()
	defer l.k.mu.Unlock()
	l.k.newPaused = pause
	l.k.ops = append(l.k.ops, map[bool]string{true: "pause-new", false: "resume-new"}[pause])
	return nil
}

func (fakeEvents) KernelFiltered() bool              { return false }
func (fakeEvents) ReadBuffer() int                   { return 1 << 20 }
func (fakeEvents) Stats() kernel.ListenerStats       { return kernel.ListenerStats{} }
func (fakeEvents) Close() error                      { return nil }
func (fakeWriter) PortIDs() []uint32                 { return slices.Clone(fakePorts) }
func (fakeWriter) Close() error                      { return nil }
func (fakeWriter) FlushExpect(context.Context) error { return nil }

// fakeWriter writes the fake table as the kernel would: create or update,
// update only existing entries, delete.
type fakeWriter struct{ k *fakeKernel }

func (w fakeWriter) Commit(_ context.Context, flows []flow.Flow, _ []time.Duration) ([]kernel.Result, error) {
	w.k.mu.Lock()
	hook := w.k.duringCommit
	w.k.mu.Unlock()
	var herr error
	if hook != nil {
		herr = hook()
	}
	w.k.mu.Lock()
	defer w.k.mu.Unlock()
	w.k.ops = append(w.k.ops, "commit")
	if herr != nil {
		return nil, herr
	}
	res := make([]kernel.Result, len(flows))
	for i, f := range flows {
		res[i] = kernel.Result{Key: f.Key, Op: kernel.Created}
		if _, ok := w.k.table[f.Key]; ok {
			res[i].Op = kernel.Updated
		}
		w.k.table[f.Key] = f
	}
	return res, nil
}

func (w fakeWriter) Update(_ context.Context, flows []flow.Flow) ([]kernel.Result, error) {
	w.k.mu.Lock()
	defer w.k.mu.Unlock()
	w.k.ops = append(w.k.ops, "update")
	res := make([]kernel.Result, len(flows))
	for i, f := range flows {
		res[i] = kernel.Result{Key: f.Key, Op: kernel.Updated}
		cur, ok := w.k.table[f.Key]
		if !ok {
			res[i] = kernel.Result{Key: f.Key, Op: kernel.Failed, Err: &kernel.OpError{Op: "update", Err: errNoEntry}}
			continue
		}
		if f.Timeout != 0 {
			cur.Timeout = f.Timeout
		}
		w.k.table[f.Key] = cur
	}
	return res, nil
}

func (w fakeWriter) Delete(_ context.Context, keys []flow.Key) ([]kernel.Result, error) {
	w.k.mu.Lock()
	defer w.k.mu.Unlock()
	w.k.ops = append(w.k.ops, "delete")
	res := make([]kernel.Result, len(keys))
	for i, key := range keys {
		res[i] = kernel.Result{Key: key, Op: kernel.Deleted}
		delete(w.k.table, key)
	}
	return res, nil
}

func (w fakeWriter) Flush(context.Context) error {
	w.k.mu.Lock()
	defer w.k.mu.Unlock()
	w.k.ops = append(w.k.ops, "flush")
	clear(w.k.table)
	return nil
}

func (w fakeWriter) CreateExpect(_ context.Context, exps []flow.Expect, _ []time.Duration) ([]kernel.ExpectResult, error) {
	return make([]kernel.ExpectResult, len(exps)), nil
}

func (w fakeWriter) UpdateExpect(_ context.Context, exps []flow.Expect) ([]kernel.ExpectResult, error) {
	return make([]kernel.ExpectResult, len(exps)), nil
}
