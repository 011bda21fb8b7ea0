package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// The daemon implements failover.Actions; the Coordinator calls them one at
// a time. Manual commands (commit, purge, flush kernel) take kernelMu too,
// so that no two of them write the kernel table at once.

// CommitSequence makes this node the master, as conntrackd -c -f -R -B:
// commit the external cache (the committed entries leave it), re-read the
// kernel into the internal cache, and send it to the peers in bulk.
func (d *Daemon) CommitSequence(ctx context.Context) (*failover.Report, error) {
	rep, paused, err := d.commitTable(ctx)
	if err != nil {
		if paused {
			d.requestResync() // the re-read below does not run
		}
		return rep, err
	}
	if _, err := d.reconcile(ctx, "after commit"); err != nil {
		return rep, err
	}
	if d.node != nil {
		d.node.Bulk()
	}
	return rep, nil
}

// BecomeBackup asks the peers for their tables and purges the flows the new
// master owns.
func (d *Daemon) BecomeBackup(ctx context.Context) error {
	if d.node != nil {
		d.node.RequestResync()
	}
	if d.inject != nil {
		d.log.Info("inject mode: no purge on becoming backup; the kernel keeps the peers' flows (ctsyncctl purge still caps timeouts)")
		return nil
	}
	_, err := d.purge(ctx)
	return err
}

// Fault purges the flows this node no longer owns (not in inject mode,
// where the kernel holds every node's flows all the time).
func (d *Daemon) Fault(ctx context.Context) error {
	if d.inject != nil {
		return nil
	}
	_, err := d.purge(ctx)
	return err
}

// commit writes the external cache into the kernel, live flows first (a
// manual commit: the control socket, the API). When the commit paused the
// NEW events, the reconciler re-reads the table after it, to learn the
// flows traffic created meanwhile; a commit sequence re-reads it itself.
func (d *Daemon) commit(ctx context.Context) (*failover.Report, error) {
	rep, paused, err := d.commitTable(ctx)
	if paused {
		d.requestResync()
	}
	return rep, err
}

// commitTable is commit without the re-read; paused reports whether NEW
// events were paused while it ran (the flows traffic created meanwhile
// were not announced).
func (d *Daemon) commitTable(ctx context.Context) (rep *failover.Report, paused bool, err error) {
	if d.external == nil {
		return nil, false, errNoSync
	}
	d.kernelMu.Lock()
	defer d.kernelMu.Unlock()
	if d.inject != nil {
		// The flows are in the kernel already; expectations are still
		// replicated to the external cache only, and committed now.
		rep := d.adopt()
		err := d.commitExpects(ctx, rep)
		d.lastCommit.Store(rep)
		if err != nil {
			return rep, false, fmt.Errorf("commit: %w", err)
		}
		return rep, false, nil
	}
	rep, paused, err = d.commitFlows(ctx)
	if err == nil {
		// Masters first, then their expectations.
		err = d.commitExpects(ctx, rep)
	}
	if rep != nil {
		d.lastCommit.Store(rep)
		d.lastCommitEnd.Store(time.Now().UnixNano())
		d.metrics.observeCommit(rep)
		d.log.Info("commit done", "flows", rep.Flows, "created", rep.Created, "updated", rep.Updated,
			"replaced", rep.Replaced, "failed", rep.Failed, "seconds", rep.Seconds,
			"first_chunk_seconds", rep.FirstChunkSeconds, "new_events_paused", paused)
	}
	if err != nil {
		return rep, paused, fmt.Errorf("commit: %w", err)
	}
	return rep, paused, nil
}

// commitFlows runs failover.Commit with nothing else competing with it
// for the kernel or the CPU: drift checks do not ask a live origin for the
// flows the commit takes out of the external cache, periodic reconciles
// wait (a re-read follows the commit), and the event listener leaves the
// NEW events, so that the kernel does not build one per create (with a
// listener, even one whose BPF filter drops them, the creates take about
// twice as long). UPDATE and DESTROY events keep coming: a flow traffic
// creates meanwhile is learnt from its first update or from the re-read.
// All three are restored however the commit ends; paused reports whether
// NEW events were paused.
func (d *Daemon) commitFlows(ctx context.Context) (rep *failover.Report, paused bool, err error) {
	d.committing.Store(true)
	defer d.committing.Store(false)
	if d.node != nil {
		d.node.PauseDrift(true)
		defer d.node.PauseDrift(false)
	}
	if d.listener != nil {
		if perr := d.listener.PauseNew(true); perr != nil {
			d.log.Warn("commit: NEW events stay on (the commit is slower)", "err", perr)
		} else {
			paused = true
			defer d.resumeNew()
		}
	}
	rep, err = failover.Commit(ctx, d.external, d.writer, failover.CommitOptions{
		Timeout: d.cfg.Failover.CommitTimeout.Duration,
		Admit:   d.policy.Admit,
	})
	return rep, paused, err
}

// resumeNew joins the NEW events again after a commit. Without them the
// internal cache would learn new flows only from updates and re-reads: a
// failed join is retried a few times, then at every reconcile until it
// works (newOff), and a re-read is asked for at once.
func (d *Daemon) resumeNew() {
	for i := range 3 {
		err := d.listener.PauseNew(false)
		if err == nil {
			d.newOff.Store(false)
			return
		}
		d.log.Error("commit: cannot listen to NEW events again", "err", err, "attempt", i+1)
		time.Sleep(time.Duration(i+1) * 50 * time.Millisecond)
	}
	d.newOff.Store(true)
	d.requestResync()
}

// purge caps the timeouts of the kernel's flows (those the filter accepts:
// the firewall's own sessions are left alone) at failover.purge_timeout.
func (d *Daemon) purge(ctx context.Context) (failover.PurgeReport, error) {
	d.kernelMu.Lock()
	defer d.kernelMu.Unlock()
	dump := func(ctx context.Context, fn func(*flow.Flow)) error {
		return d.kern.Dump(ctx, kernel.DumpOptions{NetNS: d.netns}, fn)
	}
	rep, err := failover.Purge(ctx, dump, d.writer, d.filter.Load().Match, d.cfg.Failover.PurgeTimeout.Duration)
	d.log.Info("purge done", "seen", rep.Seen, "matched", rep.Matched, "capped", rep.Capped, "failed", rep.Failed)
	if err == nil {
		err = d.purgeExpects(ctx)
	}
	if err != nil {
		return rep, fmt.Errorf("purge: %w", err)
	}
	return rep, nil
}

// flushKernel deletes every entry of the kernel's conntrack table.
func (d *Daemon) flushKernel(ctx context.Context) error {
	d.kernelMu.Lock()
	defer d.kernelMu.Unlock()
	if err := d.writer.Flush(ctx); err != nil {
		return fmt.Errorf("flush kernel table: %w", err)
	}
	// The expectations went with their masters; flush them all the same.
	if err := d.writer.FlushExpect(ctx); err != nil {
		return fmt.Errorf("flush kernel expectations: %w", err)
	}
	d.log.Warn("kernel conntrack table flushed by ctsyncctl")
	return nil
}

// CommitPosition is one line of `dump commit`: a flow's key and its place
// in the last commit's order (0 first).
type CommitPosition struct {
	Position int    `json:"position"`
	Family   string `json:"family"`
	Proto    string `json:"proto"`
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	Sport    uint16 `json:"sport"`
	Dport    uint16 `json:"dport"`
	Zone     uint16 `json:"zone"`
}

// dumpCommit prints the order of the last commit, least idle first.
func (d *Daemon) dumpCommit(out io.Writer, asJSON bool) error {
	rep := d.lastCommit.Load()
	if rep == nil {
		return fmt.Errorf("no commit has run since ctsyncd started")
	}
	bw := bufio.NewWriterSize(out, 64<<10)
	enc := json.NewEncoder(bw)
	for i, k := range rep.Order() {
		f := flow.Flow{Key: k}
		v := f.View()
		p := CommitPosition{Position: i, Family: v.Family, Proto: v.Proto, Src: v.Src, Dst: v.Dst, Sport: v.Sport, Dport: v.Dport, Zone: k.Zone}
		if asJSON {
			if err := enc.Encode(p); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(bw, "%d %s %s src=%s dst=%s sport=%d dport=%d zone=%d\n", p.Position, p.Family, p.Proto, p.Src, p.Dst, p.Sport, p.Dport, p.Zone)
	}
	return bw.Flush()
}
