package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Hooks for running ctsyncd on the firewalls: a config writer and a
// process runner. A test typically builds ctsyncd and ctsyncctl, then
//
//	tp := cluster.New(t, cluster.Options{
//		Setup: func(t testing.TB, fw *cluster.Firewall) {
//			fw.Start(t, "ctsyncd", bin, "--config", fw.CtsyncdConfig(t, "udp", ""))
//		},
//		Notify:    func(fw *cluster.Firewall) string { return ctl + " --socket " + fw.Socket() + " keepalived" },
//		TrackFile: func(fw *cluster.Firewall) string { return fw.ReadyFile() },
//	})

// SyncPort is the sync port CtsyncdConfig uses.
const SyncPort = 3780

// Socket is the path of fw's ctsyncd control socket in CtsyncdConfig.
func (fw *Firewall) Socket() string { return filepath.Join(fw.Dir, "ctsyncd.sock") }

// ReadyFile is the path of fw's readiness file in CtsyncdConfig.
func (fw *Firewall) ReadyFile() string { return filepath.Join(fw.Dir, "ready") }

// CtsyncdConfig writes a ctsyncd config for fw and returns its path:
// transport ("udp", "multicast" or "gossip") on sync0 between the two
// firewalls, a shared key (written once per topology, mode 0600), the
// control socket and the readiness file in fw.Dir, debug logs; the
// firewalls use the ftp, sip and tftp helpers, so their peers' flows may
// carry them ([peer_policy] helpers; none by default). extra is
// appended as is (more TOML sections; a section may appear only once, so
// pass only sections not written here: [kernel], [filter]).
func (fw *Firewall) CtsyncdConfig(t testing.TB, transport, extra string) string {
	t.Helper()
	key := fw.topo.keyFile(t)
	group := ""
	if transport == "multicast" {
		group = fmt.Sprintf("group = \"225.0.0.50:%d\"\n", SyncPort)
	}
	conf := fmt.Sprintf(`[node]
name = %q

[control]
socket = %q

[sync]
transport = %q
interface = "sync0"
listen = "%s:%d"
peers = ["%s:%d"]
%skey_file = %q

[peer_policy]
helpers = ["ftp", "sip", "tftp"]

[failover]
ready_file = %q

[log]
level = "debug"
%s`, fw.Name, fw.Socket(), transport, fw.SyncAddr, SyncPort, fw.PeerSyncAddr, SyncPort, group, key, fw.ReadyFile(), extra)
	path := filepath.Join(fw.Dir, "ctsyncd.toml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// keyFile writes the topology's sync key once and returns its path.
func (tp *Topology) keyFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(tp.dir, "sync.key")
	tp.keyOnce.Do(func() {
		b := make([]byte, 32)
		rand.Read(b)
		tp.keyErr = os.WriteFile(path, []byte(hex.EncodeToString(b)+"\n"), 0o600)
	})
	if tp.keyErr != nil {
		t.Fatal(tp.keyErr)
	}
	return path
}

// Process is a program run in a firewall's namespace by Start.
type Process struct {
	Name string
	cmd  *exec.Cmd
	log  *lockedBuffer
	end  chan struct{} // closed when the process has exited
	once sync.Once
}

// Start runs args in fw's namespace, its output captured (shown when the
// test fails). The process is stopped with SIGTERM in t.Cleanup, killed
// if it lingers.
func (fw *Firewall) Start(t testing.TB, name string, args ...string) *Process {
	t.Helper()
	cmd := fw.NS.Cmd(args...)
	buf := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start %s: %v", fw.Name, name, err)
	}
	p := &Process{Name: fw.Name + " " + name, cmd: cmd, log: buf, end: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.end)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", p.Name, buf.String())
		}
	})
	return p
}

// Log returns the process's output so far.
func (p *Process) Log() string { return p.log.String() }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.end:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group and waits for the exit, at most
// 10 s, then kills it. It reports whether the process ended by itself.
// Safe to call twice.
func (p *Process) Stop() bool {
	ok := true
	p.once.Do(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.end:
		case <-time.After(10 * time.Second):
			ok = false
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.end
		}
	})
	return ok
}
