package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/api"
	"github.com/ctsyncd/ctsyncd/api/console"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
	"github.com/ctsyncd/ctsyncd/status"
)

// The daemon is the API's flow source, status and actions (package api
// declares what it needs; these methods answer it).

// apiFlows adapts the daemon to api.Flows.
type apiFlows struct{ d *Daemon }

func (a apiFlows) ParseFilter(q url.Values) (api.Filter, error) { return api.ParseFlowFilter(q) }

func (a apiFlows) List(ctx context.Context, src api.Source, f api.Filter, fn func(*api.Item) error) error {
	ff := f.(*api.FlowFilter)
	d := a.d
	switch src {
	case api.SourceKernel:
		var stop error
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		err := d.kern.Dump(dctx, kernel.DumpOptions{NetNS: d.netns}, func(fl *flow.Flow) {
			if stop != nil || !ff.Match(fl, "") {
				return
			}
			it := api.Item{Flow: fl}
			if stop = fn(&it); stop != nil {
				cancel()
			}
		})
		if stop != nil {
			return stop
		}
		if err != nil {
			return fmt.Errorf("dump conntrack table: %w", err)
		}
		return nil
	case api.SourceInternal:
		now := time.Now()
		for _, e := range d.internal.Snapshot() {
			fl := e.Flow
			if !ff.Match(&fl, "") {
				continue
			}
			elapsed := uint32(max(0, now.Sub(time.Unix(0, e.Refreshed))/time.Second))
			fl.Timeout -= min(fl.Timeout, elapsed)
			if err := fn(&api.Item{Flow: &fl, Idle: e.Idle(now)}); err != nil {
				return err
			}
		}
		return nil
	case api.SourceExternal:
		if d.external == nil {
			return fmt.Errorf("source=external: %w (sync.disabled = true)", api.ErrUnavailable)
		}
		now := time.Now()
		for _, e := range d.external.Snapshot() {
			fl := e.Flow
			if !ff.Match(&fl, e.Origin) {
				continue
			}
			_, fl.Timeout = externalLine(&e, now)
			if err := fn(&api.Item{Flow: &fl, Origin: e.Origin, Idle: e.IdleAt}); err != nil {
				return err
			}
		}
		return nil
	}
	return &api.ParamError{Param: "source", Problem: fmt.Sprintf("%q is not a source", src)}
}

// matching dumps the kernel's flows f selects.
func (a apiFlows) matching(ctx context.Context, f api.Filter) ([]flow.Flow, error) {
	ff := f.(*api.FlowFilter)
	if ff.Origin != "" {
		return nil, &api.ParamError{Param: "origin", Problem: "the kernel's flows have no origin; origin filters source=external"}
	}
	var out []flow.Flow
	err := a.d.kern.Dump(ctx, kernel.DumpOptions{NetNS: a.d.netns}, func(fl *flow.Flow) {
		if ff.Match(fl, "") {
			c := *fl
			if fl.Extra != nil {
				x := *fl.Extra
				c.Extra = &x
			}
			out = append(out, c)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("dump conntrack table: %w", err)
	}
	return out, nil
}

// writeOutcome counts what a write did: flows gone meanwhile (ENOENT) are
// neither done nor failed; other failures make an error.
func writeOutcome(op string, res []kernel.Result, err error) (int, error) {
	done, failed := 0, 0
	var first error
	for _, r := range res {
		switch {
		case r.Err == nil:
			done++
		case errors.Is(r.Err, unix.ENOENT):
		default:
			failed++
			if first == nil {
				first = r.Err
			}
		}
	}
	if err != nil {
		return done, fmt.Errorf("%s: %w", op, err)
	}
	if failed > 0 {
		return done, fmt.Errorf("%s: %d of %d flows failed, first: %w", op, failed, len(res), first)
	}
	return done, nil
}

// Delete deletes the kernel's flows f selects, and forgets them in the
// internal cache (so that peers forget them too).
func (a apiFlows) Delete(ctx context.Context, f api.Filter) (int, error) {
	d := a.d
	d.kernelMu.Lock()
	defer d.kernelMu.Unlock()
	flows, err := a.matching(ctx, f)
	if err != nil || len(flows) == 0 {
		return 0, err
	}
	keys := make([]flow.Key, len(flows))
	for i := range flows {
		keys[i] = flows[i].Key
	}
	res, err := d.writer.Delete(ctx, keys)
	for _, r := range res {
		if r.Err == nil || errors.Is(r.Err, unix.ENOENT) {
			d.internal.Delete(r.Key)
		}
	}
	return writeOutcome("delete", res, err)
}

// Update sets the mark and/or timeout of the kernel's flows f selects; the
// internal cache takes the new state (and replicates it).
func (a apiFlows) Update(ctx context.Context, f api.Filter, c api.Change) (int, error) {
	d := a.d
	d.kernelMu.Lock()
	defer d.kernelMu.Unlock()
	flows, err := a.matching(ctx, f)
	if err != nil || len(flows) == 0 {
		return 0, err
	}
	for i := range flows {
		if c.Mark != nil {
			flows[i].Mark = *c.Mark
		}
		flows[i].Timeout = 0 // leave it
		if c.Timeout != nil {
			flows[i].Timeout = *c.Timeout
		}
	}
	res, err := d.writer.Update(ctx, flows)
	flt := d.filter.Load()
	for i, r := range res {
		if r.Err == nil && flt.Match(&flows[i]) {
			if flows[i].Timeout == 0 {
				if e, ok := d.internal.Get(r.Key); ok {
					flows[i].Timeout = e.Flow.Timeout
				}
			}
			d.internal.Upsert(&flows[i])
		}
	}
	return writeOutcome("update", res, err)
}

// apiStatus adapts the daemon to api.Status.
type apiStatus struct{ d *Daemon }

func (a apiStatus) Status(ctx context.Context) (any, error) {
	return struct {
		*status.Status
		Stats Stats `json:"stats"`
	}{a.d.Status(), a.d.stats()}, nil
}

// apiActions adapts the daemon to api.Actions: the control socket's
// commands of the same names.
type apiActions struct{ d *Daemon }

func (a apiActions) Action(ctx context.Context, name string) (any, int, error) {
	d := a.d
	unavailable := func() (any, int, error) {
		return nil, 0, fmt.Errorf("%s: %w: %w", name, api.ErrUnavailable, errNoSync)
	}
	switch name {
	case "commit":
		if d.external == nil {
			return unavailable()
		}
		rep, err := d.commit(ctx)
		if rep == nil {
			return nil, 0, err
		}
		if err == nil && rep.Failed > 0 {
			err = fmt.Errorf("commit: %d of %d flows failed", rep.Failed, rep.Flows)
		}
		return rep, rep.Flows, err
	case "resync":
		rep, err := d.reconcile(ctx, "api resync")
		if rep == nil {
			return nil, 0, err
		}
		return rep, rep.Flows, err
	case "bulk":
		if d.node == nil {
			return unavailable()
		}
		d.node.Bulk()
		n := d.internal.Len()
		d.log.Info("bulk transfer requested through the API")
		return map[string]any{"bulk": "started", "flows": n}, n, nil
	case "request-resync":
		if d.node == nil {
			return unavailable()
		}
		d.node.RequestResync()
		d.log.Info("resync from peers requested through the API")
		return map[string]any{"request_resync": "sent"}, 0, nil
	case "purge":
		rep, err := d.purge(ctx)
		return rep, rep.Capped, err
	}
	return nil, 0, fmt.Errorf("unknown action %q", name)
}

// newAPI builds the API handler from [api], or returns nil when it is off.
// The audit log goes to api.audit_file (JSON lines) or the daemon's log;
// the returned closer closes the file.
func (d *Daemon) newAPI() (*api.Handler, func(), error) {
	c := d.cfg.API
	if c.Listen == "" {
		return nil, func() {}, nil
	}
	toks, err := api.LoadTokens(c.TokensFile)
	if err != nil {
		return nil, nil, fmt.Errorf("api.tokens_file: %w", err)
	}
	audit := d.log.With("part", "audit")
	closer := func() {}
	if c.AuditFile != "" {
		f, err := os.OpenFile(c.AuditFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("api.audit_file: %w", err)
		}
		audit = slog.New(slog.NewJSONHandler(f, nil)).With("node", d.cfg.Node.Name)
		closer = func() { f.Close() }
	}
	h := api.New(api.Options{
		Tokens:       toks,
		Flows:        apiFlows{d},
		Status:       apiStatus{d},
		Actions:      apiActions{d},
		Log:          d.log.With("part", "api"),
		Audit:        audit,
		SecureCookie: c.CertFile != "",
		Console:      console.Handler(),
	})
	return h, closer, nil
}

// apiServer listens on api.listen (TLS unless loopback) and serves h.
type apiServer struct {
	ln  net.Listener
	srv *http.Server
	url string
}

func (d *Daemon) listenAPI(h http.Handler) (*apiServer, error) {
	c := d.cfg.API
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return nil, fmt.Errorf("api.listen: %w", err)
	}
	scheme := "http"
	if c.CertFile != "" {
		tc, err := api.TLSConfig(c.CertFile, c.KeyFile, c.ClientCAFile)
		if err != nil {
			ln.Close()
			return nil, err
		}
		ln = tls.NewListener(ln, tc)
		scheme = "https"
	}
	return &apiServer{ln: ln, url: scheme + "://" + ln.Addr().String(), srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		// Actions run up to failover.commit_timeout; listings extend
		// their own write deadline as they stream.
		WriteTimeout:   d.cfg.Failover.CommitTimeout.Duration + 30*time.Second,
		IdleTimeout:    120 * time.Second,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(d.log.With("part", "api").Handler(), slog.LevelDebug),
	}}, nil
}

func (s *apiServer) serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("api: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.srv.Close()
	}
	<-errc
	return nil
}

// APIURL returns the base URL of the API ("https://IP:port"), "" when it
// is off (tests: api.listen may use port 0).
func (d *Daemon) APIURL() string {
	if d.api == nil {
		return ""
	}
	return d.api.url
}

// closeAPI closes the API's listener and audit file (a start that failed,
// or the end of Run).
func (d *Daemon) closeAPI() {
	if d.api != nil {
		d.api.srv.Close()
		d.api.ln.Close()
	}
	if d.apiClose != nil {
		d.apiClose()
		d.apiClose = nil
	}
}
