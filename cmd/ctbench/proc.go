package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// proc is a program the harness runs in a namespace, its output in a file.
type proc struct {
	name string
	cmd  *exec.Cmd
	end  chan struct{}
	stop bool
}

// startIn starts args in ns (ip netns exec execs the program: the pid is
// the program's), stdout and stderr to the files given ("" discards).
func startIn(s *step, ns *netnstest.NS, stdout, stderr string, args ...string) *proc {
	s.Helper()
	var cmd *exec.Cmd
	if ns != nil {
		cmd = ns.Cmd(args...)
	} else {
		cmd = exec.Command(args[0], args[1:]...)
	}
	open := func(path string) *os.File {
		if path == "" {
			return nil
		}
		f, err := os.Create(path)
		if err != nil {
			s.Fatalf("%v", err)
		}
		s.Cleanup(func() { f.Close() })
		return f
	}
	if f := open(stdout); f != nil {
		cmd.Stdout = f
	}
	if stderr == stdout && cmd.Stdout != nil {
		cmd.Stderr = cmd.Stdout
	} else if f := open(stderr); f != nil {
		cmd.Stderr = f
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.Fatalf("start %s: %v", args[0], err)
	}
	p := &proc{name: args[0], cmd: cmd, end: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.end)
	}()
	s.Cleanup(func() { p.Stop(20 * time.Second) })
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// alive reports whether the process is still running.
func (p *proc) alive() bool {
	select {
	case <-p.end:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM to the process group, waits up to grace, then kills
// it. Safe to call twice.
func (p *proc) Stop(grace time.Duration) {
	if p.stop {
		return
	}
	p.stop = true
	syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.end:
	case <-time.After(grace):
		syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.end
	}
}

var clkTck = 100.0 // USER_HZ; 100 on every Linux architecture Go supports

// cpuSeconds is utime+stime of the whole process (all threads).
func cpuSeconds(pid int) float64 {
	u, s := cpuSplit(pid)
	return u + s
}

// cpuSplit is utime and stime of the whole process (all threads), in
// seconds: the time in the process's own code and in the kernel on its
// behalf (system calls: reading events, sending datagrams, creating flows).
func cpuSplit(pid int) (user, sys float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return 0, 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return u / clkTck, st / clkTck
}

// rssBytes is the process's VmRSS.
func rssBytes(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// loadavg is the machine's 1-minute load average.
func loadavg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// linkBytes is rx+tx bytes of ifc in ns.
func linkBytes(ns *netnstest.NS, ifc string) float64 {
	rx, tx := linkRxTx(ns, ifc)
	return rx + tx
}

// linkRxTx is the rx and tx bytes of ifc in ns.
func linkRxTx(ns *netnstest.NS, ifc string) (rx, tx float64) {
	out, err := exec.Command("ip", "-n", ns.Name, "-s", "-j", "link", "show", ifc).Output()
	if err != nil {
		return 0, 0
	}
	var v []struct {
		Stats64 struct {
			RX struct{ Bytes float64 } `json:"rx"`
			TX struct{ Bytes float64 } `json:"tx"`
		} `json:"stats64"`
	}
	if json.Unmarshal(out, &v) != nil || len(v) == 0 {
		return 0, 0
	}
	return v[0].Stats64.RX.Bytes, v[0].Stats64.TX.Bytes
}

// ktable is the number of entries in ns's conntrack table.
func ktable(ns *netnstest.NS) int {
	out, err := ns.Cmd("conntrack", "-C").Output()
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// field returns the value of "key=value" in a line of key=value pairs.
func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}
