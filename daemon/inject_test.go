package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// fakeInjectKernel records what the injector writes.
type fakeInjectKernel struct {
	mu      sync.Mutex
	commits [][]flow.Flow
	deletes [][]flow.Key
	table   map[flow.Key]flow.Flow
}

func (k *fakeInjectKernel) Commit(_ context.Context, fs []flow.Flow, _ []time.Duration) ([]kernel.Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.commits = append(k.commits, append([]flow.Flow(nil), fs...))
	res := make([]kernel.Result, len(fs))
	for i, f := range fs {
		res[i] = kernel.Result{Key: f.Key, Op: kernel.Created}
		if cur, ok := k.table[f.Key]; ok {
			res[i].Op = kernel.Updated
			if cur.TCP.State > f.TCP.State {
				res[i].Op = kernel.Kept
				continue
			}
		}
		k.table[f.Key] = f
	}
	return res, nil
}

func (k *fakeInjectKernel) Delete(_ context.Context, keys []flow.Key) ([]kernel.Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.deletes = append(k.deletes, append([]flow.Key(nil), keys...))
	res := make([]kernel.Result, len(keys))
	for i, key := range keys {
		res[i] = kernel.Result{Key: key, Op: kernel.Deleted}
		if _, ok := k.table[key]; !ok {
			res[i] = kernel.Result{Key: key, Op: kernel.Failed, Err: &kernel.OpError{Op: "delete", Err: unix.ENOENT}}
		}
		delete(k.table, key)
	}
	return res, nil
}

func (k *fakeInjectKernel) state(key flow.Key) (uint8, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f, ok := k.table[key]
	return f.TCP.State, ok
}

func testTCP(n int, st uint8) flow.Flow {
	f := flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP}}
	f.Orig.Src = flow.AddrFrom(netip.AddrFrom4([4]byte{10, 0, 1, byte(n)}))
	f.Orig.Dst = flow.AddrFrom(netip.MustParseAddr("10.0.2.2"))
	f.Orig.SrcPort, f.Orig.DstPort = uint16(40000+n), 80
	f.Reply = f.Orig.Invert(f.Proto)
	f.TCP.State, f.Timeout = st, 120
	return f
}

func TestInjectorUrgentIsSynchronous(t *testing.T) {
	k := &fakeInjectKernel{table: map[flow.Key]flow.Flow{}}
	in := newInjector(k, slog.New(slog.DiscardHandler), 0, nil)
	f := testTCP(1, flow.TCPSynSent)
	in.applied("fw-a", []cache.Change{{Flow: f}}, true)
	if st, ok := k.state(f.Key); !ok || st != flow.TCPSynSent {
		t.Fatal("urgent change not in the kernel when applied returned")
	}
	if s := in.stats(); s.Urgent != 1 || s.Written != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestInjectorCoalescesAndDeletes(t *testing.T) {
	k := &fakeInjectKernel{table: map[flow.Key]flow.Flow{}}
	in := newInjector(k, slog.New(slog.DiscardHandler), 0, nil)
	a, b := testTCP(1, flow.TCPSynSent), testTCP(2, flow.TCPSynSent)
	est := testTCP(1, flow.TCPEstablished)
	in.applied("fw-a", []cache.Change{{Flow: a}, {Flow: b}}, false)
	in.applied("fw-a", []cache.Change{{Flow: est}, {Flow: b, Deleted: true}}, false)
	in.applied("fw-a", []cache.Change{{Flow: testTCP(3, 0), Deleted: true}}, false) // never existed
	if s := in.stats(); s.Pending != 3 || s.Coalesced != 2 {
		t.Fatalf("before run: %+v", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- in.run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for in.stats().Pending > 0 || in.stats().Deleted < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("not written: %+v", in.stats())
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if st, ok := k.state(a.Key); !ok || st != flow.TCPEstablished {
		t.Errorf("flow 1: state %d, %v; want the latest (ESTABLISHED) only", st, ok)
	}
	if _, ok := k.state(b.Key); ok {
		t.Error("flow 2: created, though its removal came before the write")
	}
	if n := len(k.commits); n != 1 || len(k.commits[0]) != 1 {
		t.Errorf("commits %v: want one write of one flow", k.commits)
	}
	if s := in.stats(); s.Failed != 0 || s.Written != 1 || s.Deleted != 2 {
		t.Errorf("stats %+v: a removal of a flow already gone is no failure", s)
	}
}

// A full pending map is written by the caller: the bound holds.
func TestInjectorBound(t *testing.T) {
	k := &fakeInjectKernel{table: map[flow.Key]flow.Flow{}}
	in := newInjector(k, slog.New(slog.DiscardHandler), 10, nil)
	for i := range 25 {
		in.applied("fw-a", []cache.Change{{Flow: testTCP(i, flow.TCPSynSent)}}, false)
		if p := in.stats().Pending; p >= 10 {
			t.Fatalf("pending %d after %d changes, bound 10", p, i+1)
		}
	}
	if len(k.commits) != 2 {
		t.Errorf("%d writes by the caller, want 2", len(k.commits))
	}
}

// A peer's removal of a flow this node sees itself is not written.
func TestInjectorKeepsLocalFlows(t *testing.T) {
	k := &fakeInjectKernel{table: map[flow.Key]flow.Flow{}}
	mine, theirs := testTCP(1, flow.TCPEstablished), testTCP(2, flow.TCPEstablished)
	k.table[mine.Key], k.table[theirs.Key] = mine, theirs
	in := newInjector(k, slog.New(slog.DiscardHandler), 0, func(key flow.Key) bool { return key == mine.Key })
	in.applied("fw-a", []cache.Change{{Flow: mine, Deleted: true}, {Flow: theirs, Deleted: true}}, true)
	if _, ok := k.state(mine.Key); !ok {
		t.Error("this node's own flow was deleted on the peer's word")
	}
	if _, ok := k.state(theirs.Key); ok {
		t.Error("the peer's flow was not deleted")
	}
	if s := in.stats(); s.KeptLocal != 1 || s.Deleted != 1 {
		t.Errorf("stats %+v", s)
	}
}
