package daemon

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/httpd"
	"github.com/ctsyncd/ctsyncd/status"
)

// Operations: readiness (one condition for /readyz, systemd READY=1 and
// failover.ready_file), liveness (/healthz and the systemd watchdog), the
// status model and the metrics listener.

// opsState is the daemon's operational state; its zero value is ready to
// use.
type opsState struct {
	// dumped is set once the first dump of the kernel table was
	// reconciled into the internal cache.
	dumped atomic.Bool
	// ready latches once the readiness condition held.
	ready atomic.Bool
	// reconBeat is when the reconciler loop last went round (Unix ns).
	reconBeat atomic.Int64
	// inEvent is 1 while the listener goroutine runs Event; evSeen is the
	// event count the liveness check saw last, with when it saw it.
	inEvent  atomic.Int32
	evSeen   atomic.Uint64
	evSeenAt atomic.Int64
}

// readyCondition evaluates readiness now: the initial dump is done and
// every live peer has sent its table in bulk (or no peer showed up within
// two peer timeouts: a lone node has nothing to wait for). It returns the
// reason when not ready.
func (d *Daemon) readyCondition(start time.Time) (bool, string) {
	if !d.ops.dumped.Load() {
		return false, "initial dump of the kernel table not done"
	}
	if d.node == nil {
		return true, ""
	}
	up, synced := 0, 0
	var waiting []string
	for name, p := range d.node.Stats() {
		if p.Up {
			up++
			if p.BulksReceived > 0 {
				synced++
			} else {
				waiting = append(waiting, name)
			}
		}
	}
	grace := 2 * d.cfg.Sync.PeerTimeout.Duration
	switch {
	case up > 0 && synced == up:
		return true, ""
	case up == 0 && time.Since(start) > grace:
		return true, ""
	case up == 0:
		return false, fmt.Sprintf("waiting up to %s for a peer", grace)
	}
	sort.Strings(waiting)
	return false, "waiting for the table of " + strings.Join(waiting, ", ")
}

// IsReady reports whether the node is ready now (/readyz).
func (d *Daemon) IsReady() bool { return d.ops.ready.Load() }

// readiness waits for the initial sync, then keeps the readiness state:
// ready once synced (it latches), and, with failover.require_same_ruleset,
// only while every live peer has the same ruleset. It writes
// failover.ready_file (keepalived's track_file) on every change and tells
// systemd READY=1 the first time. The file only lowers priority; it never
// forces FAULT, so a lone survivor still takes over.
func (d *Daemon) readiness(ctx context.Context) error {
	path := d.cfg.Failover.ReadyFile
	requireSame := d.cfg.Failover.RequireSameRuleset && d.rulesetEnabled()
	write := func(ready bool) error {
		if path == "" {
			return nil
		}
		if err := failover.WriteReady(path, ready); err != nil {
			return fmt.Errorf("failover.ready_file: %w", err)
		}
		return nil
	}
	if err := write(false); err != nil {
		return err
	}
	start := time.Now()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	synced, ready, told := false, false, false
	for {
		if !synced {
			if ok, _ := d.readyCondition(start); ok {
				synced = true
				d.log.Info("initial sync complete")
			}
		}
		same, why := true, ""
		if requireSame {
			same, why = d.rulesetSame()
		}
		if want := synced && same; want != ready {
			ready = want
			d.ops.ready.Store(ready)
			if err := write(ready); err != nil {
				return err
			}
			switch {
			case ready && !told:
				told = true
				d.notify.ready()
				d.log.Info("ready", "file", path)
			case ready:
				d.log.Info("ready again", "file", path)
			default:
				d.log.Warn("not ready (failover.require_same_ruleset)", "why", why, "file", path)
			}
		}
		if ready && !requireSame {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// liveness reports whether the daemon's loops are alive: the reconciler
// went round lately, the event handler is not stuck in one event, the
// sync node answers, and the caches' locks can be taken. It returns the
// problems found.
func (d *Daemon) liveness(timeout time.Duration) []string {
	var bad []string
	now := time.Now()
	if b := d.ops.reconBeat.Load(); b != 0 && now.Sub(time.Unix(0, b)) > reconBeatEvery+timeout {
		bad = append(bad, fmt.Sprintf("reconciler silent for %s", now.Sub(time.Unix(0, b)).Round(time.Millisecond)))
	}
	evs := d.evNew.Load() + d.evUpdate.Load() + d.evDestroy.Load() + d.evOwn.Load()
	if d.ops.inEvent.Load() == 1 && d.ops.evSeen.Load() == evs {
		if at := d.ops.evSeenAt.Load(); at != 0 && now.Sub(time.Unix(0, at)) > timeout {
			bad = append(bad, fmt.Sprintf("event handler stuck in one event for %s", now.Sub(time.Unix(0, at)).Round(time.Millisecond)))
		}
	} else {
		d.ops.evSeen.Store(evs)
		d.ops.evSeenAt.Store(now.UnixNano())
	}
	// A loop stuck while holding a lock shows as a lock that cannot be
	// taken.
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.internal.Len()
		if d.node != nil {
			d.external.Len()
			d.node.Status()
		}
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		bad = append(bad, fmt.Sprintf("caches or sync node locked for over %s", timeout))
	}
	return bad
}

// reconBeatEvery is how often the reconciler loop wakes at least, to show
// it is alive.
const reconBeatEvery = time.Second

// Status returns the node's status (`ctsyncctl status`, the API).
func (d *Daemon) Status() *status.Status {
	now := time.Now()
	s := &status.Status{
		SchemaVersion: status.SchemaVersion,
		Node:          d.cfg.Node.Name,
		Version:       d.version,
		Started:       d.started,
		UptimeSeconds: now.Sub(d.started).Seconds(),
		Ready:         d.ops.ready.Load(),
		Peers:         []status.Peer{},
		Warnings:      []string{},
	}
	if st := d.coord.State(); st != "" {
		s.Role = string(st)
	}
	if !s.Ready {
		var ok bool
		ok, s.ReadyReason = d.readyCondition(d.started)
		if ok {
			s.ReadyReason = "the peers' rulesets differ (failover.require_same_ruleset)"
		}
		s.Warnings = append(s.Warnings, "not ready: "+s.ReadyReason)
	}
	if r := d.rulesetStatus(); r != nil {
		s.Ruleset = &status.Ruleset{Digest: r.Digest, Checked: r.Checked, Error: r.Error, Same: r.Same, Differ: r.Differ}
		s.Warnings = append(s.Warnings, d.rulesetWarnings()...)
	}
	s.Caches.InternalFlows = d.internal.Len()
	s.Caches.ExternalByOrigin = map[string]int{}
	if d.iexp != nil {
		n := d.iexp.Len()
		s.Caches.InternalExpectations = &n
		if d.external != nil {
			x := d.external.ExpectLen()
			s.Caches.ExternalExpectations = &x
		}
	}
	if r := d.lastRec.Load(); r != nil {
		took, _ := time.ParseDuration(r.Duration)
		s.LastResync = &status.Resync{At: r.At, Reason: r.Reason, DurationSeconds: took.Seconds(), Flows: r.Flows,
			Added: r.Result.Added, Fixed: r.Result.Fixed, Removed: r.Result.Removed, Error: r.Err}
		if r.Err != "" {
			s.Warnings = append(s.Warnings, "last resync with the kernel failed: "+r.Err)
		}
	}
	if c := d.lastCommit.Load(); c != nil {
		s.LastCommit = &status.Commit{At: d.lastCommitAt(), DurationSeconds: c.Seconds, Flows: c.Flows, Failed: c.Failed}
		if c.Failed > 0 {
			s.Warnings = append(s.Warnings, fmt.Sprintf("last commit: %d of %d flows failed", c.Failed, c.Flows))
		}
	}
	if n := d.listener.Stats().Overruns; n > 0 {
		s.Warnings = append(s.Warnings, fmt.Sprintf("%d kernel event overruns since start (raise kernel.event_buffer if this grows)", n))
	}
	if d.node == nil {
		return s
	}
	ns := d.node.Status()
	s.Sync = &status.Sync{Transport: d.cfg.Sync.Transport, Secure: ns.Secure, ID: ns.ID, Epoch: ns.Epoch,
		LastSeq: ns.LastSeq, Queued: ns.Queued, DigestIntervalSeconds: d.cfg.Sync.DigestInterval.Seconds()}
	s.Sync.Links = []status.Link{}
	if d.links != nil {
		for _, l := range d.links.Status() {
			s.Sync.Links = append(s.Sync.Links, status.Link{Name: l.Name, Up: l.Up, LastIn: l.LastIn, PacketsIn: l.PacketsIn,
				BytesIn: l.BytesIn, PacketsOut: l.PacketsOut, BytesOut: l.BytesOut, SendErrors: l.SendErrors})
			if !l.Up {
				s.Warnings = append(s.Warnings, fmt.Sprintf("sync link %s is down", l.Name))
			}
		}
	}
	if !ns.Secure {
		s.Warnings = append(s.Warnings, "sync runs insecure: datagrams are neither authenticated nor encrypted")
	}
	byOrigin := d.external.ByOrigin()
	s.Caches.ExternalByOrigin = byOrigin
	for _, n := range byOrigin {
		s.Caches.ExternalFlows += n
	}
	s.Sync.ExternalFlows = s.Caches.ExternalFlows
	risk := d.node.AtRisk()
	s.FlowsAtRisk = risk.Total
	drift := d.node.DriftStats()
	info := d.node.PeerInfo()
	for name, p := range d.node.Stats() {
		if p.Name == "" {
			continue // a sender not identified yet
		}
		ps := status.Peer{Name: p.Name, Addr: p.Addr, Alive: p.Up, LastSeen: p.LastSeen, LastSeenSeconds: -1,
			LagSeconds: p.Lag.Seconds(), Pending: p.Pending, FlowsAtRisk: risk.ByPeer[name],
			BulkReceived: p.BulksReceived > 0, ExternalFlows: byOrigin[name], DriftRepairs: drift.ByOrigin[name].Repairs}
		if !p.LastSeen.IsZero() {
			ps.LastSeenSeconds = now.Sub(p.LastSeen).Seconds()
		}
		ps.Caps = []string{}
		if pi, ok := info[name]; ok {
			ps.Version = pi.Version
			ps.Caps = append(ps.Caps, pi.Caps...)
		}
		if !p.Up {
			s.Warnings = append(s.Warnings, fmt.Sprintf("peer %s is down (last seen %s ago)", p.Name, now.Sub(p.LastSeen).Round(time.Second)))
		}
		s.Peers = append(s.Peers, ps)
	}
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].Name < s.Peers[j].Name })
	if len(s.Peers) == 0 {
		s.Warnings = append(s.Warnings, "no peer has been seen yet")
	}
	if s.FlowsAtRisk > 0 {
		s.Warnings = append(s.Warnings, fmt.Sprintf("%d flows not yet held by every peer", s.FlowsAtRisk))
	}
	if last := drift.Last; last != nil {
		s.LastDriftRepair = &status.DriftRepair{At: last.At, Origin: last.Origin, Buckets: last.Buckets, Flows: last.Flows}
	}
	return s
}

// lastCommitAt returns when the last commit ended.
func (d *Daemon) lastCommitAt() time.Time {
	if t := d.lastCommitEnd.Load(); t != 0 {
		return time.Unix(0, t)
	}
	return time.Time{}
}

// serveMetrics runs the [metrics] listener: /metrics, /healthz, /readyz.
func (d *Daemon) serveMetrics(ctx context.Context, srv *httpd.Server) error {
	srv.Handle("GET /metrics", d.metrics.handler())
	srv.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if bad := d.liveness(healthTimeout); len(bad) > 0 {
			http.Error(w, "unhealthy: "+strings.Join(bad, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !d.ops.ready.Load() {
			ok, why := d.readyCondition(d.started)
			if ok {
				why = "the peers' rulesets differ (failover.require_same_ruleset)"
			}
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return srv.Serve(ctx)
}

// healthTimeout is how long a loop may be silent or a lock held before the
// daemon counts as unhealthy.
const healthTimeout = 5 * time.Second
