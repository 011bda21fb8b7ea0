package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ctsyncd/ctsyncd/control"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// daemon is one of the replication daemons compared (or none, the control
// run of the takeover).
type daemon interface {
	// start runs the daemon in ns as node name on the sync link (self,
	// peer), its files in dir; hashFlows sizes conntrackd's hash. It
	// returns nil for none.
	start(s *step, ns *netnstest.NS, name, self, peer, dir string, hashFlows int) *proc
	internal(dir string) (int, error)
	external(dir string) (int, error)
	overruns(dir string) int
	commit(ns *netnstest.NS, dir string) error
	saveStats(dir string)
}

func daemonByName(b *bench, name string) (daemon, error) {
	switch name {
	case "ctsyncd":
		return &ctsyncd{b: b}, nil
	case "ctsyncd_inject":
		return &ctsyncd{b: b, inject: true}, nil
	case "conntrackd":
		return &conntrackd{}, nil
	case "conntrackd_rr":
		return &conntrackd{rr: true}, nil
	case "none":
		return none{}, nil
	}
	return nil, fmt.Errorf("unknown daemon %q (ctsyncd, ctsyncd_inject, conntrackd, conntrackd_rr, none)", name)
}

// waitReady polls ready every 100 ms for 30 s while p runs.
func waitReady(s *step, p *proc, log string, ready func() bool) {
	s.Helper()
	for range 300 {
		if ready() {
			return
		}
		if !p.alive() {
			b, _ := os.ReadFile(log)
			s.Fatalf("%s exited at start:\n%s", p.name, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.Fatalf("%s not ready after 30 s", p.name)
}

// --- ctsyncd ---

// ctsyncd is ctsyncd; inject runs it with sync.inject (the peer's flows
// written into the kernel as they arrive; a takeover then runs no commit).
type ctsyncd struct {
	b      *bench
	inject bool
}

func (c *ctsyncd) start(s *step, ns *netnstest.NS, name, self, peer, dir string, flows int) *proc {
	s.Helper()
	extra := ""
	if c.inject {
		extra = "inject = true\n"
	}
	if flows > 1<<20 { // the shipped bound, 2Mi flows per peer, would refuse the rest
		extra += fmt.Sprintf("max_flows_per_origin = %d\n", 2*flows)
	}
	return c.b.startCtsyncd(s, ns, name, "udp", self, fmt.Sprintf("%q", peer+":3780"), dir, extra)
}

// startCtsyncd runs ctsyncd in ns over transport with the given peers (a
// TOML list's inside), its files in dir, syncExtra as more [sync] lines,
// and waits until it answers.
func (b *bench) startCtsyncd(s *step, ns *netnstest.NS, name, transport, self, peers, dir, syncExtra string) *proc {
	s.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		s.Fatal(err)
	}
	group := ""
	if transport == "multicast" {
		group = "group = \"225.0.0.50:3780\"\n"
	}
	conf := fmt.Sprintf(`[node]
name = %q

[control]
socket = %q

[kernel]
event_buffer = "64MiB"

[sync]
transport = %q
interface = "sync0"
listen = "%s:3780"
peers = [%s]
%skey_file = %q
%s
[failover]
commit_timeout = %q

[log]
level = "warn"
`, name, filepath.Join(dir, "ctsyncd.sock"), transport, self, peers, group, b.keyFile, syncExtra, b.commitTimeout)
	path := filepath.Join(dir, "ctsyncd.toml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		s.Fatal(err)
	}
	var args []string
	if env := strings.Fields(b.ctsyncdEnv); len(env) > 0 {
		args = append([]string{"env"}, env...)
	}
	args = append(args, filepath.Join(b.bin, "ctsyncd"), "--config", path)
	if b.cpuProfile {
		args = append(args, "--cpuprofile", filepath.Join(dir, "cpu.pprof"))
	}
	log := filepath.Join(dir, "ctsyncd.log")
	p := startIn(s, ns, "", log, args...)
	p.name = "ctsyncd " + name
	c := &ctsyncd{b: b}
	waitReady(s, p, log, func() bool { _, err := c.status(dir, "status"); return err == nil })
	return p
}

func (c *ctsyncd) status(dir, cmd string) (map[string]any, error) {
	var buf bytes.Buffer
	if err := control.Do(filepath.Join(dir, "ctsyncd.sock"), control.Request{Command: cmd, JSON: true}, &buf); err != nil {
		return nil, err
	}
	var v map[string]any
	if err := json.Unmarshal(buf.Bytes(), &v); err != nil {
		return nil, fmt.Errorf("ctsyncd %s: %w", cmd, err)
	}
	return v, nil
}

// num returns v's number at the dotted path, 0 when absent.
func num(v map[string]any, path string) float64 {
	var cur any = v
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return 0
		}
		cur = m[k]
	}
	f, _ := cur.(float64)
	return f
}

func (c *ctsyncd) internal(dir string) (int, error) {
	v, err := c.status(dir, "status")
	return int(num(v, "internal_flows")), err
}

func (c *ctsyncd) external(dir string) (int, error) {
	v, err := c.status(dir, "status")
	if c.inject && err == nil {
		// Received is not yet in the kernel while the injector has work.
		if st, err := c.status(dir, "stats"); err != nil || num(st, "inject.pending") > 0 {
			return 0, err
		}
	}
	return int(num(v, "sync.external_flows")), err
}

func (c *ctsyncd) overruns(dir string) int {
	v, _ := c.status(dir, "stats")
	return int(num(v, "events.overruns"))
}

func (c *ctsyncd) commit(_ *netnstest.NS, dir string) error {
	f, err := os.Create(filepath.Join(dir, "commit.out"))
	if err != nil {
		return err
	}
	defer f.Close()
	if c.inject {
		fmt.Fprintln(f, "inject mode: no commit")
		return nil
	}
	if err := control.Do(filepath.Join(dir, "ctsyncd.sock"), control.Request{Command: "commit"}, f); err != nil {
		fmt.Fprintln(f, err)
		return err
	}
	return nil
}

// committed returns the flows the last commit's report says it wrote
// (created, updated or replaced), -1 when it cannot tell.
func (c *ctsyncd) committed(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "commit.out"))
	if err != nil {
		return -1
	}
	n, seen := 0, 0
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		switch strings.TrimSpace(k) {
		case "created", "updated", "replaced":
			if !ok {
				return -1
			}
			x, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return -1
			}
			n += x
			seen++
		}
	}
	if seen != 3 {
		return -1
	}
	return n
}

func (c *ctsyncd) saveStats(dir string) {
	var buf bytes.Buffer
	if control.Do(filepath.Join(dir, "ctsyncd.sock"), control.Request{Command: "stats", JSON: true}, &buf) == nil {
		os.WriteFile(filepath.Join(dir, "stats.json"), buf.Bytes(), 0o644)
	}
}

// --- conntrackd ---

// conntrackd is netfilter's conntrackd, FTFW over UDP; rr leaves it on the
// SCHED_RR 99 it gives itself at start (otherwise it is put back to
// SCHED_OTHER before any flow exists, as ctsyncd runs).
type conntrackd struct{ rr bool }

func (c *conntrackd) conf(dir string) string { return filepath.Join(dir, "conntrackd.conf") }

func (c *conntrackd) start(s *step, ns *netnstest.NS, _, self, peer, dir string, hashFlows int) *proc {
	s.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		s.Fatal(err)
	}
	hash := max(2*hashFlows, 65536)
	conf := fmt.Sprintf(`Sync {
	Mode FTFW {
		ResendQueueSize 131072
	}
	UDP {
		IPv4_address %s
		IPv4_Destination_Address %s
		Port 3780
		Interface sync0
		SndSocketBuffer 4194304
		RcvSocketBuffer 8388608
		Checksum on
	}
}
General {
	HashSize %d
	HashLimit %d
	LogFile %s
	Syslog off
	LockFile %s
	UNIX {
		Path %s
	}
	NetlinkBufferSize 67108864
	NetlinkBufferSizeMaxGrowth 67108864
	Filter From Kernelspace {
		Address Ignore {
			IPv4_address 127.0.0.1
			IPv6_address ::1
		}
	}
}
`, self, peer, hash, 4*hashFlows, filepath.Join(dir, "conntrackd.log"), filepath.Join(dir, "conntrackd.lock"), filepath.Join(dir, "conntrackd.ctl"))
	if err := os.WriteFile(c.conf(dir), []byte(conf), 0o600); err != nil {
		s.Fatal(err)
	}
	out := filepath.Join(dir, "conntrackd.out")
	p := startIn(s, ns, out, out, "conntrackd", "-C", c.conf(dir))
	p.name = "conntrackd " + self
	waitReady(s, p, out, func() bool { return exec.Command("conntrackd", "-C", c.conf(dir), "-s").Run() == nil })
	if !c.rr {
		if out, err := exec.Command("chrt", "-o", "-p", "0", strconv.Itoa(p.pid())).CombinedOutput(); err != nil {
			s.Fatalf("chrt: %v: %s", err, out)
		}
	}
	return p
}

// cache reads "current active connections" of conntrackd's cache which
// ("internal" or "external") from conntrackd -s.
func (c *conntrackd) cache(dir, which string) (int, error) {
	out, err := exec.Command("conntrackd", "-C", c.conf(dir), "-s").Output()
	if err != nil {
		return 0, fmt.Errorf("conntrackd -s: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	in := false
	for sc.Scan() {
		l := sc.Text()
		if l == "cache "+which+":" {
			in = true
			continue
		}
		if in && strings.Contains(l, "current active connections") {
			f := strings.Fields(l)
			return strconv.Atoi(f[len(f)-1])
		}
	}
	return 0, fmt.Errorf("conntrackd -s: no cache %s", which)
}

func (c *conntrackd) internal(dir string) (int, error) { return c.cache(dir, "internal") }
func (c *conntrackd) external(dir string) (int, error) { return c.cache(dir, "external") }

// overruns counts conntrackd's log line for an overrun at full buffer size.
func (c *conntrackd) overruns(dir string) int {
	b, _ := os.ReadFile(filepath.Join(dir, "conntrackd.log"))
	return bytes.Count(b, []byte("likely to be losing events"))
}

func (c *conntrackd) commit(ns *netnstest.NS, dir string) error {
	cmd := ns.Cmd("conntrackd", "-C", c.conf(dir), "-c")
	out, err := cmd.CombinedOutput()
	os.WriteFile(filepath.Join(dir, "commit.out"), out, 0o644)
	if err != nil {
		return fmt.Errorf("conntrackd -c: %w", err)
	}
	return nil
}

func (c *conntrackd) saveStats(dir string) {
	out, _ := exec.Command("conntrackd", "-C", c.conf(dir), "-s").Output()
	os.WriteFile(filepath.Join(dir, "stats.txt"), out, 0o644)
}

// --- none: the takeover's control run ---

type none struct{}

func (none) start(s *step, _ *netnstest.NS, _, _, _, dir string, _ int) *proc {
	os.MkdirAll(dir, 0o700)
	return nil
}
func (none) internal(string) (int, error)       { return 0, nil }
func (none) external(string) (int, error)       { return 0, nil }
func (none) overruns(string) int                { return 0 }
func (none) commit(*netnstest.NS, string) error { return nil }
func (none) saveStats(string)                   {}
