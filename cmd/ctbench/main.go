// Command ctbench is ctsyncd's benchmark harness: ctsyncd side by side with
// netfilter's conntrackd (FTFW over UDP) and the kernel's own limit, in one
// run, in network namespaces built by the test tiers' own builders
// (internal/netnstest, and the cluster tier's topology for the takeover).
// scripts/bench.sh installs what is missing, builds the binaries and runs
// it; BENCHMARKS.md quotes its tables and explains the method.
//
// For every run and daemon it builds a fresh pair of namespaces, fwA and
// fwB, joined by a dedicated veth sync link (sync0, 10.200.0.1 <->
// 10.200.0.2), starts the daemon in both, creates N flows in fwA's kernel
// with ctgen (kernel.Writer, batched creates on 2 sockets), and measures:
//   - replication: time from the first create until fwB's external cache
//     holds exactly N flows (flows/s = N / that time);
//   - CPU seconds of each daemon process (utime+stime, all threads) over the
//     replication, per 100k flows;
//   - bytes on the sync link (fwA's sync0 rx+tx, both directions) per flow;
//   - resident memory (VmRSS) growth per cached flow, fwA (internal cache)
//     and fwB (external cache);
//   - commit: `ctsyncctl commit` / `conntrackd -c` on fwB, until the command
//     returns and fwB's kernel holds N flows; fwA's daemon is stopped first,
//     as in a failover (on one machine the firewalls share a kernel, which
//     builds a NEW event per create while a socket of any namespace
//     listens to them);
//   - the machine's 1-minute load average at the start and end of each run.
//
// Then the kernel ceiling: ctgen creating N flows into a fresh namespace
// with only `conntrack -E` listening, on 1 and on 2 sockets, and on 1
// socket with nothing listening to events; stepped rates
// (N flows created at a fixed pace); the takeover stall of a live TCP
// stream with BG idle background flows.
//
// Fairness: both daemons get 64 MiB netlink event buffers, the same UDP
// socket buffers (ctsyncd's are fixed at 8 MiB receive / 4 MiB send, so
// conntrackd gets the same), HashSize/HashLimit >= 2N for conntrackd, normal
// scheduling (conntrackd switches itself to SCHED_RR 99 at start; the
// harness puts it back to SCHED_OTHER before any flow exists), no CPU
// pinning. nf_conntrack_max is raised from the initial namespace (a
// namespace's own limit cannot exceed it).
//
// Results: OUT/runs.csv (one line per run and metric), OUT/takeover.csv,
// OUT/summary.json, OUT/table.md (median [min..max]), OUT/machine.json,
// OUT/ceiling.log and every daemon's config, log, stats and commit report
// under OUT/logs.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

const usage = `Usage: ctbench [flags]

ctsyncd's benchmark harness (as root; scripts/bench.sh builds the binaries
and runs it). Results and their reading: BENCHMARKS.md.

Flags:
`

// bench is one invocation's settings and result files.
type bench struct {
	n, runs, run0        int
	timeout, stepTimeout time.Duration
	commitTimeout        string
	daemons, tkDaemons   []string
	rates                []int
	bg, bgRate           int
	bin, out, work       string
	keyFile              string
	profile, cpuProfile  bool
	ctsyncdEnv           string
	csv, tkCSV           string
	log                  io.Writer
	profs                []profiling
}

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ctbench:", err)
		os.Exit(1)
	}
}

func words(s string) []string { return strings.Fields(strings.ReplaceAll(s, ",", " ")) }

func run(args []string, log io.Writer) error {
	fs := flag.NewFlagSet("ctbench", flag.ContinueOnError)
	fs.SetOutput(log)
	fs.Usage = func() { fmt.Fprint(log, usage); fs.PrintDefaults() }
	b := &bench{log: log}
	fs.IntVar(&b.n, "n", 100000, "flows per run")
	fs.IntVar(&b.runs, "runs", 3, "runs per daemon and per kernel-ceiling case (and takeover runs)")
	fs.IntVar(&b.run0, "run0", 0, "number the runs from run0+1 (to add runs to an -out that has some)")
	fs.DurationVar(&b.timeout, "timeout", 120*time.Second, "wait this long for convergence or commit; a run that does not converge is recorded as converged=0 with its counts")
	fs.DurationVar(&b.stepTimeout, "step-timeout", 30*time.Second, "a stepped-rate run must converge exactly within this long after its last create")
	fs.StringVar(&b.commitTimeout, "commit-timeout", "600s", "ctsyncd's failover.commit_timeout (the shipped default, 120s, is enough for 1M flows on an idle machine; conntrackd has no such bound)")
	daemons := fs.String("daemons", "ctsyncd conntrackd conntrackd_rr", "daemons, in turn (conntrackd_rr: conntrackd left on the SCHED_RR 99 it picks by default, for reference)")
	rates := fs.String("rates", "10000 50000 100000", "stepped-rate runs after the others: one run per rate (flows/s) and daemon; \"\" for none")
	takeover := fs.Bool("takeover", true, "also measure the takeover stall of a live TCP stream with -bg idle background flows")
	takeoverOnly := fs.Bool("takeover-only", false, "only the takeover runs")
	fs.IntVar(&b.bg, "bg", 200000, "takeover: idle background flows")
	fs.IntVar(&b.bgRate, "bg-rate", 50000, "takeover: flows/s at which the background flows are created (a pace both daemons replicate without loss, so that the takeover measures the commit)")
	clusterSizes := fs.String("cluster-sizes", "", "also replicate in clusters of these sizes, e.g. \"2 3 5\" (every node creates N/size flows; ctsyncd only)")
	clusterTransports := fs.String("cluster-transports", "gossip multicast", "transports of the cluster runs")
	tkDaemons := fs.String("tk-daemons", "ctsyncd conntrackd none", "takeover daemons (none: no daemon, the control whose stream must break)")
	fs.StringVar(&b.bin, "bin", "", "directory holding ctsyncd, ctsyncctl, ctgen and streamgap (required)")
	fs.StringVar(&b.out, "out", "", "results directory (default bench/results/<UTC time>-n<N>)")
	summaryOnly := fs.Bool("summary-only", false, "only print the summary of -out's runs.csv")
	fs.BoolVar(&b.profile, "profile", false, "perf-record the daemons while they replicate and commit (needs perf; skews timings)")
	fs.BoolVar(&b.cpuProfile, "cpuprofile", false, "run ctsyncd with --cpuprofile (cpu.pprof beside each daemon's log)")
	fs.StringVar(&b.ctsyncdEnv, "ctsyncd-env", "", "more environment for ctsyncd, space-separated NAME=value (e.g. \"GOMAXPROCS=1 GOGC=100\")")
	keep := fs.Bool("keep", false, "keep the work directory")
	plot := fs.String("plot", "", "only write the scaling charts (SVG) into this directory, from the result sets given as arguments (one N each)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *plot != "" {
		if fs.NArg() == 0 {
			return errors.New("-plot: name the result directories to plot")
		}
		return plotScaling(*plot, fs.Args())
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	b.daemons, b.tkDaemons = words(*daemons), words(*tkDaemons)
	for _, r := range words(*rates) {
		v, err := strconv.Atoi(r)
		if err != nil || v <= 0 {
			return fmt.Errorf("-rates: %q is not a positive number of flows/s", r)
		}
		b.rates = append(b.rates, v)
	}
	for _, d := range append(append([]string{}, b.daemons...), b.tkDaemons...) {
		if _, err := daemonByName(b, d); err != nil {
			return err
		}
	}
	if b.n <= 0 || b.bg <= 0 {
		return errors.New("-n and -bg must be positive")
	}
	if b.out == "" {
		b.out = filepath.Join("bench", "results", time.Now().UTC().Format("20060102T150405Z")+"-n"+strconv.Itoa(b.n))
	}
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return err
	}
	b.csv, b.tkCSV = filepath.Join(b.out, "runs.csv"), filepath.Join(b.out, "takeover.csv")
	if *summaryOnly {
		t, err := summary(b.out, b.n, b.daemons)
		fmt.Print(t)
		return err
	}
	if b.bin == "" {
		return errors.New("-bin is required")
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root (namespaces, conntrack)")
	}
	for _, c := range []string{"ip", "nft", "conntrack", "sysctl", "chrt"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s not installed (scripts/deps.sh)", c)
		}
	}
	var err error
	if b.work, err = os.MkdirTemp("", "ctbench."); err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(b.work)
	}
	b.keyFile = filepath.Join(b.work, "sync.key")
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(b.keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return err
	}
	if err := raiseConntrackMax(4*max(b.n, b.bg) + 100000); err != nil {
		return err
	}
	if restore, err := raiseConntrackBuckets(b.n, log); err != nil {
		return err
	} else if restore != nil {
		running.Lock()
		atExit = append(atExit, restore)
		running.Unlock()
		defer restore()
	}
	b.writeMachine()
	heading := func(f string, a ...any) { fmt.Fprintf(log, "\033[1m== %s\033[0m\n", fmt.Sprintf(f, a...)) }

	if !*takeoverOnly {
		initCSV(b.csv, "daemon,n,run,metric,value")
		for r := b.run0 + 1; r <= b.run0+b.runs; r++ {
			for _, d := range b.daemons {
				heading("run %d/%d: %s, %d flows (load %.2f)", r, b.runs, d, b.n, loadavg())
				b.pairRun(d, strconv.Itoa(r), 0)
			}
			for s := 1; s <= 2; s++ {
				heading("run %d/%d: kernel ceiling, %d socket(s), %d flows (load %.2f)", r, b.runs, s, b.n, loadavg())
				b.ceilingRun(s, true, strconv.Itoa(r))
			}
			heading("run %d/%d: kernel ceiling, 1 socket, no event listener, %d flows (load %.2f)", r, b.runs, b.n, loadavg())
			b.ceilingRun(1, false, strconv.Itoa(r))
		}
		for _, rate := range b.rates {
			for _, d := range b.daemons {
				heading("stepped rate: %s, %d flows at %d flows/s (load %.2f)", d, b.n, rate, loadavg())
				b.pairRun(d, "s"+strconv.Itoa(rate), rate)
			}
		}
	}
	if !*takeoverOnly {
		for _, tr := range words(*clusterTransports) {
			for _, ks := range words(*clusterSizes) {
				k, err := strconv.Atoi(ks)
				if err != nil || k < 2 || k > 200 {
					return fmt.Errorf("-cluster-sizes: %q is not a size from 2 to 200", ks)
				}
				if tr != "gossip" && tr != "multicast" && tr != "udp" {
					return fmt.Errorf("-cluster-transports: %q is not gossip, multicast or udp", tr)
				}
				for r := b.run0 + 1; r <= b.run0+b.runs; r++ {
					heading("cluster run %d/%d: %d nodes over %s, %d flows (load %.2f)", r, b.runs, k, tr, b.n, loadavg())
					b.clusterRun(tr, k, strconv.Itoa(r))
				}
			}
		}
	}
	if *takeover || *takeoverOnly {
		initCSV(b.tkCSV, "daemon,bg,run,metric,value")
		for r := 1; r <= b.runs; r++ {
			for _, d := range b.tkDaemons {
				heading("takeover run %d/%d: %s, %d background flows (load %.2f)", r, b.runs, d, b.bg, loadavg())
				b.takeoverRun(d, strconv.Itoa(r))
			}
		}
	}
	if *takeoverOnly {
		return nil
	}
	heading("summary (median [min..max], N=%d)", b.n)
	t, err := summary(b.out, b.n, b.daemons)
	fmt.Print(t)
	fmt.Fprintln(log, "results:", b.out)
	return err
}

func initCSV(path, header string) {
	if _, err := os.Stat(path); err != nil {
		os.WriteFile(path, []byte(header+"\n"), 0o644)
	}
}

// record appends one line to runs.csv and echoes it.
func (b *bench) record(daemon, run, metric, value string) {
	b.recordTo(b.csv, daemon, b.n, run, metric, value)
}

func (b *bench) recordTo(path, daemon string, n int, run, metric, value string) {
	appendFile(path, fmt.Sprintf("%s,%d,%s,%s,%s\n", daemon, n, run, metric, value))
	fmt.Fprintf(b.log, "   %-10s run %s  %-24s %s\n", daemon, run, metric, value)
}

// raiseConntrackMax raises the initial namespace's nf_conntrack_max to at
// least need: every namespace's limit is capped by it.
func raiseConntrackMax(need int) error {
	exec.Command("modprobe", "nf_conntrack").Run()
	out, err := exec.Command("sysctl", "-n", "net.netfilter.nf_conntrack_max").Output()
	if err != nil {
		return fmt.Errorf("read nf_conntrack_max: %w", err)
	}
	cur, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	if cur >= need {
		return nil
	}
	if out, err := exec.Command("sysctl", "-qw", "net.netfilter.nf_conntrack_max="+strconv.Itoa(need)).CombinedOutput(); err != nil {
		return fmt.Errorf("raise nf_conntrack_max: %v: %s", err, out)
	}
	return nil
}

// hashsizeParam is the conntrack hash table's bucket count, shared by every
// namespace and writable at run time.
const hashsizeParam = "/sys/module/nf_conntrack/parameters/hashsize"

// raiseConntrackBuckets gives the kernel's conntrack hash table at least n
// buckets when n is above 1Mi (it keeps 262,144 here whatever
// nf_conntrack_max is, and the kernel refuses a create whose chain would
// pass 64 entries: a 4M run lost flows to ENOSPC), and returns what
// restores the old count. Up to 1Mi it changes nothing, so that the sets
// stay comparable with the earlier ones.
func raiseConntrackBuckets(n int, log io.Writer) (func(), error) {
	if n <= 1<<20 {
		return nil, nil
	}
	old, err := os.ReadFile(hashsizeParam)
	if err != nil {
		return nil, fmt.Errorf("read conntrack hashsize: %w", err)
	}
	cur, _ := strconv.Atoi(strings.TrimSpace(string(old)))
	want := 1
	for want < n {
		want <<= 1
	}
	if cur >= want {
		return nil, nil
	}
	if err := os.WriteFile(hashsizeParam, []byte(strconv.Itoa(want)), 0o644); err != nil {
		return nil, fmt.Errorf("raise conntrack hashsize to %d: %w", want, err)
	}
	fmt.Fprintf(log, "conntrack hash table: %d buckets for this run (was %d)\n", want, cur)
	return func() { os.WriteFile(hashsizeParam, old, 0o644) }, nil
}

// writeMachine records the machine, the versions and the commit measured.
func (b *bench) writeMachine() {
	var uts [3]string
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		uts[0] = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("conntrackd", "-v").CombinedOutput(); err == nil {
		uts[1] = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		uts[2] = strings.TrimSpace(string(out))
	}
	modified := exec.Command("git", "diff", "--quiet", "HEAD", "--", ".").Run() != nil
	cpu, memKiB := "", 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				memKiB, _ = strconv.Atoi(strings.Fields(v)[0])
			}
		}
	}
	la, _ := os.ReadFile("/proc/loadavg")
	hs, _ := os.ReadFile(hashsizeParam)
	buckets, _ := strconv.Atoi(strings.TrimSpace(string(hs)))
	m := map[string]any{
		"conntrack_buckets": buckets,
		"date":              time.Now().UTC().Format(time.RFC3339), "n": b.n, "runs": b.runs,
		"nproc": runtime.NumCPU(), "mem_kib": memKiB, "cpu": cpu, "kernel": uts[0],
		"conntrackd": uts[1], "commit": uts[2], "tree_modified": modified,
		"loadavg_at_start": strings.TrimSpace(string(la)),
	}
	js, _ := json.MarshalIndent(m, "", "  ")
	os.WriteFile(filepath.Join(b.out, "machine.json"), append(js, '\n'), 0o644)
	fmt.Fprintf(b.log, "\033[1m== machine: %d CPUs, %.1f GiB, kernel %s, %s, load %s\033[0m\n", runtime.NumCPU(), float64(memKiB)/1048576, uts[0], uts[1], strings.TrimSpace(string(la)))
}

// profiling is a perf record running on a daemon.
type profiling struct {
	cmd  *exec.Cmd
	base string
}

// profileStart perf-records pid (call graphs, 999 Hz) when -profile is set;
// profileStop writes the reports beside the logs as perf-WHAT.txt (flat)
// and perf-WHAT-children.txt (inclusive).
func (b *bench) profileStart(what string, pid int, dir string) {
	if !b.profile {
		return
	}
	if _, err := exec.LookPath("perf"); err != nil {
		return
	}
	base := filepath.Join(dir, "perf-"+what)
	cmd := exec.Command("perf", "record", "-F", "999", "-g", "-p", strconv.Itoa(pid), "-o", base+".data")
	if cmd.Start() != nil {
		return
	}
	b.profs = append(b.profs, profiling{cmd, base})
	time.Sleep(300 * time.Millisecond)
}

func (b *bench) profileStop() {
	for _, p := range b.profs {
		p.cmd.Process.Signal(os.Interrupt)
		p.cmd.Wait()
		flat, _ := exec.Command("perf", "report", "-i", p.base+".data", "--no-children", "--sort", "dso,symbol", "--percent-limit", "0.7", "--stdio", "-g", "none").Output()
		os.WriteFile(p.base+".txt", flat, 0o644)
		ch, _ := exec.Command("perf", "report", "-i", p.base+".data", "--children", "--sort", "symbol", "--percent-limit", "3", "--stdio", "-g", "none").Output()
		os.WriteFile(p.base+"-children.txt", ch, 0o644)
		os.Remove(p.base + ".data")
	}
	b.profs = nil
}
