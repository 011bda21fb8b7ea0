package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// First-packet defer ([defer]): the operator's ruleset sends the first
// packet of each new flow (and, for TCP, the SYN-ACK) to an NFQUEUE with
// --queue-bypass. For each packet ctsyncd replicates the packet's flow at
// once (sync.Node.SendNow, ahead of the batch) and accepts the packet when
// every live peer has acknowledged it, after defer.defer_timeout, or at
// once when no peer is up. A packet is never dropped. When ctsyncd is not
// running the rule's --queue-bypass lets packets through, and when the
// queue is full the kernel accepts them (FAIL_OPEN).

// nowSender is what the deferrer needs of the sync node.
type nowSender interface {
	SendNow(chs []cache.Change, done func(acked bool)) int
}

// verdicter is what the deferrer needs of the queue.
type verdicter interface {
	Accept(id uint32) error
}

// DeferStats are the counters of first-packet defer, in `ctsyncctl stats`.
type DeferStats struct {
	Queue       int    `json:"queue"`
	Conntrack   bool   `json:"conntrack_from_kernel"` // flows come from NFQA_CT, not the packet headers
	Deferred    uint64 `json:"deferred"`              // packets held until acknowledged or timed out
	Acked       uint64 `json:"acked_in_time"`         // released because every live peer acknowledged in time
	TimedOut    uint64 `json:"timed_out"`             // released after defer_timeout
	PeerLost    uint64 `json:"peer_lost"`             // released because an awaited peer went down
	NoPeer      uint64 `json:"released_no_peer"`      // released at once: no peer up
	Passed      uint64 `json:"passed"`                // released at once: filtered, not understood, or max_pending reached
	Overflow    uint64 `json:"overflow"`              // of passed: max_pending reached
	Pending     int64  `json:"pending"`               // held now
	VerdictErrs uint64 `json:"verdict_errors"`        // verdicts the kernel refused (the packet then waits for the queue's end)
	// HoldAvg is the mean time a deferred packet was held, in
	// microseconds.
	HoldAvgMicros float64 `json:"hold_avg_us"`
}

type deferrer struct {
	q       verdicter
	node    nowSender
	match   func(*flow.Flow) bool
	timeout time.Duration
	max     int64
	log     *slog.Logger
	num     int
	ct      bool

	pending                                                                     atomic.Int64
	deferred, acked, timedOut, lost, noPeer, passed, overflow, verrs, holdNanos atomic.Uint64
}

// held is one deferred packet; state goes 0 → 1 once, by whoever releases
// it first (acknowledgement or timer).
type held struct {
	id    uint32
	start time.Time
	state atomic.Uint32
}

// packet handles one queued packet on the queue's reading goroutine.
func (df *deferrer) packet(p *kernel.QueuePacket) {
	if !p.HasFlow || !df.match(&p.Flow) {
		df.passed.Add(1)
		df.accept(p.ID)
		return
	}
	if df.pending.Load() >= df.max {
		df.passed.Add(1)
		df.overflow.Add(1)
		df.accept(p.ID)
		return
	}
	h := &held{id: p.ID, start: time.Now()}
	df.pending.Add(1)
	chs := [1]cache.Change{{Flow: p.Flow}}
	if df.node.SendNow(chs[:], func(acked bool) { df.release(h, acked, false) }) == 0 {
		df.pending.Add(-1)
		df.noPeer.Add(1)
		df.accept(p.ID)
		return
	}
	df.deferred.Add(1)
	t := time.AfterFunc(df.timeout, func() { df.release(h, false, true) })
	if h.state.Load() != 0 {
		t.Stop()
	}
}

// release accepts a held packet once.
func (df *deferrer) release(h *held, acked, timedOut bool) {
	if !h.state.CompareAndSwap(0, 1) {
		return
	}
	df.holdNanos.Add(uint64(time.Since(h.start)))
	df.pending.Add(-1)
	switch {
	case acked:
		df.acked.Add(1)
	case timedOut:
		df.timedOut.Add(1)
	default:
		df.lost.Add(1)
	}
	df.accept(h.id)
}

func (df *deferrer) accept(id uint32) {
	if err := df.q.Accept(id); err != nil {
		if df.verrs.Add(1) == 1 {
			df.log.Warn("defer: verdict refused", "err", err)
		}
	}
}

func (df *deferrer) stats() *DeferStats {
	s := &DeferStats{
		Queue: df.num, Conntrack: df.ct,
		Deferred: df.deferred.Load(), Acked: df.acked.Load(), TimedOut: df.timedOut.Load(), PeerLost: df.lost.Load(),
		NoPeer: df.noPeer.Load(), Passed: df.passed.Load(), Overflow: df.overflow.Load(),
		Pending: df.pending.Load(), VerdictErrs: df.verrs.Load(),
	}
	if n := s.Acked + s.TimedOut + s.PeerLost; n > 0 {
		s.HoldAvgMicros = float64(df.holdNanos.Load()) / float64(n) / 1e3
	}
	return s
}

// openDefer probes the kernel, binds the queue and prepares the deferrer.
// It fails with one line naming what the kernel lacks.
func (d *Daemon) openDefer() (*kernel.Queue, error) {
	c := d.cfg.Defer
	tg := kernel.ProbeQueueTargets()
	if !tg.Xtables && !tg.Nftables {
		return nil, errors.New("defer: this kernel cannot queue packets to user space: neither the xtables NFQUEUE target (CONFIG_NETFILTER_XT_TARGET_NFQUEUE) nor nftables' queue expression (CONFIG_NFT_QUEUE) is available")
	}
	q, err := kernel.OpenQueue(kernel.QueueOptions{Num: uint16(c.Queue), NetNS: d.netns})
	if err != nil {
		return nil, fmt.Errorf("defer: %w", err)
	}
	d.deferrer = &deferrer{
		q: q, node: d.node, timeout: c.Timeout.Duration, max: int64(c.MaxPending),
		match: func(f *flow.Flow) bool { return d.filter.Load().Match(f) },
		log:   d.log.With("part", "defer"), num: c.Queue, ct: q.Conntrack(),
	}
	rules := "iptables-legacy (xtables NFQUEUE)"
	if !tg.Xtables {
		rules = "nftables (queue)"
	}
	d.log.Info("defer: queue bound", "queue", c.Queue, "timeout", c.Timeout.Duration,
		"rules", rules, "xtables_nfqueue", tg.Xtables, "nft_queue", tg.Nftables,
		"conntrack_from_kernel", q.Conntrack())
	return q, nil
}

// runDefer consumes the queue until ctx ends.
func (d *Daemon) runDefer(ctx context.Context, q *kernel.Queue) error {
	defer q.Close()
	err := q.Run(ctx, d.deferrer.packet)
	// Unbinding drops what the queue still holds: let the timers release
	// the packets held now first.
	for end := time.Now().Add(2 * d.deferrer.timeout); d.deferrer.pending.Load() > 0 && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("defer: %w", err)
	}
	return nil
}
