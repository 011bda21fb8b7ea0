//go:build cluster

// Package ops_test runs two ctsyncd nodes in network namespaces joined by a
// sync link and checks what an operator relies on: the metrics move as
// the replication does, flows at risk while the link is cut, drift repair
// of a flushed external cache, status --json on a peer's death, and the
// systemd notify protocol. Part of the cluster tier (run as root).
package ops_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/kernel"
	"github.com/ctsyncd/ctsyncd/status"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

const (
	metricsAddr    = "127.0.0.1:9469"
	peerTimeout    = 2 * time.Second
	digestInterval = 2 * time.Second
	converge       = 60 * time.Second
)

type node struct {
	name string
	ns   *netnstest.NS
	addr string
	proc *daemontest.Proc
}

func pair(t *testing.T) (a, b *node, key string) {
	t.Helper()
	netnstest.RequireRoot(t)
	a = &node{name: "fw-a", ns: netnstest.New(t), addr: "10.201.0.1:3780"}
	b = &node{name: "fw-b", ns: netnstest.New(t), addr: "10.201.0.2:3780"}
	netnstest.Veth(t, a.ns, "sync0", "10.201.0.1/24", b.ns, "sync0", "10.201.0.2/24")
	for _, n := range []*node{a, b} {
		n.ns.Exec(t, "ip", "link", "set", "lo", "up")
	}
	key = filepath.Join(t.TempDir(), "sync.key")
	if err := os.WriteFile(key, []byte(ctsync.GenerateKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	return a, b, key
}

func config(self, peer *node, key string, extra string) string {
	return fmt.Sprintf(`[sync]
transport = "udp"
listen = %q
peers = [%q]
key_file = %q
heartbeat_interval = "200ms"
peer_timeout = %q
digest_interval = %q

[kernel]
resync_interval = "0s"

[metrics]
listen = %q
%s`, self.addr, peer.addr, key, peerTimeout, digestInterval, metricsAddr, extra)
}

// mkFlows returns count established TCP flows from 10.9.x.y.
func mkFlows(base, count int) []flow.Flow {
	out := make([]flow.Flow, 0, count)
	for i := base; i < base+count; i++ {
		var f flow.Flow
		f.Family, f.Proto = flow.FamilyIPv4, flow.ProtoTCP
		f.Orig.Src = flow.AddrFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}))
		f.Orig.Dst = flow.AddrFrom(netip.MustParseAddr("10.8.0.1"))
		f.Orig.SrcPort, f.Orig.DstPort = uint16(20000+i), 443
		f.Reply = f.Orig.Invert(f.Proto)
		f.Timeout = 600
		f.Status = flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured
		f.TCP = flow.TCPInfo{State: flow.TCPEstablished, WScaleOrig: 7, WScaleRep: 7}
		out = append(out, f)
	}
	return out
}

func write(t *testing.T, ns *netnstest.NS, flows []flow.Flow) {
	t.Helper()
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: ns.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	res, err := w.Commit(context.Background(), flows, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("write %v: %v", r.Key, r.Err)
		}
	}
}

// get fetches path from the node's metrics listener, connecting from
// inside its namespace.
func get(t *testing.T, n *node, path string) (int, string) {
	t.Helper()
	var conn net.Conn
	var err error
	n.ns.Do(t, func() { conn, err = net.DialTimeout("tcp", metricsAddr, 5*time.Second) })
	if err != nil {
		t.Fatalf("%s: dial metrics: %v", n.name, err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:       func(context.Context, string, string) (net.Conn, error) { return conn, nil },
		DisableKeepAlives: true,
	}}
	resp, err := c.Get("http://" + metricsAddr + path)
	if err != nil {
		t.Fatalf("%s: GET %s: %v", n.name, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape returns the node's metrics, keyed by the series as exposed
// (`name{label="v",...}`).
func scrape(t *testing.T, n *node) map[string]float64 {
	t.Helper()
	code, body := get(t, n, "/metrics")
	if code != 200 {
		t.Fatalf("%s: /metrics: %d %s", n.name, code, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("%s: metrics line %q: %v", n.name, l, err)
		}
		out[l[:i]] = v
	}
	return out
}

func metric(t *testing.T, m map[string]float64, series string) float64 {
	t.Helper()
	v, ok := m[series]
	if !ok {
		t.Fatalf("no series %s", series)
	}
	return v
}

func st(t *testing.T, n *node) status.Status {
	t.Helper()
	var s status.Status
	n.proc.JSON(&s, "status")
	return s
}

func peerOf(s status.Status, name string) (status.Peer, bool) {
	for _, p := range s.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return status.Peer{}, false
}

// excerpt returns the lines of a scrape starting with one of the prefixes.
func excerpt(body string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestClusterOps: one replicating pair, checked through its metrics and
// status as it replicates, loses its sync link, drifts and loses a peer.
func TestClusterOps(t *testing.T) {
	a, b, key := pair(t)
	const first, more, cut = 300, 50, 40
	write(t, a.ns, mkFlows(0, first))
	a.proc = daemontest.Start(t, a.ns, a.name, config(a, b, key, ""))
	b.proc = daemontest.Start(t, b.ns, b.name, config(b, a, key, ""))

	held := func(n int) func() (bool, string) {
		return func() (bool, string) {
			s := st(t, b)
			return s.Caches.ExternalByOrigin[a.name] == n, fmt.Sprint(s.Caches.ExternalByOrigin)
		}
	}
	daemontest.WaitFor(t, converge, "fw-b to hold fw-a's flows", held(first))
	daemontest.WaitFor(t, converge, "both ready", func() (bool, string) {
		ca, _ := get(t, a, "/readyz")
		cb, _ := get(t, b, "/readyz")
		return ca == 200 && cb == 200, fmt.Sprint(ca, cb)
	})

	t.Run("metrics", func(t *testing.T) {
		ma, mb := scrape(t, a), scrape(t, b)
		if v := metric(t, ma, "ctsyncd_internal_flows"); v != first {
			t.Errorf("fw-a internal_flows %v, want %d", v, first)
		}
		if v := metric(t, mb, `ctsyncd_external_flows{origin="fw-a"}`); v != first {
			t.Errorf("fw-b external_flows{fw-a} %v, want %d", v, first)
		}
		if v := metric(t, mb, `ctsyncd_sync_flows_received_total{peer="fw-a"}`); v < first {
			t.Errorf("fw-b flows received from fw-a %v, want at least %d", v, first)
		}
		if v := metric(t, ma, `ctsyncd_sync_peer_up{peer="fw-b"}`); v != 1 {
			t.Errorf("fw-a sees fw-b up = %v", v)
		}
		if v := metric(t, ma, "ctsyncd_ready"); v != 1 {
			t.Errorf("fw-a ready = %v", v)
		}
		// What one side sent, the other received (a few datagrams may be
		// in flight between the two scrapes).
		out := metric(t, ma, `ctsyncd_sync_bytes_total{direction="out",peer="fw-b"}`)
		in := metric(t, mb, `ctsyncd_sync_bytes_total{direction="in",peer="fw-a"}`)
		if out == 0 || in == 0 || in > out+64<<10 || out > in+64<<10 {
			t.Errorf("fw-a sent %v bytes to fw-b, fw-b received %v from fw-a", out, in)
		}
		if code, body := get(t, a, "/healthz"); code != 200 {
			t.Errorf("/healthz: %d %s", code, body)
		}

		// The flows and counters move with new flows.
		newBefore := metric(t, ma, `ctsyncd_kernel_events_total{type="new"}`)
		write(t, a.ns, mkFlows(first, more))
		daemontest.WaitFor(t, converge, "fw-b to hold the new flows", held(first+more))
		ma, mb = scrape(t, a), scrape(t, b)
		if v := metric(t, ma, "ctsyncd_internal_flows"); v != first+more {
			t.Errorf("fw-a internal_flows %v after %d more, want %d", v, more, first+more)
		}
		if v := metric(t, ma, `ctsyncd_kernel_events_total{type="new"}`); v < newBefore+more {
			t.Errorf("fw-a new events %v → %v after %d new flows", newBefore, v, more)
		}
		if v := metric(t, mb, `ctsyncd_external_flows{origin="fw-a"}`); v != first+more {
			t.Errorf("fw-b external_flows{fw-a} %v, want %d", v, first+more)
		}
		_, body := get(t, a, "/metrics")
		t.Logf("fw-a scrape excerpt:\n%s", excerpt(body, "ctsyncd_internal_flows", "ctsyncd_flows_at_risk",
			"ctsyncd_kernel_events_total", "ctsyncd_sync_messages_total", "ctsyncd_sync_bytes_total",
			"ctsyncd_sync_peer_up", "ctsyncd_sync_replication_lag_seconds", "ctsyncd_sync_bulk_transfers_total",
			"ctsyncd_sync_digest", "ctsyncd_ready"))
		_, body = get(t, b, "/metrics")
		t.Logf("fw-b scrape excerpt:\n%s", excerpt(body, "ctsyncd_external_flows", "ctsyncd_sync_flows_received_total",
			"ctsyncd_sync_peer_last_seen_age_seconds", "ctsyncd_sync_digests_checked_total", "ctsyncd_drift"))
	})

	t.Run("flows-at-risk", func(t *testing.T) {
		daemontest.WaitFor(t, converge, "no flow at risk", func() (bool, string) {
			v := metric(t, scrape(t, a), "ctsyncd_flows_at_risk")
			return v == 0, fmt.Sprint(v)
		})
		b.ns.Exec(t, "ip", "link", "set", "sync0", "down")
		write(t, a.ns, mkFlows(first+more, cut))
		daemontest.WaitFor(t, converge, "the flows written while the link is cut to be at risk", func() (bool, string) {
			v := metric(t, scrape(t, a), "ctsyncd_flows_at_risk")
			s := st(t, a)
			p, _ := peerOf(s, b.name)
			return v >= cut && s.FlowsAtRisk >= cut && p.FlowsAtRisk >= cut,
				fmt.Sprintf("metric %v, status %d, peer %d", v, s.FlowsAtRisk, p.FlowsAtRisk)
		})
		t.Logf("fw-a while the sync link is cut:\n%s", a.proc.Ctl("status"))
		b.ns.Exec(t, "ip", "link", "set", "sync0", "up")
		daemontest.WaitFor(t, converge, "flows at risk back to 0", func() (bool, string) {
			v := metric(t, scrape(t, a), "ctsyncd_flows_at_risk")
			return v == 0, fmt.Sprint(v)
		})
		daemontest.WaitFor(t, converge, "fw-b to hold every flow", held(first+more+cut))
	})

	t.Run("drift-repair", func(t *testing.T) {
		total := first + more + cut
		mb := scrape(t, b)
		repairs := mb[`ctsyncd_drift_repairs_total{origin="fw-a"}`]
		bulks := metric(t, scrape(t, a), `ctsyncd_sync_bulk_transfers_total{direction="sent",peer="fw-b"}`)
		b.proc.Ctl("flush", "external")
		flushed := time.Now()
		if n := st(t, b).Caches.ExternalByOrigin[a.name]; n == total {
			t.Fatalf("flush external left %d flows", n)
		}
		daemontest.WaitFor(t, 2*digestInterval+time.Second, "fw-b to hold fw-a's table again within two digest intervals", held(total))
		t.Logf("repaired %v after the flush", time.Since(flushed).Round(time.Millisecond))
		mb = scrape(t, b)
		if v := metric(t, mb, `ctsyncd_drift_repairs_total{origin="fw-a"}`); v <= repairs {
			t.Errorf("drift_repairs_total %v → %v", repairs, v)
		}
		if v := metric(t, mb, `ctsyncd_drift_repaired_flows_total{origin="fw-a"}`); v < float64(total) {
			t.Errorf("drift_repaired_flows_total %v, want at least %d", v, total)
		}
		if v := metric(t, scrape(t, a), `ctsyncd_sync_bulk_transfers_total{direction="sent",peer="fw-b"}`); v != bulks {
			t.Errorf("a bulk was sent (%v → %v): the repair should be by buckets", bulks, v)
		}
		s := st(t, b)
		if s.LastDriftRepair == nil || s.LastDriftRepair.Origin != a.name || s.LastDriftRepair.Flows < total {
			t.Errorf("status last_drift_repair %+v", s.LastDriftRepair)
		}
		t.Logf("fw-b after the drift repair:\n%s", b.proc.Ctl("status"))
		_, body := get(t, a, "/metrics")
		t.Logf("fw-a scrape excerpt after the repair:\n%s", excerpt(body, "ctsyncd_sync_digest", "ctsyncd_flows_at_risk",
			"ctsyncd_internal_flows", "ctsyncd_sync_peer_up", "ctsyncd_sync_resends_total", "ctsyncd_sync_nacks_total"))
		_, body = get(t, b, "/metrics")
		t.Logf("fw-b scrape excerpt after the repair:\n%s", excerpt(body, "ctsyncd_drift", "ctsyncd_sync_digests_checked_total",
			"ctsyncd_external_flows", "ctsyncd_ready"))
	})

	t.Run("peer-death", func(t *testing.T) {
		if p, ok := peerOf(st(t, a), b.name); !ok || !p.Alive {
			t.Fatalf("fw-b not alive before: %+v", p)
		}
		b.proc.Kill()
		killed := time.Now()
		// Polling adds up to one ctsyncctl round trip to the detection.
		daemontest.WaitFor(t, peerTimeout+time.Second, "status --json to show fw-b dead within peer_timeout", func() (bool, string) {
			p, _ := peerOf(st(t, a), b.name)
			return !p.Alive, fmt.Sprintf("%+v", p)
		})
		t.Logf("fw-b shown dead %v after the kill (peer_timeout %v)", time.Since(killed).Round(time.Millisecond), peerTimeout)
		s := st(t, a)
		found := false
		for _, w := range s.Warnings {
			found = found || strings.Contains(w, "fw-b is down")
		}
		if !found {
			t.Errorf("no warning about fw-b: %q", s.Warnings)
		}
		if v := metric(t, scrape(t, a), `ctsyncd_sync_peer_up{peer="fw-b"}`); v != 0 {
			t.Errorf("sync_peer_up{fw-b} = %v after its death", v)
		}
		out := a.proc.Ctl("status")
		t.Logf("fw-a after fw-b died:\n%s", out)
		var raw map[string]any
		if err := json.Unmarshal([]byte(a.proc.Ctl("status", "--json")), &raw); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"schema_version", "role", "ready", "peers", "caches", "flows_at_risk", "last_resync", "warnings"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("status --json lacks %q", k)
			}
		}
	})
}

// notifyListener is a fake systemd notify socket: it records every
// datagram with its arrival time.
type notifyListener struct {
	path string
	msgs chan notifyMsg
}

type notifyMsg struct {
	at    time.Time
	lines []string
}

func listenNotify(t *testing.T) *notifyListener {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	nl := &notifyListener{path: path, msgs: make(chan notifyMsg, 4096)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				close(nl.msgs)
				return
			}
			nl.msgs <- notifyMsg{at: time.Now(), lines: strings.Split(strings.TrimSpace(string(buf[:n])), "\n")}
		}
	}()
	t.Cleanup(func() { c.Close() })
	return nl
}

func (m notifyMsg) has(line string) bool {
	for _, l := range m.lines {
		if l == line {
			return true
		}
	}
	return false
}

// TestClusterNotify: with a fake NOTIFY_SOCKET, READY=1 comes only once
// the peer's table arrived (not while the peer is missing), STATUS= lines
// come, and WATCHDOG=1 comes at least every half WatchdogSec.
func TestClusterNotify(t *testing.T) {
	a, b, key := pair(t)
	const flows = 100
	write(t, b.ns, mkFlows(0, flows))
	nl := listenNotify(t)
	const watchdog = 2 * time.Second
	// A long peer_timeout: a lone node would wait 2×60 s before it calls
	// itself ready, far longer than this test waits for its peer.
	extra := ""
	cfgA := strings.Replace(config(a, b, key, extra), `peer_timeout = "2s"`, `peer_timeout = "60s"`, 1)
	started := time.Now()
	a.proc = daemontest.StartEnv(t, a.ns, a.name, cfgA, []string{
		"NOTIFY_SOCKET=" + nl.path, fmt.Sprintf("WATCHDOG_USEC=%d", watchdog.Microseconds())})

	var all []notifyMsg
	take := func(until time.Time, stop func(notifyMsg) bool) bool {
		for {
			select {
			case m := <-nl.msgs:
				all = append(all, m)
				if stop != nil && stop(m) {
					return true
				}
			case <-time.After(time.Until(until)):
				return false
			}
		}
	}
	// Without its peer, fw-a is not ready: no READY=1 for a while.
	if take(time.Now().Add(4*time.Second), func(m notifyMsg) bool { return m.has("READY=1") }) {
		t.Fatal("READY=1 before the peer ran")
	}
	if s := st(t, a); s.Ready {
		t.Fatalf("status says ready without the peer: %+v", s)
	}
	b.proc = daemontest.Start(t, b.ns, b.name, config(b, a, key, ""))
	if !take(time.Now().Add(converge), func(m notifyMsg) bool { return m.has("READY=1") }) {
		t.Fatalf("no READY=1 after the peer came; got %d messages", len(all))
	}
	s := st(t, a)
	p, _ := peerOf(s, b.name)
	if !s.Ready || !p.BulkReceived {
		t.Errorf("READY=1 sent but status: ready %v, fw-b's bulk received %v", s.Ready, p.BulkReceived)
	}
	daemontest.WaitFor(t, converge, "fw-a to hold fw-b's table", func() (bool, string) {
		n := st(t, a).Caches.ExternalByOrigin[b.name]
		return n == flows, fmt.Sprint(n)
	})
	take(time.Now().Add(3*watchdog), nil)

	var dogs []time.Time
	statuses := 0
	for _, m := range all {
		if m.has("WATCHDOG=1") {
			dogs = append(dogs, m.at)
		}
		for _, l := range m.lines {
			if strings.HasPrefix(l, "STATUS=") {
				statuses++
			}
		}
	}
	elapsed := time.Since(started)
	if want := int(elapsed/watchdog) - 1; len(dogs) < want {
		t.Errorf("%d WATCHDOG=1 in %v with WatchdogSec %v; want at least %d", len(dogs), elapsed.Round(time.Millisecond), watchdog, want)
	}
	var worst time.Duration
	for i := 1; i < len(dogs); i++ {
		worst = max(worst, dogs[i].Sub(dogs[i-1]))
	}
	if worst >= watchdog {
		t.Errorf("a gap of %v between WATCHDOG=1: systemd (WatchdogSec %v) would have killed the service", worst, watchdog)
	}
	if statuses == 0 {
		t.Error("no STATUS= line")
	}
	t.Logf("%d notify messages, %d WATCHDOG=1 (largest gap %v), %d STATUS=; last: %q",
		len(all), len(dogs), worst.Round(time.Millisecond), statuses, all[len(all)-1].lines)
}
