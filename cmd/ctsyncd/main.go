// Command ctsyncd replicates the Linux conntrack table between firewalls,
// so that a standby can take over established connections. See the README.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"syscall"

	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

const usage = `Usage: ctsyncd [--config FILE] [--check] [--log-level LEVEL]

ctsyncd keeps a cache of this node's conntrack table (kernel events plus
periodic dumps), replicates it to its peers over an authenticated, reliable
sync channel, and commits the peers' flows into the kernel on failover, so
that established connections survive the move of the virtual IPs.

It runs in the foreground (systemd style) and logs to stderr. It is driven
with ctsyncctl over a UNIX socket (control.socket in the config).

Memory: the Go garbage collector runs at GOGC=50 unless the GOGC
environment variable says otherwise; "ctsyncctl stats" shows the heap.
CPU: GOMAXPROCS=1 in the environment keeps ctsyncd's goroutines on one
thread: measured on 2 CPUs, 10-20 % less CPU per replicated flow, and a
commit about a third slower (BENCHMARKS.md).

Commit: while it writes the peers' flows into the kernel, ctsyncd stops
listening to NEW conntrack events, so that the kernel does not build an
event per create (about half a create's cost); UPDATE and DESTROY events
keep coming, and the table is re-read after the commit to learn the
flows created meanwhile. The kernel builds events while any socket on the
machine listens to them: a "conntrack -E" left running, or another
daemon listening in another namespace, takes the gain away.

Under systemd (Type=notify) it sends READY=1 once the initial dump is done
and every live peer's table arrived, STATUS= lines, and WATCHDOG=1 while its
loops are alive when the unit sets WatchdogSec. With [metrics] listen set it
serves Prometheus metrics on /metrics, /healthz and /readyz.

Signals: SIGTERM or SIGINT stop it cleanly (control socket removed);
SIGHUP re-reads the config and applies what can change without losing
state (log level and format excepted: log level only; filters), reporting
what it could not apply.

Options:
`

func main() {
	fs := flag.NewFlagSet("ctsyncd", flag.ContinueOnError)
	cfgPath := fs.String("config", "/etc/ctsyncd/ctsyncd.toml", "configuration `file` (TOML)")
	check := fs.Bool("check", false, "validate the configuration and exit")
	logLevel := fs.String("log-level", "", "override log.level: debug, info, warn or error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile (go tool pprof) to `file` until ctsyncd stops")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ctsyncd: unexpected argument %q (see --help)\n", fs.Arg(0))
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("ctsyncd", buildVersion())
		return
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ctsyncd: %v\n", err)
		os.Exit(1)
	}
	if *logLevel != "" {
		cfg.Log.Level = *logLevel
		if err := cfg.Validate(); err != nil {
			fmt.Fprintf(os.Stderr, "ctsyncd: --log-level: %v\n", err)
			os.Exit(2)
		}
	}
	if *check {
		fmt.Printf("%s: ok\n", *cfgPath)
		return
	}
	// The caches are most of the heap and long-lived, and the event path
	// allocates almost nothing: collecting at 50% growth instead of Go's
	// 100% keeps the resident memory near the live data (measured: 277
	// instead of ~325 bytes per flow after 3M events of churn, at the same
	// CPU). GOGC in the environment overrides it.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	level := new(slog.LevelVar)
	level.UnmarshalText([]byte(cfg.Log.Level))
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, hopts)
	if cfg.Log.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, hopts)
	}
	log := slog.New(h)

	d, err := daemon.New(daemon.Options{Config: cfg, Log: log, Version: buildVersion(), LogLevel: level})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ctsyncd: %v\n", err)
		os.Exit(1)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ctsyncd: --cpuprofile: %v\n", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "ctsyncd: --cpuprofile: %v\n", err)
			os.Exit(1)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				d.Reload(*cfgPath)
			}
		}
	}()
	if err := d.Run(ctx); err != nil {
		log.Error("ctsyncd failed", "err", err)
		stop()
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}
