package failover

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// ExpectWriter writes expectations into the kernel. *kernel.Writer
// satisfies it: CreateExpect creates (or, when one exists, re-times) each
// expectation with max(floor, Timeout-age), after its master must exist
// with a helper; UpdateExpect re-times existing ones to Timeout as is.
type ExpectWriter interface {
	CreateExpect(ctx context.Context, exps []flow.Expect, age []time.Duration) ([]kernel.ExpectResult, error)
	UpdateExpect(ctx context.Context, exps []flow.Expect) ([]kernel.ExpectResult, error)
}

var _ ExpectWriter = (*kernel.Writer)(nil)

// ExpectReport is the outcome of committing expectations.
type ExpectReport struct {
	Expectations int `json:"expectations"` // in the external cache's snapshot (one per key)
	Created      int `json:"created"`
	Updated      int `json:"updated"` // existed already: re-timed
	// Expired counts the expectations whose timeout ran out since the
	// origin reported them: dropped, not written.
	Expired int `json:"expired,omitempty"`
	// NoMaster counts those whose master flow is not in the kernel
	// (ENOENT) or has no helper there (EOPNOTSUPP): reported and dropped
	// from the cache, never retried.
	NoMaster int `json:"no_master,omitempty"`
	// Failed counts the other failures; those stay in the cache for the
	// next commit.
	Failed   int            `json:"failed,omitempty"`
	Failures []Failure      `json:"failures,omitempty"`
	Errnos   map[string]int `json:"errnos,omitempty"`
}

func (r *ExpectReport) fail(e *flow.Expect, err error, max int) {
	if r.Errnos == nil {
		r.Errnos = make(map[string]int)
	}
	r.Errnos[errName(err)]++
	if len(r.Failures) < max {
		r.Failures = append(r.Failures, Failure{Flow: e.String(), Error: err.Error()})
	}
}

// CommitExpects writes the external cache's expectations into the kernel
// through w, after Commit has written their masters, and removes from the
// cache those written and those that cannot be (master missing, expired).
// When several origins hold the same key, the most recently received one
// is written. maxFailures bounds the failures described one by one
// (default DefaultMaxFailures).
func CommitExpects(ctx context.Context, ext *cache.External, w ExpectWriter, maxFailures int) (*ExpectReport, error) {
	if maxFailures <= 0 {
		maxFailures = DefaultMaxFailures
	}
	rep := &ExpectReport{}
	snap := ext.ExpectSnapshot()
	latest := make(map[flow.ExpectKey]int, len(snap))
	for i := range snap {
		if j, ok := latest[snap[i].Expect.ExpectKey]; !ok || snap[i].Received.After(snap[j].Received) {
			latest[snap[i].Expect.ExpectKey] = i
		}
	}
	now := time.Now()
	var (
		exps []flow.Expect
		age  []time.Duration
		drop []flow.ExpectKey
	)
	for k, i := range latest {
		x := &snap[i]
		a := x.Age(now)
		if time.Duration(x.Expect.Timeout)*time.Second <= a {
			rep.Expired++
			drop = append(drop, k)
			continue
		}
		exps = append(exps, x.Expect)
		age = append(age, a)
	}
	rep.Expectations = len(latest)
	var err error
	if len(exps) > 0 {
		var res []kernel.ExpectResult
		res, err = w.CreateExpect(ctx, exps, age)
		for i := range exps {
			e := &exps[i]
			if i >= len(res) {
				rep.Failed++
				rep.fail(e, cmp.Or(err, errors.New("no result")), maxFailures)
				continue
			}
			switch r := res[i]; {
			case r.Op == kernel.Created:
				rep.Created++
				drop = append(drop, e.ExpectKey)
			case r.Op == kernel.Updated:
				rep.Updated++
				drop = append(drop, e.ExpectKey)
			case errors.Is(r.Err, unix.ENOENT) || errors.Is(r.Err, unix.EOPNOTSUPP):
				rep.NoMaster++
				rep.fail(e, fmt.Errorf("master flow missing or without its helper: %w", r.Err), maxFailures)
				drop = append(drop, e.ExpectKey)
			default:
				rep.Failed++
				rep.fail(e, cmp.Or(r.Err, errors.New(r.Op.String())), maxFailures)
			}
		}
	}
	ext.RemoveExpects(drop)
	if err != nil {
		return rep, fmt.Errorf("failover: commit expectations: %w", err)
	}
	return rep, nil
}

// ExpectDumpFunc streams the kernel's expectations to fn; e is reused
// after fn returns. kernel.DumpExpect with its options bound satisfies it.
type ExpectDumpFunc func(ctx context.Context, fn func(e *flow.Expect)) error

// PurgeExpects caps at purgeTimeout the timeout of the kernel's
// expectations that match accepts, as Purge does for flows: the new master
// owns them now. It returns how many it capped.
func PurgeExpects(ctx context.Context, dump ExpectDumpFunc, w ExpectWriter, match func(*flow.Expect) bool, purgeTimeout time.Duration) (int, error) {
	capSec := uint32(min(max(purgeTimeout/time.Second, 1), 1<<31))
	var todo []flow.Expect
	if err := dump(ctx, func(e *flow.Expect) {
		if e.Timeout > capSec && (match == nil || match(e)) {
			g := *e
			g.Timeout = capSec
			todo = append(todo, g)
		}
	}); err != nil {
		return 0, fmt.Errorf("failover: purge expectations: dump: %w", err)
	}
	if len(todo) == 0 {
		return 0, nil
	}
	res, err := w.UpdateExpect(ctx, todo)
	n := 0
	for _, r := range res {
		if r.Op == kernel.Updated {
			n++
		}
	}
	if err != nil {
		return n, fmt.Errorf("failover: purge expectations: %w", err)
	}
	return n, nil
}
