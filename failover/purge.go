package failover

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// DumpFunc streams the kernel's conntrack table to fn, one flow at a time;
// the flow is reused after fn returns. kernel.Dump with its options bound
// satisfies it:
//
//	dump := func(ctx context.Context, fn func(*flow.Flow)) error {
//		return kernel.Dump(ctx, kernel.DumpOptions{}, fn)
//	}
type DumpFunc func(ctx context.Context, fn func(*flow.Flow)) error

// purgeChunk is how many flows Purge collects before it writes them.
const purgeChunk = 16384

// PurgeReport is the outcome of a purge.
type PurgeReport struct {
	Seen    int `json:"seen"`    // kernel flows dumped
	Matched int `json:"matched"` // accepted by the match function
	Capped  int `json:"capped"`  // timeouts lowered to the purge timeout
	Gone    int `json:"gone"`    // vanished between dump and update (ENOENT)
	Failed  int `json:"failed"`
	// Seconds is the duration of the purge.
	Seconds float64 `json:"seconds"`
	// Errnos counts the failures by errno name or cause.
	Errnos map[string]int `json:"errnos,omitempty"`
}

// Purge caps the kernel timeout of the flows this node no longer owns after
// it lost mastership: every flow that match accepts (the daemon passes its
// replication filter, so that the firewall's own connections, e.g. an SSH
// session to it, are left alone) and whose remaining timeout exceeds
// purgeTimeout is updated to purgeTimeout: timeout = min(current,
// purgeTimeout). The new master owns those flows now; should the VIPs come
// back before the cap runs out, traffic refreshes them as usual.
//
// The flows are written while the dump runs, in chunks, so memory stays
// bounded. A flow that disappears meanwhile is counted as Gone, not as a
// failure. The error is non-nil when the dump or the writer failed (ctx
// included); the report counts what was done until then.
func Purge(ctx context.Context, dump DumpFunc, w Writer, match func(*flow.Flow) bool, purgeTimeout time.Duration) (PurgeReport, error) {
	start := time.Now()
	var rep PurgeReport
	if purgeTimeout < time.Second {
		return rep, fmt.Errorf("failover: purge: timeout %v is under 1s", purgeTimeout)
	}
	capSec := uint32(min(purgeTimeout/time.Second, 1<<31))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		batch = make([]flow.Flow, 0, purgeChunk)
		werr  error
	)
	flush := func() {
		if len(batch) == 0 || werr != nil {
			return
		}
		res, err := w.Update(ctx, batch)
		for k := range batch {
			var rerr error
			switch {
			case k >= len(res):
				rerr = err
			case res[k].Op == kernel.Updated:
				rep.Capped++
				continue
			default:
				rerr = res[k].Err
			}
			if errors.Is(rerr, unix.ENOENT) {
				rep.Gone++
				continue
			}
			rep.Failed++
			if rep.Errnos == nil {
				rep.Errnos = make(map[string]int)
			}
			if rerr == nil {
				rerr = errors.New("no result")
			}
			rep.Errnos[errName(rerr)]++
		}
		batch = batch[:0]
		if err != nil {
			werr = err
			cancel()
		}
	}
	derr := dump(ctx, func(f *flow.Flow) {
		if werr != nil {
			return
		}
		rep.Seen++
		if !match(f) {
			return
		}
		rep.Matched++
		if f.Timeout <= capSec {
			return
		}
		g := *f
		if f.Extra != nil {
			x := *f.Extra
			g.Extra = &x
		}
		g.Timeout = capSec
		batch = append(batch, g)
		if len(batch) == cap(batch) {
			flush()
		}
	})
	if derr == nil {
		flush()
	}
	rep.Seconds = time.Since(start).Seconds()
	switch {
	case werr != nil:
		return rep, fmt.Errorf("failover: purge: %w", werr)
	case derr != nil:
		return rep, fmt.Errorf("failover: purge: dump: %w", derr)
	}
	return rep, nil
}
