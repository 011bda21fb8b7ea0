package daemon

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
)

// fakeSystemd is a NOTIFY_SOCKET: a unixgram socket collecting what the
// daemon sends.
func fakeSystemd(t *testing.T) (get func() []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, strings.Split(string(buf[:n]), "\n")...)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

func count(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// TestWatchdogFedOnlyWhenAlive: WATCHDOG=1 goes out every half interval
// while the loops are alive, and stops while one is stuck (the control).
func TestWatchdogFedOnlyWhenAlive(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, healthy := range []bool{true, false} {
		get := fakeSystemd(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		alive := func(time.Duration) []string {
			if healthy {
				return nil
			}
			return []string{"reconciler silent for 9s"}
		}
		go func() {
			watchdogLoop(ctx, log, newNotifier(log), 200*time.Millisecond, alive, func() string { return "fine" })
			close(done)
		}()
		time.Sleep(time.Second)
		cancel()
		<-done
		got := get()
		dogs := count(got, "WATCHDOG=1")
		if healthy && dogs == 0 {
			t.Errorf("healthy: no WATCHDOG=1 in %q", got)
		}
		if healthy && count(got, "STATUS=fine") == 0 {
			t.Errorf("healthy: no STATUS= line in %q", got)
		}
		if !healthy && dogs != 0 {
			t.Errorf("stuck: %d WATCHDOG=1 sent", dogs)
		}
		if !healthy && count(got, "STATUS=UNHEALTHY: reconciler silent") == 0 {
			t.Errorf("stuck: no UNHEALTHY status in %q", got)
		}
	}
}

// TestLiveness: an event handler stuck in one event and a silent
// reconciler are reported; progress clears them.
func TestLiveness(t *testing.T) {
	d := &Daemon{internal: cache.NewInternal(nil)}
	if bad := d.liveness(50 * time.Millisecond); len(bad) != 0 {
		t.Fatalf("fresh daemon unhealthy: %q", bad)
	}
	d.ops.inEvent.Store(1)
	d.liveness(50 * time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	bad := d.liveness(50 * time.Millisecond)
	if len(bad) != 1 || !strings.Contains(bad[0], "event handler stuck") {
		t.Errorf("stuck event: %q", bad)
	}
	d.evNew.Add(1) // the handler moved on
	if bad := d.liveness(50 * time.Millisecond); len(bad) != 0 {
		t.Errorf("after progress: %q", bad)
	}
	d.ops.inEvent.Store(0)
	d.ops.reconBeat.Store(time.Now().Add(-time.Minute).UnixNano())
	bad = d.liveness(50 * time.Millisecond)
	if len(bad) != 1 || !strings.Contains(bad[0], "reconciler silent") {
		t.Errorf("silent reconciler: %q", bad)
	}
}
