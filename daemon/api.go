package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/ctsyncd/ctsyncd/api"
	"github.com/ctsyncd/ctsyncd/api/console"
	"github.com/ctsyncd/ctsyncd/conntrack"
	"github.com/ctsyncd/ctsyncd/httpd"
)

// The daemon is the API's flow source, status and actions (package api
// declares what it needs; these methods answer it).

// apiFlows adapts the daemon to api.Flows. The kernel's table is read and
// written through the conntrack library (filters pushed into the kernel
// where it can); its writes are not the daemon's own, so their events
// update the internal cache, and the peers, as any other change.
type apiFlows struct{ d *Daemon }

func (a apiFlows) ParseFilter(q url.Values) (api.Filter, error) { return api.ParseFlowFilter(q) }

// table opens the conntrack handle of the daemon's namespace once.
func (d *Daemon) table() (*conntrack.Handle, error) {
	d.ctOnce.Do(func() {
		opts := conntrack.Options{}
		if d.netns != 0 {
			opts.NetNS = fmt.Sprintf("/proc/self/fd/%d", d.netns)
		}
		d.ct, d.ctErr = conntrack.Open(opts)
	})
	return d.ct, d.ctErr
}

func (a apiFlows) List(ctx context.Context, src api.Source, f api.Filter, fn func(*api.Item) error) error {
	ff := f.(*api.FlowFilter)
	d := a.d
	switch src {
	case api.SourceKernel:
		if ff.Origin != "" {
			return &api.ParamError{Param: "origin", Problem: "the kernel's flows have no origin; origin filters source=external"}
		}
		h, err := d.table()
		if err != nil {
			return err
		}
		for fl, err := range h.List(ctx, ff.CT) {
			if err != nil {
				return fmt.Errorf("list conntrack table: %w", err)
			}
			if err := fn(&api.Item{Flow: fl}); err != nil {
				return err
			}
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

// kernelFilter is the conntrack filter of a DELETE or PATCH.
func kernelFilter(f api.Filter) (conntrack.Filter, error) {
	ff := f.(*api.FlowFilter)
	if ff.Origin != "" {
		return conntrack.Filter{}, &api.ParamError{Param: "origin", Problem: "the kernel's flows have no origin; origin filters source=external"}
	}
	return ff.CT, nil
}

// Delete deletes the kernel's flows f selects, batched. kernelMu keeps it
// apart from commits and purges.
func (a apiFlows) Delete(ctx context.Context, f api.Filter) (int, error) {
	ct, err := kernelFilter(f)
	if err != nil {
		return 0, err
	}
	h, err := a.d.table()
	if err != nil {
		return 0, err
	}
	a.d.kernelMu.Lock()
	defer a.d.kernelMu.Unlock()
	return h.DeleteMatching(ctx, ct)
}

// Update sets the mark and/or timeout of the kernel's flows f selects.
func (a apiFlows) Update(ctx context.Context, f api.Filter, c api.Change) (int, error) {
	ct, err := kernelFilter(f)
	if err != nil {
		return 0, err
	}
	h, err := a.d.table()
	if err != nil {
		return 0, err
	}
	var ch conntrack.Change
	if c.Mark != nil {
		ch.SetMark, ch.Mark = true, *c.Mark
	}
	if c.Timeout != nil {
		ch.SetTimeout, ch.Timeout = true, *c.Timeout
	}
	a.d.kernelMu.Lock()
	defer a.d.kernelMu.Unlock()
	return h.UpdateMatching(ctx, ct, ch)
}

// apiExpect lists the kernel's expectations for the API.
type apiExpect struct{ d *Daemon }

func (a apiExpect) ListExpectations(ctx context.Context, fn func(any) error) error {
	h, err := a.d.table()
	if err != nil {
		return err
	}
	for e, err := range h.ListExpect(ctx, conntrack.Filter{}) {
		if err != nil {
			return fmt.Errorf("list conntrack expectations: %w", err)
		}
		if err := fn(expectView(e, "")); err != nil {
			return err
		}
	}
	return nil
}

// apiStatus adapts the daemon to api.Status.
type apiStatus struct{ d *Daemon }

// Status is the stable status model, the document `ctsyncctl status
// --json` prints (docs/status.md).
func (a apiStatus) Status(ctx context.Context) (any, error) { return a.d.Status(), nil }

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
		Expectations: apiExpect{d},
		Log:          d.log.With("part", "api"),
		Audit:        audit,
		SecureCookie: c.CertFile != "",
		Console:      console.Handler(),
	})
	return h, closer, nil
}

// listenAPI binds api.listen (TLS unless loopback) on an httpd server
// serving h.
func (d *Daemon) listenAPI(h http.Handler) (*httpd.Server, error) {
	c := d.cfg.API
	var tc *tls.Config
	if c.CertFile != "" {
		var err error
		if tc, err = api.TLSConfig(c.CertFile, c.KeyFile, c.ClientCAFile); err != nil {
			return nil, err
		}
	}
	srv, err := httpd.Listen(httpd.Options{
		Name: "api", Addr: c.Listen, TLS: tc, Log: d.log.With("part", "api"),
		// Actions run up to failover.commit_timeout; listings extend
		// their own write deadline as they stream.
		WriteTimeout: d.cfg.Failover.CommitTimeout.Duration + 30*time.Second,
		MaxBodyBytes: api.MaxBody,
	})
	if err != nil {
		return nil, fmt.Errorf("api.listen: %w", err)
	}
	srv.Handle("/", h)
	return srv, nil
}

// APIURL returns the base URL of the API ("https://IP:port"), "" when it
// is off (tests: api.listen may use port 0).
func (d *Daemon) APIURL() string {
	if d.api == nil {
		return ""
	}
	return d.api.URL()
}

// closeAPI closes the API's listener and audit file (a start that failed,
// or the end of Run).
func (d *Daemon) closeAPI() {
	if d.api != nil {
		d.api.Close()
	}
	if d.apiClose != nil {
		d.apiClose()
		d.apiClose = nil
	}
	if d.ct != nil {
		d.ct.Close()
	}
}
