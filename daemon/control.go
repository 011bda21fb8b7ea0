package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/control"
	"github.com/ctsyncd/ctsyncd/failover"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

// commandUsage lists the commands this daemon answers, for error messages.
const commandUsage = "status, stats, dump internal|external [expect]|commit, resync, flush internal|external|kernel, bulk, request-resync, commit, purge, keepalived TYPE NAME STATE [PRIORITY]"

// errNoSync answers replication commands on a node that does not replicate.
var errNoSync = fmt.Errorf("replication is disabled on this node (sync.disabled = true)")

// handle answers one control request.
func (d *Daemon) handle(ctx context.Context, req *control.Request, out *control.Writer) error {
	args := req.Args
	want := func(n int, usage string) error {
		if len(args) != n {
			return fmt.Errorf("%w: %s", control.ErrUsage, usage)
		}
		return nil
	}
	switch req.Command {
	case "status":
		if err := want(0, "status"); err != nil {
			return err
		}
		st := d.Status()
		if req.JSON {
			return d.writeValue(out, true, st)
		}
		return st.WriteText(out)
	case "stats":
		if err := want(0, "stats"); err != nil {
			return err
		}
		return d.writeValue(out, req.JSON, d.stats())
	case "dump":
		if len(args) == 2 && args[1] == "expect" && (args[0] == "internal" || args[0] == "external") {
			return d.dumpExpects(out, args[0] == "external", req.JSON)
		}
		if err := want(1, "dump internal|external [expect]|commit"); err != nil {
			return err
		}
		switch args[0] {
		case "internal":
			return d.dumpInternal(out, req.JSON)
		case "external":
			if d.external == nil {
				return errNoSync
			}
			return d.dumpExternal(out, req.JSON)
		case "commit":
			return d.dumpCommit(out, req.JSON)
		}
		return fmt.Errorf("%w: dump internal|external|commit (not %q)", control.ErrUsage, args[0])
	case "resync":
		if err := want(0, "resync"); err != nil {
			return err
		}
		rep, err := d.reconcile(ctx, "ctsyncctl resync")
		if err != nil {
			return err
		}
		return d.writeValue(out, req.JSON, rep)
	case "flush":
		if err := want(1, "flush internal|external|kernel"); err != nil {
			return err
		}
		switch args[0] {
		case "internal":
			n := d.internal.Flush()
			x := 0
			if d.iexp != nil {
				x = d.iexp.Flush()
			}
			d.log.Info("internal cache flushed", "flows", n, "expectations", x)
			return d.writeValue(out, req.JSON, map[string]int{"flushed": n, "flushed_expectations": x})
		case "external":
			if d.external == nil {
				return errNoSync
			}
			x := d.external.FlushExpects("")
			n := d.external.Flush("")
			d.log.Info("external cache flushed", "flows", n, "expectations", x)
			return d.writeValue(out, req.JSON, map[string]int{"flushed": n, "flushed_expectations": x})
		case "kernel":
			if err := d.flushKernel(ctx); err != nil {
				return err
			}
			return d.writeValue(out, req.JSON, map[string]string{"flushed": "kernel conntrack table"})
		}
		return fmt.Errorf("%w: flush internal|external|kernel (not %q)", control.ErrUsage, args[0])
	case "commit":
		if err := want(0, "commit"); err != nil {
			return err
		}
		rep, err := d.commit(ctx)
		if rep != nil {
			if werr := d.writeValue(out, req.JSON, rep); werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
		if rep.Failed > 0 {
			return fmt.Errorf("commit: %d of %d flows failed", rep.Failed, rep.Flows)
		}
		return nil
	case "purge":
		if err := want(0, "purge"); err != nil {
			return err
		}
		rep, err := d.purge(ctx)
		if werr := d.writeValue(out, req.JSON, rep); werr != nil {
			return werr
		}
		return err
	case "keepalived":
		n, err := failover.ParseNotify(args)
		if err != nil {
			return fmt.Errorf("%w: keepalived TYPE NAME STATE [PRIORITY]: %v", control.ErrUsage, err)
		}
		d.log.Info("keepalived notify", "notify", n.String())
		res, err := d.coord.Handle(ctx, n)
		if werr := d.writeValue(out, req.JSON, res); werr != nil {
			return werr
		}
		if err != nil {
			return fmt.Errorf("keepalived %s: %w", n.State, err)
		}
		if res.Report != nil && res.Report.Failed > 0 && (res.Outcome == failover.Applied || res.Outcome == failover.Joined) {
			return fmt.Errorf("keepalived MASTER: commit: %d of %d flows failed", res.Report.Failed, res.Report.Flows)
		}
		return nil
	case "bulk":
		if err := want(0, "bulk"); err != nil {
			return err
		}
		if d.node == nil {
			return errNoSync
		}
		d.node.Bulk()
		d.log.Info("bulk transfer requested by ctsyncctl")
		return d.writeValue(out, req.JSON, map[string]any{"bulk": "started", "flows": d.internal.Len()})
	case "request-resync":
		if err := want(0, "request-resync"); err != nil {
			return err
		}
		if d.node == nil {
			return errNoSync
		}
		d.node.RequestResync()
		d.log.Info("resync from peers requested by ctsyncctl")
		return d.writeValue(out, req.JSON, map[string]any{"request_resync": "sent"})
	}
	return fmt.Errorf("%w %q (this daemon knows: %s)", control.ErrUnknownCommand, req.Command, commandUsage)
}

// Stats is the answer to `ctsyncctl stats`.
type Stats struct {
	Events struct {
		New     uint64 `json:"new"`
		Update  uint64 `json:"update"`
		Destroy uint64 `json:"destroy"`
		Own     uint64 `json:"own_writes_ignored"`
		// OwnInKernel: the kernel drops the events of our own writes (a
		// BPF filter on the event socket) and own_writes_ignored counts
		// only those that got past it.
		OwnInKernel bool   `json:"own_writes_dropped_by_kernel"`
		Filtered    uint64 `json:"filtered"`
		Overruns    uint64 `json:"overruns"`
		Malformed   uint64 `json:"malformed"`
	} `json:"events"`
	Internal struct {
		Flows      int    `json:"flows"`
		Created    uint64 `json:"created"`
		Updated    uint64 `json:"updated"`
		Deleted    uint64 `json:"deleted"`
		Pending    int    `json:"pending_changes"`
		Reconciles uint64 `json:"reconciles"`
		ReconAdded uint64 `json:"reconcile_added"`
		ReconFixed uint64 `json:"reconcile_fixed"`
		ReconGone  uint64 `json:"reconcile_removed"`
		Young      int    `json:"waiting_min_age"`        // [sync] min_age: not yet replicated
		NeverSent  uint64 `json:"removed_before_min_age"` // flows that died young, never sent
	} `json:"internal"`
	LastReconcile *reconcileReport            `json:"last_reconcile,omitempty"`
	External      *cache.ExternalStats        `json:"external,omitempty"`
	Peers         map[string]ctsync.PeerStats `json:"peers,omitempty"`
	Inject        *InjectStats                `json:"inject,omitempty"`
	Defer         *DeferStats                 `json:"defer,omitempty"`
	Expectations  *ExpectStats                `json:"expectations,omitempty"`
	Runtime       RuntimeStats                `json:"runtime"`
}

// RuntimeStats are the Go runtime's memory figures: how the process's
// resident memory divides between live data, garbage not yet collected and
// memory the runtime keeps without using.
type RuntimeStats struct {
	HeapLive     uint64 `json:"heap_live_bytes"`     // HeapAlloc
	HeapInUse    uint64 `json:"heap_inuse_bytes"`    // HeapInuse
	HeapIdle     uint64 `json:"heap_idle_bytes"`     // HeapIdle - HeapReleased: kept, unused
	HeapReleased uint64 `json:"heap_released_bytes"` // returned to the OS
	Sys          uint64 `json:"sys_bytes"`
	GCs          uint32 `json:"gc_cycles"`
	Goroutines   int    `json:"goroutines"`
}

func (d *Daemon) stats() Stats {
	var s Stats
	ls := d.listener.Stats()
	s.Events.New, s.Events.Update, s.Events.Destroy = d.evNew.Load(), d.evUpdate.Load(), d.evDestroy.Load()
	s.Events.Own, s.Events.Filtered = d.evOwn.Load()+ls.Own, d.evFiltered.Load()
	s.Events.OwnInKernel = d.listener.KernelFiltered()
	s.Events.Overruns, s.Events.Malformed = ls.Overruns, ls.Malformed
	is := d.internal.Stats()
	s.Internal.Flows, s.Internal.Created, s.Internal.Updated, s.Internal.Deleted = is.Flows, is.Created, is.Updated, is.Deleted
	s.Internal.Pending, s.Internal.Reconciles = is.Dirty, is.Reconciles
	s.Internal.ReconAdded, s.Internal.ReconFixed, s.Internal.ReconGone = is.ReconAdded, is.ReconFixed, is.ReconGone
	s.Internal.Young, s.Internal.NeverSent = is.Young, is.NeverSent
	s.LastReconcile = d.lastRec.Load()
	s.Expectations = d.expectStats()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.Runtime = RuntimeStats{HeapLive: ms.HeapAlloc, HeapInUse: ms.HeapInuse, HeapIdle: ms.HeapIdle - ms.HeapReleased,
		HeapReleased: ms.HeapReleased, Sys: ms.Sys, GCs: ms.NumGC, Goroutines: runtime.NumGoroutine()}
	if d.node != nil {
		es := d.external.Stats()
		s.External = &es
		s.Peers = d.node.Stats()
	}
	if d.inject != nil {
		s.Inject = d.inject.stats()
	}
	if d.deferrer != nil {
		s.Defer = d.deferrer.stats()
	}
	return s
}

// writeValue prints v as indented JSON, or as "key: value" lines.
func (d *Daemon) writeValue(out io.Writer, asJSON bool, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if asJSON {
		_, err = out.Write(append(b, '\n'))
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
	writeFlat(tw, "", m)
	return tw.Flush()
}

func writeFlat(w io.Writer, prefix string, m map[string]any) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := k
		if prefix != "" {
			name = prefix + "." + k
		}
		switch v := m[k].(type) {
		case map[string]any:
			writeFlat(w, name, v)
		case float64:
			fmt.Fprintf(w, "%s:\t%s\n", name, strings.TrimSuffix(fmt.Sprintf("%f", v), ".000000"))
		default:
			fmt.Fprintf(w, "%s:\t%v\n", name, v)
		}
	}
}

// dumpInternal prints the internal cache, one flow a line like `conntrack
// -L`, or one JSON object a line. Timeouts are the remaining ones now.
func (d *Daemon) dumpInternal(out io.Writer, asJSON bool) error {
	now := time.Now()
	bw := bufio.NewWriterSize(out, 64<<10)
	enc := json.NewEncoder(bw)
	for _, e := range d.internal.Snapshot() {
		f := e.Flow
		elapsed := uint32(max(0, now.Sub(time.Unix(0, e.Refreshed))/time.Second))
		f.Timeout -= min(f.Timeout, elapsed)
		if asJSON {
			v := f.View()
			v.IdleSecs = e.Idle(now).Seconds()
			if err := enc.Encode(v); err != nil {
				return err
			}
			continue
		}
		bw.WriteString(f.String())
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// dumpExternal prints the external cache: each flow with its origin and
// idleness, or one JSON object a line.
func (d *Daemon) dumpExternal(out io.Writer, asJSON bool) error {
	now := time.Now()
	bw := bufio.NewWriterSize(out, 64<<10)
	enc := json.NewEncoder(bw)
	for _, e := range d.external.Snapshot() {
		f := e.Flow
		origin, timeout := externalLine(&e, now)
		f.Timeout = timeout
		if asJSON {
			v := f.View()
			v.Origin = origin
			v.IdleSecs = e.IdleAt.Seconds()
			if err := enc.Encode(v); err != nil {
				return err
			}
			continue
		}
		bw.WriteString(f.String())
		fmt.Fprintf(bw, " origin=%s idle=%s\n", origin, e.IdleAt.Round(time.Second))
	}
	return bw.Flush()
}
