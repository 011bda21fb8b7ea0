// Package daemontest runs the real ctsyncd and ctsyncctl binaries inside
// network namespaces for the kernel and cluster test tiers: it builds them
// once per test binary, writes a config, starts the daemon under
// `ip netns exec`, drives it with ctsyncctl and stops it with SIGTERM.
package daemontest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries builds ctsyncd and ctsyncctl (once per test process) and returns
// their paths.
func Binaries(t testing.TB) (ctsyncd, ctsyncctl string) {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ctsyncd-bin-")
		if buildErr != nil {
			return
		}
		for _, name := range []string{"ctsyncd", "ctsyncctl"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(buildDir, name), "github.com/ctsyncd/ctsyncd/cmd/"+name).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", name, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "ctsyncd"), filepath.Join(buildDir, "ctsyncctl")
}

// Proc is a ctsyncd running in a namespace.
type Proc struct {
	t      testing.TB
	NS     *netnstest.NS
	Name   string
	Dir    string
	Socket string
	Config string
	cmd    *exec.Cmd
	bin    string // the ctsyncd binary
	logs   *bytes.Buffer
	done   chan error
	ctl    string
	env    []string
}

// Start writes cfg (TOML; the [node] and [control] tables are added) and
// starts ctsyncd in ns, waiting until it answers on its control socket.
func Start(t testing.TB, ns *netnstest.NS, name, cfg string) *Proc {
	t.Helper()
	return StartEnv(t, ns, name, cfg, nil)
}

// StartEnv is Start with extra environment variables ("KEY=value") for the
// daemon, e.g. systemd's NOTIFY_SOCKET.
func StartEnv(t testing.TB, ns *netnstest.NS, name, cfg string, env []string) *Proc {
	t.Helper()
	d, c := Binaries(t)
	return startWith(t, ns, name, cfg, d, c, env)
}

// StartWith is Start with other binaries (an earlier version, BuildAt).
func StartWith(t testing.TB, ns *netnstest.NS, name, cfg, d, c string) *Proc {
	t.Helper()
	return startWith(t, ns, name, cfg, d, c, nil)
}

func startWith(t testing.TB, ns *netnstest.NS, name, cfg, d, c string, env []string) *Proc {
	t.Helper()
	dir := t.TempDir()
	p := &Proc{t: t, NS: ns, Name: name, Dir: dir, Socket: filepath.Join(dir, "ctsyncd.sock"),
		Config: filepath.Join(dir, "ctsyncd.toml"), ctl: c, env: env}
	text := fmt.Sprintf("[node]\nname = %q\n\n[control]\nsocket = %q\n\n%s", name, p.Socket, cfg)
	if err := os.WriteFile(p.Config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	p.start(d)
	t.Cleanup(func() { p.Kill() })
	return p
}

func (p *Proc) start(bin string) {
	p.t.Helper()
	p.bin = bin
	p.cmd = p.NS.Cmd(bin, "--config", p.Config, "--log-level", "debug")
	if len(p.env) > 0 {
		p.cmd.Env = append(os.Environ(), p.env...)
	}
	p.logs = &bytes.Buffer{}
	p.cmd.Stderr = &lockedWriter{w: p.logs}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.done = make(chan error, 1)
	go func() { p.done <- p.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, code := p.Run("status"); code == 0 {
			return
		}
		select {
		case err := <-p.done:
			p.t.Fatalf("%s: ctsyncd exited at start: %v\n%s", p.Name, err, p.Logs())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: ctsyncd did not answer within 30 s\n%s", p.Name, p.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Restart starts the daemon again with the same config after Stop or Kill.
func (p *Proc) Restart() {
	p.t.Helper()
	p.start(p.bin)
}

// BuildAt builds ctsyncd and ctsyncctl as they were at commit (of the
// repository the test runs in) and returns their paths. It fails the test
// when the commit is not in the repository's history (a shallow clone).
func BuildAt(t testing.TB, commit string) (ctsyncd, ctsyncctl string) {
	t.Helper()
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("BuildAt %s: not in a git checkout: %v", commit, err)
	}
	repo := strings.TrimSpace(string(top))
	if out, err := exec.Command("git", "-C", repo, "cat-file", "-e", commit+"^{commit}").CombinedOutput(); err != nil {
		t.Fatalf("BuildAt: commit %s is not in this clone's history (a shallow clone?): %v %s", commit, err, out)
	}
	src := t.TempDir()
	archive := exec.Command("git", "-C", repo, "archive", "--format=tar", commit)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	untar.Stdin = pipe
	if err := untar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s: %v", commit, err)
	}
	if err := untar.Wait(); err != nil {
		t.Fatalf("untar %s: %v", commit, err)
	}
	bin := t.TempDir()
	for _, name := range []string{"ctsyncd", "ctsyncctl"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, name), "./cmd/"+name)
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s at %s: %v\n%s", name, commit, err, out)
		}
	}
	return filepath.Join(bin, "ctsyncd"), filepath.Join(bin, "ctsyncctl")
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// Logs returns what the daemon logged so far.
func (p *Proc) Logs() string {
	if lw, ok := p.cmd.Stderr.(*lockedWriter); ok {
		lw.mu.Lock()
		defer lw.mu.Unlock()
	}
	return p.logs.String()
}

// Run runs ctsyncctl against the daemon.
func (p *Proc) Run(args ...string) (stdout, stderr string, code int) {
	cmd := exec.Command(p.ctl, append([]string{"--socket", p.Socket}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return o.String(), e.String(), code
}

// Ctl runs ctsyncctl and fails the test if it fails.
func (p *Proc) Ctl(args ...string) string {
	p.t.Helper()
	out, e, code := p.Run(args...)
	if code != 0 {
		p.t.Fatalf("%s: ctsyncctl %s: exit %d: %s", p.Name, strings.Join(args, " "), code, e)
	}
	return out
}

// JSON runs ctsyncctl COMMAND --json and decodes the answer into v.
func (p *Proc) JSON(v any, args ...string) {
	p.t.Helper()
	out := p.Ctl(append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		p.t.Fatalf("%s: ctsyncctl %s: %v\n%s", p.Name, strings.Join(args, " "), err, out)
	}
}

// Lines runs ctsyncctl COMMAND --json for a dump and decodes each line.
func (p *Proc) Lines(args ...string) []map[string]any {
	p.t.Helper()
	out := p.Ctl(append(args, "--json")...)
	var res []map[string]any
	for _, l := range strings.Split(out, "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			p.t.Fatalf("%s: dump line %q: %v", p.Name, l, err)
		}
		res = append(res, m)
	}
	return res
}

// Stop sends SIGTERM and waits for a clean exit.
func (p *Proc) Stop() {
	p.t.Helper()
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			p.t.Errorf("%s: ctsyncd exited with %v after SIGTERM\n%s", p.Name, err, p.Logs())
		}
	case <-time.After(30 * time.Second):
		p.t.Errorf("%s: ctsyncd did not stop on SIGTERM\n%s", p.Name, p.Logs())
		p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
}

// Kill kills the daemon hard (a crash), if it runs.
func (p *Proc) Kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
	p.cmd = nil
}

// WaitFor polls cond every 100 ms until it holds or timeout passes; on
// timeout it fails with what and the state cond last described.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last state: %s", timeout, what, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CPU returns the daemon process's user+system CPU time so far (all
// threads), read from /proc.
func (p *Proc) CPU() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) are space
	// separated: utime and stime are fields 14 and 15, in clock ticks.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}
