package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/control"
	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
	"github.com/ctsyncd/ctsyncd/status"
)

// Root-free tests of the daemon's own logic through its Kernel interface
// (kernel_fake_test.go): the event path and own-write filtering, overrun
// recovery, SIGHUP reload, control dispatch and the failover wiring. The
// kernel tier runs the same daemon on a real conntrack table
// (daemon_kernel_test.go).

var errNoEntry = unix.ENOENT

// syncBuf is a log sink safe for the daemon's goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeRun is a daemon running on a fake kernel.
type fakeRun struct {
	d      *Daemon
	k      *fakeKernel
	cfg    *config.Config
	path   string // the config file
	log    *syncBuf
	level  *slog.LevelVar
	socket string
}

// baseConfig is the config file of a single node (sync off) with its
// control socket in dir; extra is appended.
func baseConfig(dir, extra string) string {
	return fmt.Sprintf(`[node]
name = "fw-test"
[control]
socket = %q
[kernel]
resync_interval = "0s"
[sync]
disabled = true
expectations = false
[filter]
protocols = ["tcp", "udp"]
ignore_own_addresses = true
%s`, filepath.Join(dir, "ctl.sock"), extra)
}

// startFake writes cfgText to a file, loads it and runs a daemon on a fake
// kernel until the test ends.
func startFake(t *testing.T, cfgText string) *fakeRun {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "ctsyncd.toml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	r := &fakeRun{k: newFakeKernel(), cfg: cfg, path: path, log: &syncBuf{}, level: new(slog.LevelVar), socket: cfg.Control.Socket}
	log := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: r.level}))
	r.d, err = New(Options{Config: cfg, Log: log, LogLevel: r.level, Version: "test", Kernel: r.k})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
		if _, err := os.Stat(r.socket); err == nil {
			t.Errorf("control socket %s left behind", r.socket)
		}
		checkNoLeaks(t)
		if t.Failed() {
			t.Logf("daemon log:\n%s", r.log)
		}
	})
	select {
	case <-r.d.Ready():
	case err := <-done:
		t.Fatalf("daemon did not start: %v", err)
	}
	// Wait for the start's reconcile, so that it does not race the test's
	// first changes.
	for deadline := time.Now().Add(time.Minute); r.d.lastRec.Load() == nil; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no reconcile within a minute of the start")
		}
	}
	return r
}

// ctl sends a control command and returns its output.
func (r *fakeRun) ctl(t *testing.T, cmd string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := control.Do(r.socket, control.Request{Command: cmd, Args: args}, &out)
	return out.String(), err
}

func (r *fakeRun) ctlJSON(t *testing.T, v any, cmd string, args ...string) {
	t.Helper()
	var out bytes.Buffer
	if err := control.Do(r.socket, control.Request{Command: cmd, Args: args, JSON: true}, &out); err != nil {
		t.Fatalf("%s %v: %v", cmd, args, err)
	}
	if err := json.Unmarshal(out.Bytes(), v); err != nil {
		t.Fatalf("%s %v: %v\n%s", cmd, args, err, out.Bytes())
	}
}

// testFlow is an established TCP (or UDP) flow 10.1.0.i → 192.0.2.1.
func testFlow(i int, proto uint8) flow.Flow {
	var f flow.Flow
	f.Family = flow.FamilyIPv4
	f.Proto = proto
	f.Orig = flow.Tuple{
		Src: flow.AddrFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})), Dst: flow.AddrFrom(netip.MustParseAddr("192.0.2.1")),
		SrcPort: uint16(20000 + i), DstPort: 443,
	}
	f.Reply = f.Orig.Invert(proto)
	f.Status = flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured
	f.Timeout = 3600
	if proto == flow.ProtoTCP {
		f.TCP.State = flow.TCPEstablished
	}
	return f
}

func inCache(d *Daemon, k flow.Key) bool {
	_, ok := d.Internal().Get(k)
	return ok
}

// Events caused by the daemon's own writer (its port ids) never enter the
// internal cache; the listener is told those ports before it reads any
// event; the same event from another port (traffic: 0, another program) is
// taken.
func TestDaemonOwnWritesIgnored(t *testing.T) {
	r := startFake(t, baseConfig(t.TempDir(), ""))
	r.k.mu.Lock()
	ignored := r.k.ignored
	r.k.mu.Unlock()
	if fmt.Sprint(ignored) != fmt.Sprint(fakePorts) {
		t.Fatalf("listener ignores ports %v, want the writer's %v", ignored, fakePorts)
	}
	own, traffic, other := testFlow(1, flow.ProtoTCP), testFlow(2, flow.ProtoTCP), testFlow(3, flow.ProtoTCP)
	r.k.feed(kernel.EventNew, own, fakePorts[1])
	r.k.feed(kernel.EventNew, traffic, 0)
	r.k.feed(kernel.EventNew, other, 4242)
	if inCache(r.d, own.Key) {
		t.Error("a flow written by the daemon's own writer entered the internal cache")
	}
	if !inCache(r.d, traffic.Key) || !inCache(r.d, other.Key) {
		t.Error("flows created by traffic or another program are missing from the internal cache")
	}
	var st Stats
	r.ctlJSON(t, &st, "stats")
	if st.Events.Own != 1 || st.Events.New != 2 {
		t.Errorf("stats: own %d, new %d; want 1, 2", st.Events.Own, st.Events.New)
	}
	// Its own write's destroy is not taken either: the flow stays cached.
	r.k.feed(kernel.EventDestroy, traffic, fakePorts[0])
	if !inCache(r.d, traffic.Key) {
		t.Error("a destroy caused by the daemon's own writer removed a cached flow")
	}
	r.k.feed(kernel.EventDestroy, traffic, 0)
	if inCache(r.d, traffic.Key) {
		t.Error("a destroy by traffic left the flow cached")
	}
}

// The filter applies to events: other protocols, TCP states outside
// tcp_states and the node's own addresses stay out; a cached flow that
// moves into an ignored state leaves.
func TestDaemonEventFilter(t *testing.T) {
	r := startFake(t, baseConfig(t.TempDir(), `tcp_states = ["established"]`+"\n"))
	tcp, udp, icmp := testFlow(1, flow.ProtoTCP), testFlow(2, flow.ProtoUDP), testFlow(3, flow.ProtoICMP)
	for _, f := range []flow.Flow{tcp, udp, icmp} {
		r.k.feed(kernel.EventNew, f, 0)
	}
	if !inCache(r.d, tcp.Key) || !inCache(r.d, udp.Key) || inCache(r.d, icmp.Key) {
		t.Errorf("cached tcp %v udp %v icmp %v; want true true false", inCache(r.d, tcp.Key), inCache(r.d, udp.Key), inCache(r.d, icmp.Key))
	}
	closing := tcp
	closing.TCP.State = flow.TCPTimeWait
	r.k.feed(kernel.EventUpdate, closing, 0)
	if inCache(r.d, tcp.Key) {
		t.Error("a flow that moved into an ignored TCP state is still cached")
	}
	// Own addresses, as the address watch reports them.
	own := testFlow(4, flow.ProtoTCP)
	r.k.addrs <- []netip.Addr{flow.Addr(flow.FamilyIPv4, own.Orig.Dst)}
	// The watch's callback has run once the next address set is taken.
	r.k.addrs <- []netip.Addr{flow.Addr(flow.FamilyIPv4, own.Orig.Dst)}
	r.k.feed(kernel.EventNew, own, 0)
	if inCache(r.d, own.Key) {
		t.Error("a flow to one of the node's own addresses entered the cache")
	}
}

// An overrun (events lost) makes the daemon re-read the table: entries the
// lost events would have brought appear, entries gone leave.
func TestDaemonOverrunResyncs(t *testing.T) {
	r := startFake(t, baseConfig(t.TempDir(), ""))
	gone := testFlow(1, flow.ProtoTCP)
	r.k.feed(kernel.EventNew, gone, 0)
	r.k.remove(gone.Key) // its DESTROY event was lost
	lost := testFlow(2, flow.ProtoTCP)
	r.k.put(lost) // its NEW event was lost
	before := r.k.dumpCount()
	r.k.overrun()
	// `resync` waits for the reconcile the overrun started (they are
	// serialized) and then runs one of its own.
	var rep reconcileReport
	r.ctlJSON(t, &rep, "resync")
	if n := r.k.dumpCount(); n < before+2 {
		t.Errorf("%d dumps after the overrun and a resync, want at least %d", n, before+2)
	}
	if !inCache(r.d, lost.Key) || inCache(r.d, gone.Key) {
		t.Errorf("after the resync: lost flow cached %v (want true), gone flow cached %v (want false)", inCache(r.d, lost.Key), inCache(r.d, gone.Key))
	}
	if rep.Flows != 1 {
		t.Errorf("resync report: %d flows, want 1", rep.Flows)
	}
}

// SIGHUP: a filter change applies at once and resynchronizes the cache; the
// log level changes; a broken file changes nothing; settings that need a
// restart are named.
func TestDaemonReload(t *testing.T) {
	dir := t.TempDir()
	r := startFake(t, baseConfig(dir, ""))
	tcp, udp := testFlow(1, flow.ProtoTCP), testFlow(2, flow.ProtoUDP)
	r.k.put(tcp, udp)
	r.ctlJSON(t, &reconcileReport{}, "resync")
	if !inCache(r.d, tcp.Key) || !inCache(r.d, udp.Key) {
		t.Fatal("flows not cached before the reload")
	}

	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(r.path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A broken file: nothing changes.
	write(baseConfig(dir, "protocols = 7\n"))
	r.d.Reload(r.path)
	if !strings.Contains(r.log.String(), "reload: config not applied") {
		t.Error("a broken config was not reported")
	}
	r.ctlJSON(t, &reconcileReport{}, "resync")
	if !inCache(r.d, udp.Key) {
		t.Error("a broken config changed the filter")
	}

	// Only TCP now, debug logging, and a restart-only change (kernel).
	text := strings.Replace(baseConfig(dir, ""), `protocols = ["tcp", "udp"]`, `protocols = ["tcp"]`, 1)
	text = strings.Replace(text, `resync_interval = "0s"`, "resync_interval = \"0s\"\nwrite_batch = 64", 1)
	write(text + "[log]\nlevel = \"debug\"\n")
	dumps := r.k.dumpCount()
	r.d.Reload(r.path)
	r.ctlJSON(t, &reconcileReport{}, "resync") // after the reload's own resync
	if inCache(r.d, udp.Key) || !inCache(r.d, tcp.Key) {
		t.Errorf("after the reload: udp cached %v (want false), tcp cached %v (want true)", inCache(r.d, udp.Key), inCache(r.d, tcp.Key))
	}
	if n := r.k.dumpCount(); n < dumps+2 {
		t.Errorf("the filter change did not resynchronize (%d dumps, want at least %d)", n, dumps+2)
	}
	if r.level.Level() != slog.LevelDebug {
		t.Errorf("log level %v after reload, want debug", r.level.Level())
	}
	if !strings.Contains(r.log.String(), "take effect only after a restart") || !strings.Contains(r.log.String(), "kernel") {
		t.Error("the restart-only change of [kernel] was not named")
	}
	// Events are filtered with the new filter too.
	udp2 := testFlow(3, flow.ProtoUDP)
	r.k.feed(kernel.EventNew, udp2, 0)
	if inCache(r.d, udp2.Key) {
		t.Error("a UDP event was cached after UDP left the filter")
	}
}

// Control commands reach their handlers; usage errors and unknown commands
// are answered as such; replication commands on a node without sync say so.
func TestDaemonControlDispatch(t *testing.T) {
	r := startFake(t, baseConfig(t.TempDir(), ""))
	a, b := testFlow(1, flow.ProtoTCP), testFlow(2, flow.ProtoUDP)
	r.k.put(a, b)

	var rep reconcileReport
	r.ctlJSON(t, &rep, "resync")
	if rep.Flows != 2 || rep.Reason != "ctsyncctl resync" {
		t.Errorf("resync: %+v", rep)
	}
	var st status.Status
	r.ctlJSON(t, &st, "status")
	if st.Node != "fw-test" || st.Version != "test" {
		t.Errorf("status: %+v", st)
	}
	out, err := r.ctl(t, "dump", "internal")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "10.1.0.1") {
		t.Errorf("dump internal: %v\n%s", err, out)
	}
	var fl map[string]int
	r.ctlJSON(t, &fl, "flush", "internal")
	if fl["flushed"] != 2 || r.d.Internal().Len() != 0 {
		t.Errorf("flush internal: %v, %d left", fl, r.d.Internal().Len())
	}
	if _, err := r.ctl(t, "flush", "kernel"); err != nil {
		t.Fatalf("flush kernel: %v", err)
	}
	if r.k.len() != 0 || !containsOp(r.k.opsDone(), "flush") {
		t.Errorf("flush kernel: %d entries left, ops %v", r.k.len(), r.k.opsDone())
	}
	for _, c := range []struct {
		args []string
		want error
		text string
	}{
		{[]string{"dump", "everything"}, control.ErrUsage, "dump internal|external"},
		{[]string{"status", "extra"}, control.ErrUsage, "status"},
		{[]string{"reboot"}, control.ErrUnknownCommand, "dump internal|external [expect]|commit"},
		{[]string{"commit"}, nil, "replication is disabled"},
		{[]string{"dump", "external"}, nil, "replication is disabled"},
		{[]string{"bulk"}, nil, "replication is disabled"},
		{[]string{"keepalived", "INSTANCE"}, control.ErrUsage, "keepalived TYPE NAME STATE"},
	} {
		_, err := r.ctl(t, c.args[0], c.args[1:]...)
		if err == nil || !strings.Contains(err.Error(), c.text) {
			t.Errorf("%v: %v, want an error saying %q", c.args, err, c.text)
		}
	}
}

func containsOp(ops []string, op string) bool {
	for _, o := range ops {
		if o == op {
			return true
		}
	}
	return false
}

// freeUDP returns a loopback UDP address nobody listens on.
func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// udpSyncConfig is baseConfig with sync on: UDP to a peer that never
// answers, unauthenticated (the tests fill the external cache themselves).
func udpSyncConfig(t *testing.T) string {
	return strings.Replace(baseConfig(t.TempDir(), ""), "disabled = true\n", fmt.Sprintf(`transport = "udp"
listen = %q
peers = [%q]
insecure = true
`, freeUDP(t), freeUDP(t)), 1)
}

// The failover wiring: keepalived's MASTER notify (through the control
// socket, as the hook sends it) commits the external cache into the kernel
// and re-reads the table; `dump commit` reports it; BACKUP purges, capping
// the timeouts of the filtered flows only.
func TestDaemonFailoverWiring(t *testing.T) {
	text := udpSyncConfig(t) + "[failover]\npurge_timeout = \"60s\"\nmin_timeout = \"0s\"\n"
	r := startFake(t, text)
	ext := r.d.External()
	if ext == nil {
		t.Fatal("no external cache with sync on")
	}
	peerFlows := []flow.Flow{testFlow(1, flow.ProtoTCP), testFlow(2, flow.ProtoUDP), testFlow(3, flow.ProtoTCP)}
	now := time.Now()
	for _, f := range peerFlows {
		ext.Apply("fw-peer", cache.Change{Flow: f}, now)
	}
	mine := testFlow(9, flow.ProtoTCP) // the node's own flow in its kernel
	r.k.put(mine)

	var res failover.Result
	r.ctlJSON(t, &res, "keepalived", "INSTANCE", "VI_1", "MASTER", "100")
	if res.Report == nil || res.Report.Flows != len(peerFlows) || res.Report.Created != len(peerFlows) {
		t.Fatalf("MASTER: %+v (report %+v)", res, res.Report)
	}
	for _, f := range peerFlows {
		if _, ok := r.k.get(f.Key); !ok {
			t.Errorf("flow %v not committed into the kernel", f.Key)
		}
		if !inCache(r.d, f.Key) {
			t.Errorf("flow %v not in the internal cache after the commit's re-read", f.Key)
		}
	}
	out, err := r.ctl(t, "dump", "commit")
	if err != nil || strings.Count(out, "\n") < len(peerFlows) || !strings.Contains(out, "10.1.0.3") {
		t.Errorf("dump commit: %v\n%s", err, out)
	}

	// BACKUP: purge caps the timeouts of filtered flows at purge_timeout.
	r.ctlJSON(t, &res, "keepalived", "INSTANCE", "VI_1", "BACKUP", "100")
	if !containsOp(r.k.opsDone(), "update") {
		t.Fatalf("BACKUP did not purge: ops %v", r.k.opsDone())
	}
	for _, f := range append(peerFlows, mine) {
		got, _ := r.k.get(f.Key)
		if got.Timeout != 60 {
			t.Errorf("flow %v: timeout %d after purge, want 60", f.Key, got.Timeout)
		}
	}
}

// A commit leaves the NEW events while it writes (the kernel then builds
// none for its creates) and joins them again after it, however it is
// started. A flow traffic creates during the commit, whose NEW event is
// therefore never built, is learnt by the re-read that follows: the
// commit sequence's own, or the one a manual commit asks the reconciler
// for (periodic re-reads are off here, so nothing else would find it).
// A flow created after the commit is announced again. A commit sequence
// whose commit fails skips its own re-read and asks the reconciler.
func TestDaemonCommitPausesNewEvents(t *testing.T) {
	for _, how := range []string{"manual", "sequence", "sequence-failing"} {
		t.Run(how, func(t *testing.T) {
			r := startFake(t, udpSyncConfig(t))
			now := time.Now()
			for i := range 3 {
				r.d.External().Apply("fw-peer", cache.Change{Flow: testFlow(i+1, flow.ProtoTCP)}, now)
			}
			during, after := testFlow(50, flow.ProtoUDP), testFlow(51, flow.ProtoUDP)
			var once sync.Once
			r.k.mu.Lock()
			r.k.duringCommit = func() error {
				once.Do(func() { r.k.feed(kernel.EventNew, during, 0) })
				if how == "sequence-failing" {
					return errors.New("injected write failure")
				}
				return nil
			}
			r.k.mu.Unlock()
			switch how {
			case "manual":
				if out, err := r.ctl(t, "commit"); err != nil {
					t.Fatalf("commit: %v\n%s", err, out)
				}
			case "sequence":
				var res failover.Result
				r.ctlJSON(t, &res, "keepalived", "INSTANCE", "VI_1", "MASTER", "100")
			case "sequence-failing":
				if out, err := r.ctl(t, "keepalived", "INSTANCE", "VI_1", "MASTER", "100"); err == nil {
					t.Fatalf("MASTER with a failing writer succeeded:\n%s", out)
				}
			}
			ops := r.k.opsDone()
			p, c, q := slices.Index(ops, "pause-new"), slices.Index(ops, "commit"), slices.Index(ops, "resume-new")
			if p < 0 || c < p || q < c {
				t.Fatalf("writer and listener operations %v: want pause-new, commit, resume-new in that order", ops)
			}
			deadline := time.Now().Add(5 * time.Second)
			for !inCache(r.d, during.Key) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if !inCache(r.d, during.Key) {
				t.Fatal("the flow created during the commit (no NEW event) was not learnt after it")
			}
			r.k.feed(kernel.EventNew, after, 0)
			if !inCache(r.d, after.Key) {
				t.Fatal("a flow created after the commit was not announced: NEW events still paused")
			}
		})
	}
}

// Periodic reconciles wait while a commit runs (it competes with the
// commit's creates for the kernel) and resume after it; the control, with
// no commit, reconciles every tick.
func TestDaemonPeriodicReconcileWaitsForCommit(t *testing.T) {
	for _, committing := range []bool{true, false} {
		t.Run(fmt.Sprintf("committing=%v", committing), func(t *testing.T) {
			cfg := strings.Replace(baseConfig(t.TempDir(), ""), `resync_interval = "0s"`, `resync_interval = "1s"`, 1)
			r := startFake(t, cfg)
			r.d.committing.Store(committing)
			before := r.k.dumpCount()
			time.Sleep(2500 * time.Millisecond)
			n := r.k.dumpCount() - before
			if committing {
				if n != 0 {
					t.Fatalf("%d periodic dumps during a commit, want 0", n)
				}
				r.d.committing.Store(false)
				deadline := time.Now().Add(3 * time.Second)
				for r.k.dumpCount() == before && time.Now().Before(deadline) {
					time.Sleep(50 * time.Millisecond)
				}
				if r.k.dumpCount() == before {
					t.Fatal("no periodic dump after the commit ended")
				}
				return
			}
			if n < 2 {
				t.Fatalf("%d periodic dumps in 2.5 s at 1 s, want at least 2: the test cannot tell", n)
			}
		})
	}
}

// A table whose dump takes long has its periodic reconciles stretched to
// resyncDutyFactor times the dump; the control, with quick dumps, keeps
// resync_interval.
func TestDaemonPeriodicReconcileStretched(t *testing.T) {
	for _, slow := range []bool{true, false} {
		t.Run(fmt.Sprintf("slow=%v", slow), func(t *testing.T) {
			cfg := strings.Replace(baseConfig(t.TempDir(), ""), `resync_interval = "0s"`, `resync_interval = "1s"`, 1)
			r := startFake(t, cfg)
			if slow {
				r.k.mu.Lock()
				r.k.dumpDelay = 300 * time.Millisecond
				r.k.mu.Unlock()
			}
			before := r.k.dumpCount()
			time.Sleep(4 * time.Second)
			n := r.k.dumpCount() - before
			if slow && n > 2 {
				t.Fatalf("%d periodic dumps in 4 s of 0.3 s each, want at most 2 (stretched to 3 s apart)", n)
			}
			if !slow && n < 3 {
				t.Fatalf("%d periodic dumps in 4 s at 1 s, want at least 3: the test cannot tell", n)
			}
		})
	}
}
