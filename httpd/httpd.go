// Package httpd is ctsyncd's one HTTP server: every HTTP listener of the
// daemon (the metrics and health listener, the API and web console) is a
// Server of this package, so that they share the same limits, timeouts,
// logging and shutdown.
//
// Use: Listen binds the address (so that a busy port or a bad address is an
// error at start, before anything runs), Handle mounts handlers on the
// server's mux, Serve answers until its context ends and then shuts down
// gracefully. A Server with Options.TLS set serves HTTPS only.
//
//	srv, err := httpd.Listen(httpd.Options{Name: "metrics", Addr: "127.0.0.1:9469", Log: log})
//	srv.Handle("/metrics", promhttp.Handler())
//	g.Go(func() error { return srv.Serve(ctx) })
//
// Concurrency: Handle may be called before or while Serve runs; handlers run
// concurrently, one goroutine per request (net/http's model). Serve owns
// those goroutines and returns after they ended or ShutdownTimeout passed.
package httpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Defaults of Options' limits. They suit small JSON and text answers to
// local scrapers and operators; a listener that streams large answers
// raises WriteTimeout.
const (
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 60 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultShutdownTimeout   = 5 * time.Second
	DefaultMaxHeaderBytes    = 16 << 10
	DefaultMaxBodyBytes      = 1 << 20
)

// Options configure a Server. Zero durations and sizes take the defaults.
type Options struct {
	// Name names the listener in logs and errors ("metrics", "api").
	Name string
	// Addr is the "IP:port" to listen on; port 0 picks a free one (tests).
	Addr string
	// TLS, when set, makes the server speak HTTPS only (it must hold a
	// certificate or GetCertificate). Plain HTTP when nil.
	TLS *tls.Config
	// Log receives errors and request failures; required.
	Log *slog.Logger

	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	// ShutdownTimeout bounds the graceful shutdown: requests still running
	// then are cut.
	ShutdownTimeout time.Duration
	// MaxHeaderBytes bounds a request's header block.
	MaxHeaderBytes int
	// MaxBodyBytes bounds a request body; reading past it fails (a
	// handler answers 413 by checking the error with IsBodyTooLarge).
	MaxBodyBytes int64
}

func (o *Options) setDefaults() error {
	if o.Log == nil {
		return errors.New("httpd: Options.Log is required")
	}
	if o.Name == "" {
		o.Name = "http"
	}
	set := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	set(&o.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	set(&o.ReadTimeout, DefaultReadTimeout)
	set(&o.WriteTimeout, DefaultWriteTimeout)
	set(&o.IdleTimeout, DefaultIdleTimeout)
	set(&o.ShutdownTimeout, DefaultShutdownTimeout)
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	return nil
}

// Server is one HTTP listener with its handlers.
type Server struct {
	opts Options
	ln   net.Listener
	mux  *http.ServeMux
	srv  *http.Server
}

// Listen binds opts.Addr and returns a Server that serves nothing until
// Serve. Handlers are mounted with Handle.
func Listen(opts Options) (*Server, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener: %w", opts.Name, err)
	}
	if opts.TLS != nil {
		cfg := opts.TLS.Clone()
		if cfg.MinVersion == 0 {
			cfg.MinVersion = tls.VersionTLS12
		}
		ln = tls.NewListener(ln, cfg)
	}
	s := &Server{opts: opts, ln: ln, mux: http.NewServeMux()}
	s.srv = &http.Server{
		Handler:           http.MaxBytesHandler(s.mux, opts.MaxBodyBytes),
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       opts.ReadTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    opts.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(opts.Log.With("listener", opts.Name).Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Addr returns the address the server listens on (the port chosen when
// Options.Addr had port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL returns the base URL of the server, "http://IP:port" or
// "https://IP:port".
func (s *Server) URL() string {
	scheme := "http"
	if s.opts.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + s.ln.Addr().String()
}

// Handle mounts h on pattern (net/http.ServeMux patterns, such as
// "GET /metrics" or "/api/v1/").
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// HandleFunc mounts f on pattern.
func (s *Server) HandleFunc(pattern string, f func(http.ResponseWriter, *http.Request)) {
	s.mux.HandleFunc(pattern, f)
}

// Serve answers requests until ctx ends, then shuts down gracefully:
// it stops accepting, lets running requests finish within
// ShutdownTimeout, then closes what remains. It returns nil after a
// shutdown by ctx, or the error that stopped the listener.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("%s listener: %w", s.opts.Name, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.opts.Log.Warn("http listener: requests cut at shutdown", "listener", s.opts.Name, "err", err)
		s.srv.Close()
	}
	<-errc
	return nil
}

// Close closes the listener of a server that will not Serve (a start that
// failed later). Safe after Serve.
func (s *Server) Close() error {
	err := s.srv.Close()
	if cerr := s.ln.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}

// IsBodyTooLarge reports whether err came from reading past MaxBodyBytes.
func IsBodyTooLarge(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}
