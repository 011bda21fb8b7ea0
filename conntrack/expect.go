package conntrack

import (
	"context"
	"errors"
	"fmt"
	"iter"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// Expect is one conntrack expectation: a connection that a helper (ftp,
// sip, tftp) announced on its master flow and the kernel will accept as
// RELATED.
type Expect = flow.Expect

// CheckExpect reports the filter fields that do not apply to
// expectations. An expectation is selected by its expected tuple (family,
// protocol, --orig-src, --orig-dst and their ports), its zone and its
// helper.
func (f *Filter) CheckExpect() error {
	g := Filter{Family: f.Family, Proto: f.Proto, OrigSrc: f.OrigSrc, OrigDst: f.OrigDst,
		OrigSrcPort: f.OrigSrcPort, OrigDstPort: f.OrigDstPort, Zone: f.Zone, Helper: f.Helper}
	if g != *f {
		return &OptionError{Option: f.String(), Err: fmt.Errorf("%w: expectations are selected by -f, -p, -s, -d, --sport, --dport, -w and --helper only", ErrConflict)}
	}
	return nil
}

// MatchExpect reports whether e is selected by f (see CheckExpect).
func (f *Filter) MatchExpect(e *Expect) bool {
	if f.Family != 0 && e.Family != f.Family {
		return false
	}
	if f.Proto != 0 && e.Proto != f.Proto {
		return false
	}
	if !matchPrefix(f.OrigSrc, e.Family, e.Tuple.Src) || !matchPrefix(f.OrigDst, e.Family, e.Tuple.Dst) {
		return false
	}
	if (f.OrigSrcPort.Valid || f.OrigDstPort.Valid) &&
		(!hasPorts(e.Proto) || !matchOpt(f.OrigSrcPort, e.Tuple.SrcPort) || !matchOpt(f.OrigDstPort, e.Tuple.DstPort)) {
		return false
	}
	if f.Zone.Valid && e.Zone != f.Zone.Value {
		return false
	}
	return f.Helper == "" || e.Helper == f.Helper
}

// ListExpect streams the expectations that match f (see CheckExpect). The
// *Expect is reused: it is valid until the loop body returns. The kernel
// does not report an expectation's zone: it reads 0.
func (h *Handle) ListExpect(ctx context.Context, f Filter) iter.Seq2[*Expect, error] {
	return func(yield func(*Expect, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stopped := false
		err := kernel.DumpExpect(ctx, kernel.DumpOptions{NetNS: h.nsfd}, func(e *flow.Expect) {
			if stopped || !f.MatchExpect(e) {
				return
			}
			if !yield(e, nil) {
				stopped = true
				cancel()
			}
		})
		if err != nil && !stopped {
			yield(nil, fmt.Errorf("list expectations: %w", err))
		}
	}
}

// CreateExpect creates the expectation e on its master flow (e.Master,
// e.MasterProto, e.Zone), which must exist and have a helper (else
// ErrNotFound, or unix.EOPNOTSUPP). It lives e.Timeout seconds. When it
// exists already, its timeout is set to e.Timeout and ErrExists returned.
func (h *Handle) CreateExpect(ctx context.Context, e *Expect) error {
	w, err := h.batchWriter()
	if err != nil {
		return err
	}
	res, err := w.CreateExpect(ctx, []flow.Expect{*e}, nil)
	if err != nil {
		return fmt.Errorf("create expectation: %w", err)
	}
	switch res[0].Op {
	case kernel.Created:
		return nil
	case kernel.Updated:
		return wrapErr(&kernel.OpError{Op: "create expectation", Err: unix.EEXIST})
	}
	return wrapErr(res[0].Err)
}

// DeleteExpectMatching deletes the expectations that match f and returns
// how many it deleted; ones that vanish meanwhile are not counted.
func (h *Handle) DeleteExpectMatching(ctx context.Context, f Filter) (int, error) {
	var keys []flow.ExpectKey
	for e, err := range h.ListExpect(ctx, f) {
		if err != nil {
			return 0, err
		}
		keys = append(keys, e.ExpectKey)
	}
	if len(keys) == 0 {
		return 0, nil
	}
	w, err := h.batchWriter()
	if err != nil {
		return 0, err
	}
	res, err := w.DeleteExpect(ctx, keys)
	n := 0
	var first error
	for i := range res {
		switch {
		case res[i].Op == kernel.Deleted:
			n++
		case errors.Is(res[i].Err, unix.ENOENT):
		case first == nil:
			first = res[i].Err
		}
	}
	if err == nil {
		err = first
	}
	if err != nil {
		return n, fmt.Errorf("delete expectations: %w", err)
	}
	return n, nil
}

// FlushExpect deletes every expectation (both families, all zones).
func (h *Handle) FlushExpect(ctx context.Context) error {
	w, err := h.batchWriter()
	if err != nil {
		return err
	}
	return w.FlushExpect(ctx)
}

// GetExpect reads the expectation with k's expected tuple and zone.
func (h *Handle) GetExpect(ctx context.Context, k flow.ExpectKey) (Expect, error) {
	e, err := h.table.GetExpect(ctx, k)
	return e, wrapErr(err)
}

// ExpectEvent is one change of the expectation table: kernel.EventNew or
// kernel.EventDestroy.
type ExpectEvent struct {
	Type   EventType
	PortID uint32
	Expect Expect
}

// WatchExpect streams the expectation events that match f (see
// CheckExpect) as Watch does for flows: until ctx ends or the loop stops,
// with (ExpectEvent{}, ErrOverrun) when events were lost.
func (h *Handle) WatchExpect(ctx context.Context, f Filter, opts WatchOptions) iter.Seq2[ExpectEvent, error] {
	return func(yield func(ExpectEvent, error) bool) {
		h.watch(ctx, opts, true, func(it watchItem) bool {
			if it.err == nil && !f.MatchExpect(&it.xev.Expect) {
				return true
			}
			return yield(it.xev, it.err)
		})
	}
}
