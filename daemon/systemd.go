package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
)

// systemd integration (Type=notify): READY=1 once the readiness condition
// holds, STATUS= lines an operator sees in `systemctl status`, and
// WATCHDOG=1 every half WatchdogSec while the daemon's loops are alive
// (liveness), so that a stuck event loop gets the service restarted.
//
// The notify socket and watchdog interval come from the environment
// systemd sets (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID); outside
// systemd every call is a no-op.

// notifier sends sd_notify messages; the zero value sends nothing.
type notifier struct {
	log *slog.Logger
}

func newNotifier(log *slog.Logger) *notifier {
	return &notifier{log: log}
}

func (n *notifier) send(state string) {
	if n == nil {
		return
	}
	if _, err := sddaemon.SdNotify(false, state); err != nil {
		n.log.Warn("systemd notify failed", "state", strings.SplitN(state, "\n", 2)[0], "err", err)
	}
}

func (n *notifier) ready() { n.send(sddaemon.SdNotifyReady + "\nSTATUS=ready: initial sync done") }

func (n *notifier) status(s string) { n.send("STATUS=" + s) }

func (n *notifier) stopping() { n.send(sddaemon.SdNotifyStopping + "\nSTATUS=stopping") }

// watchdog feeds systemd's watchdog every half interval while liveness
// finds nothing wrong, and refreshes STATUS= every statusEvery. It returns
// when ctx ends.
func (d *Daemon) watchdog(ctx context.Context) error {
	iv, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil {
		d.log.Warn("systemd watchdog settings not understood; not feeding it", "err", err)
		iv = 0
	}
	if iv > 0 {
		d.log.Info("feeding the systemd watchdog", "watchdog", iv)
	}
	watchdogLoop(ctx, d.log, d.notify, iv, d.liveness, d.statusLine)
	return nil
}

// watchdogLoop is watchdog's loop: alive returns the liveness problems
// (none: healthy), status the STATUS= line.
func watchdogLoop(ctx context.Context, log *slog.Logger, n *notifier, iv time.Duration,
	alive func(timeout time.Duration) []string, status func() string) {
	period := statusEvery
	if iv > 0 {
		period = min(period, iv/2)
	}
	t := time.NewTicker(period)
	defer t.Stop()
	lastStatus := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		bad := alive(max(period, time.Second))
		if len(bad) > 0 {
			log.Error("unhealthy: not feeding the watchdog", "problems", bad)
			n.status("UNHEALTHY: " + strings.Join(bad, "; "))
			lastStatus = time.Now()
			continue
		}
		if iv > 0 {
			n.send(sddaemon.SdNotifyWatchdog)
		}
		if time.Since(lastStatus) >= statusEvery {
			n.status(status())
			lastStatus = time.Now()
		}
	}
}

// statusEvery is how often STATUS= is refreshed.
const statusEvery = 10 * time.Second

// statusLine is the one-line status for systemd.
func (d *Daemon) statusLine() string {
	s := d.Status()
	var b strings.Builder
	if s.Ready {
		b.WriteString("ready")
	} else {
		b.WriteString("not ready")
	}
	if s.Role != "" {
		fmt.Fprintf(&b, ", %s", s.Role)
	}
	fmt.Fprintf(&b, "; %d flows, %d from peers", s.Caches.InternalFlows, s.Caches.ExternalFlows)
	if s.Sync != nil {
		up := 0
		for _, p := range s.Peers {
			if p.Alive {
				up++
			}
		}
		fmt.Fprintf(&b, "; peers %d/%d up; %d at risk", up, len(s.Peers), s.FlowsAtRisk)
	}
	if len(s.Warnings) > 0 {
		fmt.Fprintf(&b, "; %d warnings", len(s.Warnings))
	}
	return b.String()
}
