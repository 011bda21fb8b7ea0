// Package daemon wires ctsyncd together: the kernel event listener and
// reconciler feeding the internal cache through the filter, the control
// socket, and (when enabled) replication and failover.
//
// It is not a library: cmd/ctsyncd builds one Daemon from the config and
// runs it. Concurrency: Run owns every goroutine it starts, all stopped
// through its context; the caches have their own locks; reconciles are
// serialized by reconMu.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/user"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/conntrack"
	"github.com/ctsyncd/ctsyncd/control"
	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/filter"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/flowlog"
	"github.com/ctsyncd/ctsyncd/httpd"
	"github.com/ctsyncd/ctsyncd/kernel"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

// Options configure a Daemon.
type Options struct {
	Config  *config.Config
	Log     *slog.Logger
	Version string
	// LogLevel, when set, is the level of Log's handler: SIGHUP changes it.
	LogLevel *slog.LevelVar
	// NetNS, when non-zero, is a file descriptor of the network namespace
	// whose conntrack table the daemon follows (in-process tests). Its
	// sysctls are then the caller's job. 0: the daemon's own namespace.
	NetNS int
	// Kernel, when set, replaces the kernel (root-free tests); nil: the
	// real one.
	Kernel Kernel
}

// Daemon is one running ctsyncd.
type Daemon struct {
	cfg      *config.Config
	log      *slog.Logger
	logLevel *slog.LevelVar
	version  string
	netns    int
	started  time.Time

	filter   atomic.Pointer[filter.Filter] // replaced whole on SIGHUP
	policy   *policyRef                    // receive policy for peers' flows; replaced on SIGHUP
	internal *cache.Internal
	external *cache.External      // nil without sync
	key      *[ctsync.KeyLen]byte // nil: insecure or no sync
	node     *ctsync.Node         // nil without sync
	links    *ctsync.Links        // nil unless there are redundant sync links
	writer   TableWriter
	kern     Kernel

	// ownPorts are the netlink port ids of this daemon's write sockets:
	// events they caused are never replicated as local state.
	ownPorts atomic.Pointer[[]uint32]

	ready    chan struct{} // closed when Run has set up the caches
	resyncCh chan struct{} // wakes the reconciler (overrun, request)
	reconMu  sync.Mutex    // serializes reconciles
	// committing is set while a commit writes the external cache into
	// the kernel: periodic reconciles are skipped meanwhile.
	committing atomic.Bool
	// newOff is set when the listener could not join the NEW events again
	// after a commit (resumeNew); each reconcile tries again.
	newOff   atomic.Bool
	kernelMu sync.Mutex // serializes writes to the kernel table (commit, purge, flush)
	coord    *failover.Coordinator
	// lastCommit is the report of the last commit, for `dump commit`.
	lastCommit atomic.Pointer[failover.Report]
	lastRec    atomic.Pointer[reconcileReport]

	listener Events
	ctl      *control.Server
	flowLog  *flowlog.Writer // nil unless [log] flows is set
	rs       rulesetGuard    // the ruleset guard's state (ruleset.go)
	api      *httpd.Server   // nil unless api.listen is set
	apiClose func()
	// ct is the conntrack handle the API reads and writes the table with,
	// opened on first use.
	ct     *conntrack.Handle
	ctOnce sync.Once
	ctErr  error

	inject   *injector // nil unless sync.inject (daemon/inject.go)
	deferrer *deferrer // nil unless defer.enabled (daemon/defer.go)

	lastOverrunLog time.Time // listener goroutine only

	// counters of the event path, written by the listener goroutine only
	evNew, evUpdate, evDestroy, evOwn, evFiltered atomic.Uint64

	ops           opsState      // readiness and liveness (ops.go)
	notify        *notifier     // systemd (systemd.go)
	metrics       *metrics      // Prometheus (metrics.go)
	metricsSrv    *httpd.Server // [metrics] listener; nil when unset
	lastCommitEnd atomic.Int64  // Unix ns of the end of the last commit
	// iexp is the internal expectation cache; nil when sync.expectations
	// is off (expect.go).
	iexp                                            *cache.InternalExpect
	evExpNew, evExpDestroy, evExpOwn, evExpFiltered atomic.Uint64
}

type reconcileReport struct {
	At       time.Time             `json:"at"`
	Duration string                `json:"took"`
	Reason   string                `json:"reason"`
	Flows    int                   `json:"flows"`
	Result   cache.ReconcileResult `json:"result"`
	Err      string                `json:"error,omitempty"`
}

// New prepares a daemon: it builds the filter and caches and creates the
// control socket, so that configuration problems surface before Run.
func New(opts Options) (*Daemon, error) {
	cfg := opts.Config
	flt, err := newFilter(cfg.Filter)
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg:      cfg,
		log:      opts.Log,
		logLevel: opts.LogLevel,
		version:  opts.Version,
		netns:    opts.NetNS,
		kern:     opts.Kernel,
		resyncCh: make(chan struct{}, 1),
		ready:    make(chan struct{}),
	}
	if d.kern == nil {
		d.kern = osKernel{}
	}
	d.filter.Store(flt)
	d.policy = &policyRef{}
	pol, err := d.newPolicy(cfg.PeerPolicy)
	if err != nil {
		return nil, err
	}
	d.policy.p.Store(pol)
	if d.key, err = loadKey(cfg.Sync); err != nil {
		return nil, err
	}
	empty := []uint32{}
	d.ownPorts.Store(&empty)
	gid := -1
	if g := cfg.Control.Group; g != "" {
		if gid, err = lookupGroup(g); err != nil {
			return nil, fmt.Errorf("control.group: %w", err)
		}
	}
	d.notify = newNotifier(opts.Log)
	if err := d.openFlowLog(); err != nil {
		return nil, fmt.Errorf("log.flows: %w", err)
	}
	if l := cfg.Metrics.Listen; l != "" {
		d.metricsSrv, err = httpd.Listen(httpd.Options{Name: "metrics", Addr: l, Log: opts.Log})
		if err != nil {
			d.closeAPI()
			return nil, fmt.Errorf("metrics.listen: %w", err)
		}
	}
	h, closeAPI, err := d.newAPI()
	if err == nil && h != nil {
		if d.api, err = d.listenAPI(h); err != nil {
			closeAPI()
		}
	}
	if err != nil {
		if d.metricsSrv != nil {
			d.metricsSrv.Close()
		}
		return nil, err
	}
	d.apiClose = closeAPI
	d.ctl, err = control.Listen(control.ServerOptions{
		Path: cfg.Control.Socket, Mode: cfg.Control.FileMode(), GID: gid, Log: opts.Log,
	})
	if err != nil {
		d.closeAPI()
		if d.metricsSrv != nil {
			d.metricsSrv.Close()
		}
		return nil, err
	}
	return d, nil
}

func newFilter(c config.Filter) (*filter.Filter, error) {
	protos, err := c.ProtocolNumbers()
	if err != nil {
		return nil, err
	}
	states, err := c.TCPStateNumbers()
	if err != nil {
		return nil, err
	}
	prefixes, err := c.Prefixes()
	if err != nil {
		return nil, err
	}
	ex, err := exclusions(c)
	if err != nil {
		return nil, err
	}
	return filter.New(protos, states, prefixes, ex), nil
}

// exclusions converts the [filter] ignore_ports, ignore_marks, ignore_zones
// and ignore_helpers lists (already validated) into the filter's form.
func exclusions(c config.Filter) (filter.Exclude, error) {
	var ex filter.Exclude
	for _, p := range c.IgnorePorts {
		ex.Ports = append(ex.Ports, filter.PortRange{Lo: p.Lo, Hi: p.Hi})
	}
	for _, m := range c.IgnoreMarks {
		v, mask, err := config.ParseMarkMask(m)
		if err != nil {
			return ex, fmt.Errorf("filter.ignore_marks: %w", err)
		}
		ex.Marks = append(ex.Marks, filter.MarkMask{Value: v, Mask: mask})
	}
	for _, z := range c.IgnoreZones {
		ex.Zones = append(ex.Zones, uint16(z))
	}
	ex.Helpers = append(ex.Helpers, c.IgnoreHelpers...)
	return ex, nil
}

// Reload re-reads the config file (SIGHUP) and applies what can change
// without losing state: the log level and the filters; it also reopens the
// flow log (logrotate). A broken file changes nothing else. What changed but
// needs a restart is logged.
func (d *Daemon) Reload(path string) {
	d.reopenFlowLog() // first: logrotate's SIGHUP must work even with a broken config
	cfg, err := config.Load(path)
	if err != nil {
		d.log.Error("reload: config not applied", "err", err)
		return
	}
	if d.logLevel != nil {
		var l slog.Level
		if err := l.UnmarshalText([]byte(cfg.Log.Level)); err == nil {
			d.logLevel.Set(l)
		}
	}
	if !reflect.DeepEqual(cfg.Filter, d.cfg.Filter) {
		flt, err := newFilter(cfg.Filter)
		if err != nil {
			d.log.Error("reload: filter not applied", "err", err)
		} else {
			flt.SetOwn(d.filter.Load().Own())
			d.filter.Store(flt)
			d.log.Info("reload: filters applied; resynchronizing the internal cache")
			d.requestResync()
		}
	}
	if !reflect.DeepEqual(cfg.PeerPolicy, d.cfg.PeerPolicy) {
		if pol, err := d.newPolicy(cfg.PeerPolicy); err != nil {
			d.log.Error("reload: peer policy not applied", "err", err)
		} else {
			d.policy.p.Store(pol)
			d.log.Info("reload: peer policy applied to flows received and committed from now on")
		}
	}
	var needRestart []string
	for name, pair := range map[string][2]any{
		"node": {cfg.Node, d.cfg.Node}, "control": {cfg.Control, d.cfg.Control},
		"kernel": {cfg.Kernel, d.cfg.Kernel}, "sync": {cfg.Sync, d.cfg.Sync},
		"failover": {cfg.Failover, d.cfg.Failover}, "defer": {cfg.Defer, d.cfg.Defer}, "log.format": {cfg.Log.Format, d.cfg.Log.Format},
		"log.flows": {[2]string{cfg.Log.Flows, cfg.Log.FlowsFormat}, [2]string{d.cfg.Log.Flows, d.cfg.Log.FlowsFormat}},
		"api":       {cfg.API, d.cfg.API},
	} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			needRestart = append(needRestart, name)
		}
	}
	if len(needRestart) > 0 {
		slices.Sort(needRestart)
		d.log.Warn("reload: these settings changed but take effect only after a restart", "sections", needRestart)
	}
	d.log.Info("reload: done", "log_level", cfg.Log.Level)
}

func lookupGroup(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil {
		return n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(gr.Gid)
}

// Run runs the daemon until ctx ends or a part of it fails. It always
// removes the control socket before it returns.
func (d *Daemon) Run(ctx context.Context) error {
	d.started = time.Now()
	defer d.closeAPI()
	if d.metricsSrv != nil {
		defer d.metricsSrv.Close()
	}
	// Subscribe before the first dump, so that no change falls between.
	if d.cfg.Sync.Expectations {
		d.iexp = cache.NewInternalExpect()
	}
	l, err := d.kern.Listen(kernel.ListenOptions{ReadBuffer: int(d.cfg.Kernel.EventBuffer), NetNS: d.netns,
		Expectations: d.cfg.Sync.Expectations})
	if err != nil {
		d.ctl.Close()
		return fmt.Errorf("subscribe to conntrack events: %w", err)
	}
	d.listener = l
	if d.netns == 0 {
		if err := d.kern.EnsureEvents(); err != nil {
			l.Close()
			d.ctl.Close()
			return err
		}
	}
	d.internal = cache.NewInternal(kernel.TimeoutPolicy())
	if d.cfg.Sync.Disabled {
		d.internal.DisableChanges() // nobody takes them
		if d.iexp != nil {
			d.iexp.DisableChanges()
		}
	} else {
		d.internal.SetMinAge(d.cfg.Sync.MinAge.Duration)
	}
	// The writer's sockets are known before any event is read, so that
	// events caused by our own writes (commit) are never taken as local.
	w, err := d.kern.NewWriter(kernel.WriterOptions{
		Sockets: d.cfg.Kernel.WriteSockets, Batch: d.cfg.Kernel.WriteBatch, NetNS: d.netns,
		MinTimeout: uint32(d.cfg.Failover.MinTimeout.Seconds()),
	})
	if err != nil {
		l.Close()
		d.ctl.Close()
		return fmt.Errorf("open conntrack writer: %w", err)
	}
	d.writer = w
	defer w.Close()
	ports := w.PortIDs()
	d.ownPorts.Store(&ports)
	l.IgnorePorts(ports)
	if d.cfg.Sync.Inject && !d.cfg.Sync.Disabled {
		iw, err := d.openInjector()
		if err != nil {
			l.Close()
			d.ctl.Close()
			return err
		}
		defer iw.Close()
	}
	var tr ctsync.Transport
	if !d.cfg.Sync.Disabled {
		d.external = cache.NewExternal()
		if tr, err = d.newTransport(); err == nil {
			d.node, err = d.newNode(tr)
		}
		if err == nil && d.iexp != nil {
			d.node.SetExpectations(d.iexp, d.acceptHelper, d.acceptPeerHelper)
		}
		if err != nil {
			if tr != nil {
				tr.Close()
			}
			l.Close()
			d.ctl.Close()
			return fmt.Errorf("sync: %w", err)
		}
	}
	if d.node != nil {
		d.node.SetDigestInterval(d.cfg.Sync.DigestInterval.Duration)
	}
	d.metrics = newMetrics(d)
	var queue *kernel.Queue
	if d.cfg.Defer.Enabled && d.node != nil {
		if queue, err = d.openDefer(); err != nil {
			tr.Close()
			l.Close()
			d.ctl.Close()
			return err
		}
	}
	close(d.ready)
	d.log.Info("ctsyncd started", "version", d.version, "node", d.cfg.Node.Name,
		"socket", d.cfg.Control.Socket, "event_buffer", l.ReadBuffer())

	d.coord = failover.NewCoordinator(d, d.log.With("part", "failover"))
	defer d.coord.Close()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.listener.Run(ctx, d) })
	g.Go(func() error { return d.ctl.Serve(ctx, d.handle) })
	if d.api != nil {
		g.Go(func() error { return d.api.Serve(ctx) })
		d.log.Info("API and web console listening", "url", d.api.URL())
	}
	if d.cfg.Filter.IgnoreOwn() {
		g.Go(func() error {
			return d.kern.WatchAddrs(ctx, d.netns, func(addrs []netip.Addr) {
				d.filter.Load().SetOwn(addrs)
				d.log.Debug("own addresses", "count", len(addrs))
			})
		})
	}
	g.Go(func() error { return d.reconciler(ctx) })
	if d.flowLog != nil {
		g.Go(func() error { return d.flushFlowLog(ctx) })
	}
	if d.rulesetEnabled() {
		g.Go(func() error { return d.guardRuleset(ctx) })
	}
	if d.cfg.Sync.MinAge.Duration > 0 && !d.cfg.Sync.Disabled {
		g.Go(func() error { return d.promoteAged(ctx) })
	}
	g.Go(func() error { return d.readiness(ctx) })
	g.Go(func() error { return d.watchdog(ctx) })
	if d.metricsSrv != nil {
		g.Go(func() error { return d.serveMetrics(ctx, d.metricsSrv) })
		d.log.Info("metrics listener", "url", d.metricsSrv.URL()+"/metrics")
	}
	if d.inject != nil {
		g.Go(func() error { return d.inject.run(ctx) })
	}
	if queue != nil {
		g.Go(func() error { return d.runDefer(ctx, queue) })
	}
	if d.node != nil {
		g.Go(func() error {
			defer tr.Close()
			if err := d.node.Run(ctx); err != nil {
				return fmt.Errorf("sync: %w", err)
			}
			return nil
		})
	}
	err = g.Wait()
	d.notify.stopping()
	d.ctl.Close()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	d.log.Info("ctsyncd stopped")
	return nil
}

// Event implements kernel.Handler; it runs on the listener goroutine.
func (d *Daemon) Event(ev *kernel.Event) {
	d.ops.inEvent.Store(1)
	defer d.ops.inEvent.Store(0)
	if ev.PortID != 0 && slices.Contains(*d.ownPorts.Load(), ev.PortID) {
		d.evOwn.Add(1)
		return
	}
	switch ev.Type {
	case kernel.EventDestroy:
		d.evDestroy.Add(1)
		d.internal.Delete(ev.Flow.Key)
		d.logDestroyed(ev)
		return
	case kernel.EventNew:
		d.evNew.Add(1)
	default:
		d.evUpdate.Add(1)
	}
	if !d.filter.Load().Match(&ev.Flow) {
		d.evFiltered.Add(1)
		// A cached flow that moved into an ignored state leaves the cache.
		d.internal.Delete(ev.Flow.Key)
		return
	}
	d.internal.Upsert(&ev.Flow)
}

// Overrun implements kernel.Handler: events were lost, re-read the table.
// The warning is logged at most every overrunLogEvery.
func (d *Daemon) Overrun() {
	d.requestResync()
	now := time.Now()
	if now.Sub(d.lastOverrunLog) < overrunLogEvery {
		return
	}
	d.lastOverrunLog = now
	d.log.Warn("conntrack event socket overrun: events lost, resynchronizing from a dump",
		"overruns", d.listener.Stats().Overruns, "event_buffer", d.listener.ReadBuffer(),
		"hint", "raise kernel.event_buffer")
}

const overrunLogEvery = 10 * time.Second

func (d *Daemon) requestResync() {
	select {
	case d.resyncCh <- struct{}{}:
	default:
	}
}

// resyncDutyFactor bounds the periodic reconciles to about a tenth of the
// time: the next one is due kernel.resync_interval after the last, or
// resyncDutyFactor times the last one's duration when that is longer (a
// dump of 4M flows took 21 s on 2 CPUs, against a 30 s interval).
const resyncDutyFactor = 10

// reconciler dumps the table at start, on every overrun and every
// kernel.resync_interval (stretched for a table whose dump takes long:
// resyncDutyFactor), and reconciles the internal cache with it.
func (d *Daemon) reconciler(ctx context.Context) error {
	iv := d.cfg.Kernel.ResyncInterval.Duration
	var (
		timer *time.Timer
		tick  <-chan time.Time
	)
	if iv > 0 {
		timer = time.NewTimer(iv)
		defer timer.Stop()
		tick = timer.C
	}
	reason := "start"
	beat := time.NewTicker(reconBeatEvery)
	defer beat.Stop()
	for {
		d.ops.reconBeat.Store(time.Now().UnixNano())
		start := time.Now()
		_, err := d.reconcile(ctx, reason)
		if timer != nil {
			took := time.Since(start)
			next := max(iv, resyncDutyFactor*took)
			if next > iv && reason == "periodic" {
				d.log.Debug("periodic reconcile stretched: the last one took long", "took", took.Round(time.Millisecond), "next_in", next.Round(time.Second))
			}
			timer.Reset(next)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d.log.Error("reconcile failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		var ok bool
		for {
			if reason, ok = d.waitResync(ctx, beat.C, tick); !ok {
				return nil
			}
			if reason != "periodic" || !d.committing.Load() {
				break
			}
			d.log.Debug("periodic reconcile skipped: a commit is running")
			timer.Reset(iv)
		}
	}
}

// waitResync waits in the reconciler for the next reason to reconcile,
// beating every reconBeatEvery to show the loop is alive.
func (d *Daemon) waitResync(ctx context.Context, beat, tick <-chan time.Time) (string, bool) {
	for {
		select {
		case <-ctx.Done():
			return "", false
		case <-d.resyncCh:
			return "overrun or request", true
		case <-tick:
			return "periodic", true
		case <-beat:
			d.ops.reconBeat.Store(time.Now().UnixNano())
		}
	}
}

// reconcile dumps the kernel table and brings the internal cache to it.
func (d *Daemon) reconcile(ctx context.Context, reason string) (*reconcileReport, error) {
	d.reconMu.Lock()
	defer d.reconMu.Unlock()
	if d.newOff.Load() {
		if err := d.listener.PauseNew(false); err != nil {
			d.log.Error("cannot listen to NEW events again; new flows are learnt from updates and re-reads", "err", err)
		} else {
			d.newOff.Store(false)
			d.log.Info("listening to NEW events again")
		}
	}
	start := time.Now()
	r := d.internal.BeginReconcile()
	n := 0
	flt := d.filter.Load()
	skip := d.injectedOnly()
	err := d.kern.Dump(ctx, kernel.DumpOptions{NetNS: d.netns}, func(f *flow.Flow) {
		if flt.Match(f) && (skip == nil || !skip(f.Key)) {
			r.Add(f)
			n++
		}
	})
	took := time.Since(start)
	rep := &reconcileReport{At: start, Duration: took.Round(time.Microsecond).String(), Reason: reason, Flows: n}
	if err != nil {
		r.Abort()
		rep.Err = err.Error()
		d.lastRec.Store(rep)
		return rep, fmt.Errorf("dump conntrack table: %w", err)
	}
	rep.Result = r.Finish()
	d.lastRec.Store(rep)
	d.ops.dumped.Store(true)
	if err := d.reconcileExpects(ctx, reason); err != nil {
		return rep, err
	}
	lvl := slog.LevelDebug
	if rep.Result.Added+rep.Result.Fixed+rep.Result.Removed > 0 || reason != "periodic" {
		lvl = slog.LevelInfo
	}
	d.log.Log(ctx, lvl, "reconciled internal cache with the kernel table", "reason", reason,
		"flows", n, "added", rep.Result.Added, "fixed", rep.Result.Fixed, "removed", rep.Result.Removed,
		"took", took.Round(time.Millisecond))
	return rep, nil
}

// Internal returns the internal cache (tests, and the parts wired later).
func (d *Daemon) Internal() *cache.Internal { return d.internal }

// External returns the external cache, nil without sync.
func (d *Daemon) External() *cache.External { return d.external }

// Node returns the replication node, nil without sync.
func (d *Daemon) Node() *ctsync.Node { return d.node }

// Ready is closed once Run has subscribed to events and made the caches.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }
