//go:build kernel

package kernel

import (
	"context"
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// The events of the writer's own sockets are dropped by the kernel (the BPF
// filter IgnorePorts attaches), not decoded and skipped here: the
// listener's own-write counter stays 0 while a second listener without the
// filter, the control, sees every one of them, and a foreign create after
// them still arrives.
func TestKernelListenerDropsOwnWritesInKernel(t *testing.T) {
	ns := netnstest.New(t)
	netnstest.Need(t, "conntrack")
	w := newTestWriter(t, ns, WriterOptions{Sockets: 2, Batch: 4})

	listen := func(ignore bool) (*Listener, *eventRecorder) {
		l, err := Listen(ListenOptions{NetNS: ns.FD(t), ReadBuffer: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if ignore {
			l.IgnorePorts(w.PortIDs())
			if !l.KernelFiltered() {
				t.Fatal("the BPF filter was not attached")
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		rec := &eventRecorder{}
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx, rec) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		return l, rec
	}
	filtered, frec := listen(true)
	_, crec := listen(false)

	flows := testFlows(64)
	if res, err := w.Commit(context.Background(), flows, nil); err != nil || countOps(res)[Created] != len(flows) {
		t.Fatalf("commit: %v %v", err, countOps(res))
	}
	cli := mustAddr("10.77.0.1")
	isTest := func(f *flow.Flow) bool { return (f.Orig.Src[0] == 10 || f.Orig.Src[0] == 0x20) && f.Orig.Src != cli }
	waitEvents(t, crec, len(flows), isTest) // the control saw them all

	// A foreign create after the commit: once it is in, every event of the
	// commit has been delivered to (or dropped for) the filtered listener.
	ns.Exec(t, "conntrack", "-I", "-p", "udp", "-s", "10.77.0.1", "-d", "10.77.0.2",
		"--sport", "1111", "--dport", "2222", "-t", "100")
	waitEvents(t, frec, 1, func(f *flow.Flow) bool { return f.Orig.Src == cli })
	if got := frec.eventsOf(EventNew, isTest); len(got) != 0 {
		t.Errorf("the filtered listener got %d events of its own writes", len(got))
	}
	if own := filtered.Stats().Own; own != 0 {
		t.Errorf("%d own-write events reached user space, want 0 (dropped by the kernel)", own)
	}
}

// PauseNew leaves the NEW events' group and joins it again: while paused
// a create is not announced but an update of the same flow is; after
// PauseNew(false) creates are announced again (the control: the same
// listener, the same kind of create).
func TestKernelListenerPauseNew(t *testing.T) {
	ns := netnstest.New(t)
	netnstest.Need(t, "conntrack")
	l, err := Listen(ListenOptions{NetNS: ns.FD(t), ReadBuffer: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rec := &eventRecorder{}
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, rec) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	create := func(src string) {
		ns.Exec(t, "conntrack", "-I", "-p", "udp", "-s", src, "-d", "10.77.0.2",
			"--sport", "1111", "--dport", "2222", "-t", "100")
	}
	from := func(src string) func(*flow.Flow) bool {
		a := mustAddr(src)
		return func(f *flow.Flow) bool { return f.Orig.Src == a }
	}

	if err := l.PauseNew(true); err != nil {
		t.Fatal(err)
	}
	create("10.77.1.1")
	ns.Exec(t, "conntrack", "-U", "-p", "udp", "-s", "10.77.1.1", "-m", "5")
	// The update comes after the create would have: once it is in, a
	// NEW event of the create would be too.
	waitEventsOf(t, rec, EventUpdate, 1, from("10.77.1.1"))
	if got := rec.eventsOf(EventNew, from("10.77.1.1")); len(got) != 0 {
		t.Errorf("%d NEW events while paused, want 0", len(got))
	}

	if err := l.PauseNew(false); err != nil {
		t.Fatal(err)
	}
	create("10.77.1.2")
	waitEvents(t, rec, 1, from("10.77.1.2"))
}
