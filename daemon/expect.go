package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// Expectations (sync.expectations): the kernel's expectation events feed
// the internal expectation cache, reconciled with a dump after each flow
// reconcile; the node replicates it; commit writes the peers' expectations
// after their masters; purge caps their timeouts.

// acceptHelper reports whether this node replicates the expectations of
// helper: those sync.expectation_helpers names (all when empty), but for
// the helpers filter.ignore_helpers keeps from replication.
func (d *Daemon) acceptHelper(helper string) bool {
	if slices.Contains(d.cfg.Filter.IgnoreHelpers, helper) {
		return false
	}
	h := d.cfg.Sync.ExpectationHelpers
	return len(h) == 0 || slices.Contains(h, helper)
}

// acceptPeerHelper reports whether this node accepts peers' expectations
// of helper: those sync.expectation_helpers names, or when it names none,
// those of the helpers [peer_policy] lets peers' flows carry (an
// expectation is of no use without its master, which needs its helper).
// The receive policy allows the helpers of both lists on flows.
func (d *Daemon) acceptPeerHelper(helper string) bool {
	if h := d.cfg.Sync.ExpectationHelpers; len(h) > 0 {
		return slices.Contains(h, helper)
	}
	return slices.Contains(d.cfg.PeerPolicy.Helpers, helper)
}

// ExpectEvent implements kernel.ExpectHandler; it runs on the listener
// goroutine.
func (d *Daemon) ExpectEvent(ev *kernel.ExpectEvent) {
	if d.iexp == nil {
		return
	}
	if ev.PortID != 0 && slices.Contains(*d.ownPorts.Load(), ev.PortID) {
		d.evExpOwn.Add(1)
		return
	}
	e := &ev.Expect
	d.fixExpectZone(e)
	switch ev.Type {
	case kernel.EventDestroy:
		d.evExpDestroy.Add(1)
		d.iexp.Delete(e.ExpectKey)
	case kernel.EventNew:
		d.evExpNew.Add(1)
		if !d.acceptHelper(e.Helper) {
			d.evExpFiltered.Add(1)
			return
		}
		d.iexp.Upsert(e)
	}
}

// fixExpectZone sets the zone of an expectation the kernel reported without
// one (it never reports it): the zone of its master in the internal cache,
// when the master is there in another zone than 0.
func (d *Daemon) fixExpectZone(e *flow.Expect) {
	if e.Zone != 0 {
		return
	}
	if _, ok := d.internal.Get(e.MasterKey()); ok {
		return
	}
	// Rare: a master in a zone other than 0. Look for it by tuple.
	for _, k := range d.internal.Keys() {
		if k.Orig == e.Master && k.Proto == e.MasterProto && k.Family == e.Family {
			e.Zone = k.Zone
			return
		}
	}
}

// reconcileExpects dumps the kernel's expectations into the internal
// expectation cache. Called with reconMu held, after the flows'.
func (d *Daemon) reconcileExpects(ctx context.Context, reason string) error {
	if d.iexp == nil {
		return nil
	}
	r := d.iexp.BeginReconcile()
	n := 0
	err := d.kern.DumpExpect(ctx, kernel.DumpOptions{NetNS: d.netns}, func(e *flow.Expect) {
		if !d.acceptHelper(e.Helper) {
			return
		}
		d.fixExpectZone(e)
		r.Add(e)
		n++
	})
	if err != nil {
		r.Abort()
		return fmt.Errorf("dump expectations: %w", err)
	}
	res := r.Finish()
	lvl := slog.LevelDebug
	if res.Added+res.Fixed+res.Removed > 0 {
		lvl = slog.LevelInfo
	}
	d.log.Log(ctx, lvl, "reconciled expectations with the kernel", "reason", reason, "expectations", n,
		"added", res.Added, "fixed", res.Fixed, "removed", res.Removed)
	return nil
}

// commitExpects writes the peers' expectations after their masters.
// Called with kernelMu held.
func (d *Daemon) commitExpects(ctx context.Context, rep *failover.Report) error {
	if d.iexp == nil || d.external == nil {
		return nil
	}
	er, err := failover.CommitExpects(ctx, d.external, d.writer, 0)
	if rep != nil {
		rep.Expectations = er
	}
	if er != nil {
		d.log.Info("expectations committed", "expectations", er.Expectations, "created", er.Created,
			"updated", er.Updated, "no_master", er.NoMaster, "expired", er.Expired, "failed", er.Failed)
		for _, f := range er.Failures {
			d.log.Warn("expectation not committed", "expectation", f.Flow, "err", f.Error)
		}
	}
	return err
}

// purgeExpects caps the timeouts of this kernel's expectations of the
// replicated helpers. Called with kernelMu held.
func (d *Daemon) purgeExpects(ctx context.Context) error {
	if d.iexp == nil {
		return nil
	}
	dump := func(ctx context.Context, fn func(*flow.Expect)) error {
		return d.kern.DumpExpect(ctx, kernel.DumpOptions{NetNS: d.netns}, fn)
	}
	n, err := failover.PurgeExpects(ctx, dump, d.writer, func(e *flow.Expect) bool { return d.acceptHelper(e.Helper) },
		d.cfg.Failover.PurgeTimeout.Duration)
	d.log.Info("expectations purged", "capped", n)
	return err
}

// ExpectView is one expectation of `dump internal|external --expect
// --json`.
type ExpectView struct {
	Family      string  `json:"family"`
	Proto       string  `json:"proto"`
	Src         string  `json:"src"`
	Dst         string  `json:"dst"`
	Sport       uint16  `json:"sport"`
	Dport       uint16  `json:"dport"`
	MaskSrc     string  `json:"mask_src"`
	MaskSport   uint16  `json:"mask_sport"`
	MasterProto string  `json:"master_proto"`
	MasterSrc   string  `json:"master_src"`
	MasterDst   string  `json:"master_dst"`
	MasterSport uint16  `json:"master_sport"`
	MasterDport uint16  `json:"master_dport"`
	Zone        uint16  `json:"zone"`
	Timeout     uint32  `json:"timeout"`
	Flags       string  `json:"flags,omitempty"`
	Class       uint32  `json:"class"`
	Helper      string  `json:"helper,omitempty"`
	Fn          string  `json:"fn,omitempty"`
	NATDir      *uint32 `json:"nat_dir,omitempty"`
	NATSrc      string  `json:"nat_src,omitempty"`
	NATSport    uint16  `json:"nat_sport,omitempty"`
	Origin      string  `json:"origin,omitempty"`
}

func expectView(e *flow.Expect, origin string) ExpectView {
	a := func(b [16]byte) string { return flow.Addr(e.Family, b).String() }
	fam := "ipv4"
	if e.Family == flow.FamilyIPv6 {
		fam = "ipv6"
	}
	v := ExpectView{Family: fam, Proto: flow.ProtoName(e.Proto), Src: a(e.Tuple.Src), Dst: a(e.Tuple.Dst),
		Sport: e.Tuple.SrcPort, Dport: e.Tuple.DstPort, MaskSrc: a(e.Mask.Src), MaskSport: e.Mask.SrcPort,
		MasterProto: flow.ProtoName(e.MasterProto), MasterSrc: a(e.Master.Src), MasterDst: a(e.Master.Dst),
		MasterSport: e.Master.SrcPort, MasterDport: e.Master.DstPort, Zone: e.Zone, Timeout: e.Timeout,
		Flags: flow.FlagNames(e.Flags), Class: e.Class, Helper: e.Helper, Fn: e.Fn, Origin: origin}
	if e.HasNAT {
		dir := e.NAT.Dir
		v.NATDir, v.NATSrc, v.NATSport = &dir, a(e.NAT.Tuple.Src), e.NAT.Tuple.SrcPort
	}
	return v
}

// dumpExpects prints the internal or external expectations, one a line in
// the style of `conntrack -L expect`.
func (d *Daemon) dumpExpects(out io.Writer, external, asJSON bool) error {
	if d.iexp == nil {
		return fmt.Errorf("expectations are not followed on this node (sync.expectations = false)")
	}
	if external && d.external == nil {
		return errNoSync
	}
	now := time.Now()
	type line struct {
		e      flow.Expect
		origin string
		text   string
	}
	var lines []line
	if external {
		for _, x := range d.external.ExpectSnapshot() {
			e := x.Expect
			e.Timeout -= min(e.Timeout, uint32(x.Age(now)/time.Second))
			lines = append(lines, line{e: e, origin: x.Origin, text: e.String() + " origin=" + x.Origin})
		}
	} else {
		for _, e := range d.iexp.Snapshot() {
			lines = append(lines, line{e: e, text: e.String()})
		}
	}
	slices.SortFunc(lines, func(a, b line) int { return strings.Compare(a.text, b.text) })
	bw := bufio.NewWriter(out)
	enc := json.NewEncoder(bw)
	for _, l := range lines {
		if asJSON {
			if err := enc.Encode(expectView(&l.e, l.origin)); err != nil {
				return err
			}
			continue
		}
		bw.WriteString(l.text)
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// ExpectStats is the expectation part of `ctsyncctl stats`.
type ExpectStats struct {
	Events struct {
		New      uint64 `json:"new"`
		Destroy  uint64 `json:"destroy"`
		Own      uint64 `json:"own_writes_ignored"`
		Filtered uint64 `json:"filtered"`
	} `json:"events"`
	Internal cache.ExpectStats `json:"internal"`
	External int               `json:"external"`
}

func (d *Daemon) expectStats() *ExpectStats {
	if d.iexp == nil {
		return nil
	}
	s := &ExpectStats{Internal: d.iexp.Stats()}
	s.Events.New, s.Events.Destroy = d.evExpNew.Load(), d.evExpDestroy.Load()
	s.Events.Own, s.Events.Filtered = d.evExpOwn.Load(), d.evExpFiltered.Load()
	if d.external != nil {
		s.External = d.external.ExpectLen()
	}
	return s
}
