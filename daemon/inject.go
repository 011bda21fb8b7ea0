package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// Inject mode (sync.inject): what peers replicate goes straight into this
// node's kernel, as conntrackd's DisableExternalCache does. The external
// cache is still kept (status, dump, bulk bookkeeping) but a commit has
// nothing to write: it only adopts the flows (see adopt).
//
// Writes go through a writer of their own (one socket, KeepNewerTCP: a
// peer's older report never moves a TCP entry back), whose port id is
// ignored by the event reader, so injected flows are never replicated back
// as local events. Changes are coalesced per flow (the latest wins) in a
// bounded map and written in batches by run; a full map is written by the
// caller (the sync node's goroutine), which is the back-pressure. Urgent
// changes (DATA_NOW of first-packet defer) are written at once, before the
// node acknowledges them.
//
// A peer's removal of a flow is written only when this node has not seen
// the flow itself (it is not in the internal cache): with asymmetric paths
// each firewall sees one direction, and the other's entry may time out
// while this one's traffic goes on (a one-way stream through this node);
// this kernel's own timeout ends what it sees.

// injectWriter is what the injector needs of kernel.Writer.
type injectWriter interface {
	Commit(ctx context.Context, flows []flow.Flow, age []time.Duration) ([]kernel.Result, error)
	Delete(ctx context.Context, keys []flow.Key) ([]kernel.Result, error)
}

// injectMaxPending bounds the changes waiting to be written.
const injectMaxPending = 65536

// injectWriteTimeout bounds one write of the injector.
const injectWriteTimeout = 10 * time.Second

// InjectStats are the counters of inject mode, in `ctsyncctl stats`.
type InjectStats struct {
	Written   uint64 `json:"written"`    // flows created or updated in the kernel
	Kept      uint64 `json:"kept"`       // updates not written: the kernel's TCP state was ahead
	Deleted   uint64 `json:"deleted"`    // removals written (a flow already gone counts too)
	KeptLocal uint64 `json:"kept_local"` // removals not written: this node sees the flow itself
	Failed    uint64 `json:"failed"`     // writes the kernel refused
	Coalesced uint64 `json:"coalesced"`  // changes replaced by a newer one before being written
	Urgent    uint64 `json:"urgent"`     // changes written at once (first-packet defer)
	Pending   int    `json:"pending"`    // changes waiting to be written
	Adopted   uint64 `json:"adopted"`    // flows adopted by commits
}

type injector struct {
	w     injectWriter
	log   *slog.Logger
	max   int
	local func(flow.Key) bool // the flow is this node's own (internal cache); nil: none is

	mu      sync.Mutex
	pending map[flow.Key]cache.Change
	wake    chan struct{}

	written, kept, deleted, keptLocal, failed, coalesced, urgent, adopted atomic.Uint64
	lastWarn                                                              atomic.Int64 // unix nanoseconds of the last failure logged
}

func newInjector(w injectWriter, log *slog.Logger, max int, local func(flow.Key) bool) *injector {
	if max <= 0 {
		max = injectMaxPending
	}
	return &injector{w: w, log: log, max: max, local: local, pending: make(map[flow.Key]cache.Change), wake: make(chan struct{}, 1)}
}

// applied is the sync node's Applied hook.
func (in *injector) applied(_ string, chs []cache.Change, urgent bool) {
	if in.local != nil {
		var kept []cache.Change
		for i := range chs {
			if chs[i].Deleted && in.local(chs[i].Flow.Key) {
				in.keptLocal.Add(1)
				continue
			}
			kept = append(kept, chs[i])
		}
		if chs = kept; len(chs) == 0 {
			return
		}
	}
	if urgent {
		in.mu.Lock()
		for i := range chs {
			delete(in.pending, chs[i].Flow.Key) // older than these
		}
		in.mu.Unlock()
		in.urgent.Add(uint64(len(chs)))
		in.write(chs)
		return
	}
	in.mu.Lock()
	for i := range chs {
		k := chs[i].Flow.Key
		if _, ok := in.pending[k]; ok {
			in.coalesced.Add(1)
		}
		in.pending[k] = chs[i]
	}
	var full []cache.Change
	if len(in.pending) >= in.max {
		full = in.takeLocked(0)
	}
	in.mu.Unlock()
	if full != nil {
		in.write(full)
		return
	}
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// takeLocked removes up to n pending changes (all when n is 0).
func (in *injector) takeLocked(n int) []cache.Change {
	if n <= 0 || n > len(in.pending) {
		n = len(in.pending)
	}
	out := make([]cache.Change, 0, n)
	for k, ch := range in.pending {
		if len(out) == n {
			break
		}
		out = append(out, ch)
		delete(in.pending, k)
	}
	return out
}

// run writes pending changes until ctx ends.
func (in *injector) run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-in.wake:
		}
		for {
			in.mu.Lock()
			chs := in.takeLocked(kernel.DefaultWriterBatch * 4)
			in.mu.Unlock()
			if len(chs) == 0 {
				break
			}
			in.write(chs)
		}
	}
}

// write writes changes into the kernel: upserts through Commit (create,
// or update unless the kernel is ahead), removals through Delete.
func (in *injector) write(chs []cache.Change) {
	var ups []flow.Flow
	var dels []flow.Key
	for i := range chs {
		if chs[i].Deleted {
			dels = append(dels, chs[i].Flow.Key)
		} else {
			ups = append(ups, chs[i].Flow)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), injectWriteTimeout)
	defer cancel()
	if len(ups) > 0 {
		res, err := in.w.Commit(ctx, ups, nil)
		for _, r := range res {
			switch r.Op {
			case kernel.Created, kernel.Updated, kernel.Replaced:
				in.written.Add(1)
			case kernel.Kept:
				in.kept.Add(1)
			default:
				in.failed.Add(1)
				in.warn("inject: write refused", r.Err)
			}
		}
		if err != nil {
			in.warn("inject: write failed", err)
		}
	}
	if len(dels) > 0 {
		res, err := in.w.Delete(ctx, dels)
		for _, r := range res {
			if r.Op == kernel.Deleted || errors.Is(r.Err, unix.ENOENT) {
				in.deleted.Add(1)
				continue
			}
			in.failed.Add(1)
			in.warn("inject: delete refused", r.Err)
		}
		if err != nil {
			in.warn("inject: delete failed", err)
		}
	}
}

// warn logs a failure at most every 10 s.
func (in *injector) warn(msg string, err error) {
	now := time.Now().UnixNano()
	last := in.lastWarn.Load()
	if now-last < int64(10*time.Second) || !in.lastWarn.CompareAndSwap(last, now) {
		return
	}
	in.log.Warn(msg, "err", err, "failed_total", in.failed.Load())
}

func (in *injector) stats() *InjectStats {
	in.mu.Lock()
	pending := len(in.pending)
	in.mu.Unlock()
	return &InjectStats{
		Written: in.written.Load(), Kept: in.kept.Load(), Deleted: in.deleted.Load(), KeptLocal: in.keptLocal.Load(), Failed: in.failed.Load(),
		Coalesced: in.coalesced.Load(), Urgent: in.urgent.Load(), Pending: pending, Adopted: in.adopted.Load(),
	}
}

// openInjector opens the injector's writer and registers its port ids as
// this daemon's own. It runs in Run before any event is read.
func (d *Daemon) openInjector() (*kernel.Writer, error) {
	w, err := kernel.NewWriter(kernel.WriterOptions{
		Sockets: 1, Batch: d.cfg.Kernel.WriteBatch, NetNS: d.netns,
		MinTimeout: uint32(d.cfg.Failover.MinTimeout.Seconds()), KeepNewerTCP: true,
	})
	if err != nil {
		return nil, fmt.Errorf("open the inject writer: %w", err)
	}
	ports := append(append([]uint32(nil), *d.ownPorts.Load()...), w.PortIDs()...)
	d.ownPorts.Store(&ports)
	d.listener.IgnorePorts(ports)
	d.inject = newInjector(w, d.log.With("part", "inject"), injectMaxPending, func(k flow.Key) bool {
		_, ok := d.internal.Get(k)
		return ok
	})
	return w, nil
}

// adopt is a commit in inject mode: the peers' flows are in the kernel
// already, so nothing is written; the external cache is emptied so that
// the reconcile after it takes the flows as this node's own (and the bulk
// after it sends them to the peers). A second commit finds nothing.
func (d *Daemon) adopt() *failover.Report {
	start := time.Now()
	n := 0
	for _, o := range d.external.Origins() {
		n += d.external.Flush(o)
	}
	d.inject.adopted.Add(uint64(n))
	d.log.Info("commit in inject mode: the flows are in the kernel already; adopted as this node's own", "flows", n)
	return &failover.Report{Flows: n, Seconds: time.Since(start).Seconds()}
}

// injectedOnly returns, in inject mode, a test for the reconciler: a flow
// that a peer which is up replicated and this node has not seen change
// itself is left out of the internal cache, so that it is not sent back to
// where it came from. Flows of peers that are down are taken (so that a
// peer that restarts gets them back in its bulk). nil outside inject mode.
func (d *Daemon) injectedOnly() func(k flow.Key) bool {
	if d.inject == nil || d.node == nil {
		return nil
	}
	var up []string
	for name, p := range d.node.Stats() {
		if p.Up && p.Name != "" {
			up = append(up, name)
		}
	}
	if len(up) == 0 {
		return nil
	}
	return func(k flow.Key) bool {
		for _, o := range up {
			if d.external.Has(o, k) {
				_, local := d.internal.Get(k)
				return !local
			}
		}
		return false
	}
}

// injectHook is the sync node's Applied hook: nil outside inject mode.
func (d *Daemon) injectHook() func(string, []cache.Change, bool) {
	if d.inject == nil {
		return nil
	}
	return d.inject.applied
}
