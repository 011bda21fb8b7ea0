package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// natRuleset loads nf_nat in a namespace, so that NATed flows can be
// created there.
const natRuleset = `table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
	}
}
table ip6 nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
	}
}
`

// syncPair builds fwA and fwB joined by a dedicated veth sync0
// (10.200.0.1 <-> 10.200.0.2), both with conntrack events and nf_nat.
func syncPair(s *step) (a, b *netnstest.NS) {
	a, b = netnstest.New(s), netnstest.New(s)
	netnstest.Veth(s, a, "sync0", "10.200.0.1/24", b, "sync0", "10.200.0.2/24")
	a.Nft(s, natRuleset)
	b.Nft(s, natRuleset)
	return a, b
}

// waitN polls get every 50 ms until it returns want; false on timeout.
func waitN(limit time.Duration, want int, get func() (int, error)) (int, bool) {
	deadline := time.Now().Add(limit)
	for {
		v, err := get()
		if err == nil && v == want {
			return v, true
		}
		if time.Now().After(deadline) {
			return v, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ctgen runs the flow generator into ns and returns its output line.
func (b *bench) ctgen(ns *netnstest.NS, n, offset, rate, sockets int) (string, error) {
	cmd := exec.Command(filepath.Join(b.bin, "ctgen"), "-netns", ns.Name, "-n", strconv.Itoa(n),
		"-offset", strconv.Itoa(offset), "-mode", "writer", "-sockets", strconv.Itoa(sockets),
		"-min-timeout", "7200", "-rate", strconv.Itoa(rate))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // ends with the harness
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ctgen: %w", err)
	}
	return string(out), nil
}

// pairRun is one replication (+ commit, unless rate > 0) run of daemon
// name: N flows created in fwA, replicated to fwB, committed there.
func (b *bench) pairRun(name, run string, rate int) {
	d, _ := daemonByName(b, name)
	lab, wait := name, b.timeout
	if rate > 0 {
		lab, wait = fmt.Sprintf("%s@%d", name, rate), b.stepTimeout
	}
	dir := filepath.Join(b.work, name+"-"+run)
	rec := func(metric, format string, v any) { b.record(lab, run, metric, fmt.Sprintf(format, v)) }
	err := runStep(lab+" run "+run, b.work, b.log, func(s *step) {
		A, B := syncPair(s)
		defer b.keepLogs(dir, filepath.Join(b.out, "logs", name+"-"+run))
		pa := d.start(s, A, "fw-a", "10.200.0.1", "10.200.0.2", filepath.Join(dir, "a"), b.n)
		pb := d.start(s, B, "fw-b", "10.200.0.2", "10.200.0.1", filepath.Join(dir, "b"), b.n)
		stopA := sync.OnceFunc(func() {
			d.saveStats(filepath.Join(dir, "a"))
			pa.Stop(20 * time.Second)
		})
		defer func() {
			stopA()
			d.saveStats(filepath.Join(dir, "b"))
			pb.Stop(20 * time.Second)
		}()
		time.Sleep(2 * time.Second) // peers meet, heartbeats settle
		if !pa.alive() || !pb.alive() {
			fmt.Fprintf(b.log, "   %s run %s: a daemon exited at start; logs in %s/logs/%s-%s\n", name, run, b.out, name, run)
			rec("start_failed", "%d", 1)
			return
		}
		rec("load1_before", "%.2f", loadavg())
		ua0, sa0 := cpuSplit(pa.pid())
		ub0, sb0 := cpuSplit(pb.pid())
		ra0, rb0 := rssBytes(pa.pid()), rssBytes(pb.pid())
		by0 := linkBytes(A, "sync0")
		b.profileStart("replicate", pa.pid(), filepath.Join(dir, "a"))
		b.profileStart("replicate", pb.pid(), filepath.Join(dir, "b"))
		t0 := time.Now()
		line, err := b.ctgen(A, b.n, 0, rate, 2)
		os.WriteFile(filepath.Join(dir, "ctgen.out"), []byte(line), 0o644)
		if err != nil {
			s.Fatalf("%v: %s", err, line)
		}
		tg := time.Now()
		_, conv := waitN(wait, b.n, func() (int, error) { return d.external(filepath.Join(dir, "b")) })
		t1 := time.Now()
		ua1, sa1 := cpuSplit(pa.pid())
		ub1, sb1 := cpuSplit(pb.pid())
		by1 := linkBytes(A, "sync0")
		b.profileStop()
		waitN(10*time.Second, b.n, func() (int, error) { return d.internal(filepath.Join(dir, "a")) })
		time.Sleep(time.Second) // let acknowledgements and frees settle before reading memory
		ra1, rb1 := rssBytes(pa.pid()), rssBytes(pb.pid())
		if !pa.alive() || !pb.alive() {
			fmt.Fprintf(b.log, "   %s run %s: a daemon died during the run; logs in %s/logs/%s-%s\n", name, run, b.out, name, run)
			rec("died", "%d", 1)
			return
		}
		rep := t1.Sub(t0).Seconds()
		rec("ctgen_s", "%.3f", tg.Sub(t0).Seconds())
		rec("converged", "%d", b2i(conv))
		in, _ := d.internal(filepath.Join(dir, "a"))
		ex, _ := d.external(filepath.Join(dir, "b"))
		rec("internal_flows", "%d", in)
		rec("external_flows", "%d", ex)
		rec("event_overrun", "%d", d.overruns(filepath.Join(dir, "a")))
		if !conv {
			rec("load1_after", "%.2f", loadavg())
			return
		}
		n := float64(b.n)
		rec("replicate_s", "%.3f", rep)
		rec("lag_s", "%.3f", t1.Sub(tg).Seconds())
		rec("replicate_flows_per_s", "%.0f", n/rep)
		rec("cpu_sender_s_per_100k", "%.3f", (ua1-ua0+sa1-sa0)*100000/n)
		rec("cpu_receiver_s_per_100k", "%.3f", (ub1-ub0+sb1-sb0)*100000/n)
		rec("cpu_sender_sys_s_per_100k", "%.3f", (sa1-sa0)*100000/n)
		rec("cpu_receiver_sys_s_per_100k", "%.3f", (sb1-sb0)*100000/n)
		rec("wire_bytes_per_flow", "%.1f", (by1-by0)/n)
		rec("rss_internal_bytes_per_flow", "%.1f", (ra1-ra0)/n)
		rec("rss_external_bytes_per_flow", "%.1f", (rb1-rb0)/n)
		rec("rss_sender_mib", "%.1f", ra1/1048576)
		rec("rss_receiver_mib", "%.1f", rb1/1048576)
		if rate > 0 {
			rec("load1_after", "%.2f", loadavg())
			return
		}

		// fwA is gone before fwB commits, as in a failover. On this one
		// machine the two firewalls share a kernel, which builds a NEW
		// event per create while any socket of any namespace listens to
		// NEW events: a live fwA's listener would make fwB's creates
		// build events that fwB's own kernel, on a machine of its own,
		// would not (ctsyncd leaves the NEW events during a commit;
		// conntrackd's fwB keeps listening, so it is not affected).
		stopA()

		// Commit fwB's external cache into fwB's (empty) kernel table.
		k0 := ktable(B)
		cc0 := cpuSeconds(pb.pid())
		b.profileStart("commit", pb.pid(), filepath.Join(dir, "b"))
		c0 := time.Now()
		cerr := d.commit(B, filepath.Join(dir, "b"))
		c1 := time.Now()
		want := b.n + k0
		deadline := time.Now().Add(b.timeout)
		if cerr != nil {
			fmt.Fprintf(b.log, "   %s commit failed: %v\n", name, cerr)
			deadline = time.Now().Add(2 * time.Second) // what it wrote is in; do not wait for the rest
		}
		k := 0
		// A daemon whose commit command returns when it is done and
		// reports every flow written is timed by the command: in a long
		// commit the flows written first whose timeouts the peer policy
		// caps (ICMP: 30 s) expire before the last are written, so the
		// table never holds N at once (seen at 4M).
		cr, reports := d.(interface{ committed(dir string) int })
		for {
			k = ktable(B)
			if k >= want {
				break
			}
			if reports && cerr == nil && cr.committed(filepath.Join(dir, "b")) == b.n {
				rec("commit_by_report", "%d", 1)
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(b.log, "   %s: fwB's kernel holds %d of %d flows after commit\n", name, k, want)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		c2 := time.Now()
		if reports && cerr == nil && k < want {
			c2 = c1
		}
		cc1 := cpuSeconds(pb.pid())
		b.profileStop()
		rec("commit_ok", "%d", b2i(cerr == nil))
		rec("commit_cmd_s", "%.3f", c1.Sub(c0).Seconds())
		if cerr == nil && (k >= want || c2 == c1) {
			rec("commit_s", "%.3f", c2.Sub(c0).Seconds())
			rec("commit_flows_per_s", "%.0f", n/c2.Sub(c0).Seconds())
		}
		rec("commit_kernel_flows", "%d", k-k0)
		rec("commit_cpu_receiver_s", "%.2f", cc1-cc0)
		rec("load1_after", "%.2f", loadavg())
	})
	if err != nil {
		fmt.Fprintf(b.log, "   %v\n", err)
		rec("start_failed", "%d", 1)
	}
}

func b2i(v bool) int {
	if v {
		return 1
	}
	return 0
}

// keepLogs copies a run's directory (configs, logs, stats, commit report,
// profiles) into the results, without sockets and lock files.
func (b *bench) keepLogs(from, to string) {
	os.MkdirAll(to, 0o755)
	filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case fi.IsDir():
			os.MkdirAll(dst, 0o755)
		case fi.Mode().IsRegular():
			if x := filepath.Ext(p); x == ".lock" || x == ".sock" || x == ".ctl" || x == ".key" {
				return nil
			}
			if data, err := os.ReadFile(p); err == nil {
				os.WriteFile(dst, data, 0o644)
			}
		}
		return nil
	})
}

// ceilingRun: ctgen creating N flows into a fresh namespace with only
// `conntrack -E` listening (listen; else nothing listens to events), on
// the given number of sockets, while another namespace holds N flows, as
// fwA does during a commit into fwB: the kernel's conntrack hash table is
// shared by all namespaces, and its buckets do not grow with
// nf_conntrack_max, so a table holding N more entries has longer chains to
// search on every create. Without a listener the kernel builds no event
// per create: the limit a commit that leaves the NEW events (ctsyncd's)
// works against.
func (b *bench) ceilingRun(sockets int, listen bool, run string) {
	lab := fmt.Sprintf("kernel-%dsock", sockets)
	if !listen {
		lab += "-quiet"
	}
	err := runStep(lab+" run "+run, b.work, b.log, func(s *step) {
		F := netnstest.New(s)
		F.Nft(s, natRuleset)
		if line, err := b.ctgen(F, b.n, 0, 0, 2); err != nil {
			s.Fatalf("fill the other namespace: %v: %s", err, line)
		}
		K := netnstest.New(s)
		K.Nft(s, natRuleset)
		if listen {
			l := startIn(s, K, "", "", "conntrack", "-E")
			defer l.Stop(5 * time.Second)
		}
		time.Sleep(500 * time.Millisecond)
		b.record(lab, run, "load1_before", fmt.Sprintf("%.2f", loadavg()))
		line, err := b.ctgen(K, b.n, 0, 0, sockets)
		if err != nil {
			s.Fatalf("%v: %s", err, line)
		}
		appendFile(filepath.Join(b.out, "ceiling.log"), "case="+lab+" "+line)
		el, err := strconv.ParseFloat(field(line, "elapsed")[:max(len(field(line, "elapsed"))-1, 0)], 64)
		if err != nil || el <= 0 {
			s.Fatalf("ctgen printed no elapsed time: %s", line)
		}
		b.record(lab, run, "commit_s", fmt.Sprintf("%.3f", el))
		b.record(lab, run, "commit_flows_per_s", fmt.Sprintf("%.0f", float64(b.n)/el))
		b.record(lab, run, "load1_after", fmt.Sprintf("%.2f", loadavg()))
	})
	if err != nil {
		fmt.Fprintf(b.log, "   %v\n", err)
	}
}

func appendFile(path, s string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	f.WriteString(s)
}
