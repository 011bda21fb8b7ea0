//go:build kernel

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

type ctl struct {
	t      *testing.T
	bin    string
	socket string
}

func (c ctl) run(args ...string) (stdout, stderr string, code int) {
	cmd := exec.Command(c.bin, append([]string{"--socket", c.socket}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func (c ctl) must(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("ctsyncctl %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logFile is a file the daemon logs to; String reads it.
type logFile string

func (l logFile) String() string {
	b, _ := os.ReadFile(string(l))
	return string(b)
}

// TestKernelDaemonLifecycle runs the real binaries in a namespace: start,
// ctsyncctl status/dump/stats, errors, SIGTERM, restart.
func TestKernelDaemonLifecycle(t *testing.T) {
	ns := netnstest.New(t)
	netnstest.Need(t, "conntrack")
	daemonBin, ctlBin := daemontest.Binaries(t)
	dir := t.TempDir()
	socket := filepath.Join(dir, "ctsyncd.sock")
	cfgPath := filepath.Join(dir, "ctsyncd.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
[node]
name = "fw-test"

[control]
socket = %q
mode = "0660"
group = "daemon"

[sync]
disabled = true
`, socket)), 0o600)
	c := ctl{t: t, bin: ctlBin, socket: socket}

	// A flow that exists before the daemon starts comes in with the first dump.
	ns.Exec(t, "conntrack", "-I", "-p", "tcp", "-s", "10.1.1.1", "-d", "10.2.2.2", "--sport", "1000", "--dport", "80",
		"--state", "ESTABLISHED", "-t", "300", "-u", "SEEN_REPLY,ASSURED")

	start := func() (*exec.Cmd, logFile) {
		cmd := ns.Cmd(daemonBin, "--config", cfgPath)
		logs := logFile(filepath.Join(dir, "ctsyncd.log"))
		f, err := os.Create(string(logs))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stderr = f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitUntil(t, "ctsyncd to answer", func() bool {
			_, _, code := c.run("status")
			return code == 0
		})
		return cmd, logs
	}
	stop := func(cmd *exec.Cmd, logs logFile) {
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("ctsyncd exited with %v after SIGTERM; log:\n%s", err, logs)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("ctsyncd did not stop on SIGTERM; log:\n%s", logs)
		}
		if _, err := os.Stat(socket); !os.IsNotExist(err) {
			t.Fatalf("control socket left after SIGTERM: %v", err)
		}
	}

	for run := 1; run <= 2; run++ { // the second run is the restart
		cmd, logs := start()
		// The socket has the configured mode and group.
		fi, err := os.Stat(socket)
		if err != nil {
			t.Fatal(err)
		}
		grp, err := user.LookupGroup("daemon")
		if err != nil {
			t.Fatal(err)
		}
		sys := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o660 || fmt.Sprint(sys.Gid) != grp.Gid {
			t.Errorf("socket mode %v gid %d, want 0660 and group daemon (%s)", fi.Mode().Perm(), sys.Gid, grp.Gid)
		}
		status := c.must("status")
		if !strings.Contains(status, "fw-test") {
			t.Errorf("run %d: status does not name the node:\n%s", run, status)
		}
		want := "src=10.1.1.1 dst=10.2.2.2 sport=1000 dport=80 src=10.2.2.2 dst=10.1.1.1 sport=80 dport=1000 [ASSURED]"
		waitUntil(t, "the pre-existing flow in the dump", func() bool {
			return strings.Contains(c.must("dump", "internal"), want)
		})

		// A flow made while it runs arrives by event.
		sport := fmt.Sprint(2000 + run)
		ns.Exec(t, "conntrack", "-I", "-p", "udp", "-s", "10.1.1.1", "-d", "10.2.2.2", "--sport", sport, "--dport", "53", "-t", "60")
		waitUntil(t, "the new UDP flow in the dump", func() bool {
			return strings.Contains(c.must("dump", "internal"), "sport="+sport+" dport=53")
		})
		var views []map[string]any
		for _, line := range strings.Split(strings.TrimSpace(c.must("dump", "internal", "--json")), "\n") {
			var v map[string]any
			if err := json.Unmarshal([]byte(line), &v); err != nil {
				t.Fatalf("dump --json line %q: %v", line, err)
			}
			views = append(views, v)
		}
		if len(views) < 2 {
			t.Errorf("dump --json: %d flows", len(views))
		}
		var st struct {
			Events struct {
				New uint64 `json:"new"`
			} `json:"events"`
			Internal struct {
				Flows int `json:"flows"`
			} `json:"internal"`
		}
		if err := json.Unmarshal([]byte(c.must("stats", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		if st.Events.New == 0 || st.Internal.Flows < 2 {
			t.Errorf("stats: %+v", st)
		}
		if out := c.must("stats"); !strings.Contains(out, "events.new:") {
			t.Errorf("text stats:\n%s", out)
		}
		if out := c.must("resync"); !strings.Contains(out, "Flows") && !strings.Contains(out, "flows") {
			t.Errorf("resync output:\n%s", out)
		}

		// Errors: one line, non-zero exit.
		if _, e, code := c.run("frobnicate"); code == 0 || !strings.Contains(e, `unknown command "frobnicate"`) || strings.Count(e, "\n") != 1 {
			t.Errorf("unknown command: exit %d, %q", code, e)
		}
		if _, e, code := c.run("dump", "sideways"); code == 0 || !strings.Contains(e, "dump internal") {
			t.Errorf("bad dump argument: exit %d, %q", code, e)
		}
		if run == 1 {
			// SIGHUP applies a new filter without a restart: UDP leaves
			// the cache. A broken file on SIGHUP changes nothing.
			good, _ := os.ReadFile(cfgPath)
			os.WriteFile(cfgPath, append(append([]byte{}, good...), "\n[filter]\nprotocols = [\"tcp\"]\n"...), 0o600)
			cmd.Process.Signal(syscall.SIGHUP)
			waitUntil(t, "UDP flows to leave after SIGHUP", func() bool {
				return !strings.Contains(c.must("dump", "internal"), "dport=53")
			})
			os.WriteFile(cfgPath, []byte("[sync\n"), 0o600)
			cmd.Process.Signal(syscall.SIGHUP)
			waitUntil(t, "the broken config to be reported", func() bool {
				return strings.Contains(logs.String(), "reload: config not applied")
			})
			c.must("status")
			os.WriteFile(cfgPath, good, 0o600)
		}
		stop(cmd, logs)
	}

	// No daemon: a clear line, exit 1.
	if _, e, code := c.run("status"); code != 1 || !strings.Contains(e, "cannot reach ctsyncd") {
		t.Errorf("no daemon: exit %d, %q", code, e)
	}
	// A broken config names file, line and key; nothing starts.
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[sync]\ndisabled = true\ntransport = \"carrier-pigeon\"\n"), 0o600)
	out, err := exec.Command(daemonBin, "--config", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), bad+":3:") || !strings.Contains(string(out), "sync.transport") {
		t.Errorf("bad config: %v, %s", err, out)
	}
	if out, err := exec.Command(daemonBin, "--version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "ctsyncd ") {
		t.Errorf("--version: %v %s", err, out)
	}
	if out, err := exec.Command(daemonBin, "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "--config") {
		t.Errorf("--help: %v %s", err, out)
	}
}
