// Command ctbench times `ctsyncctl ct` next to conntrack(8) on the same
// table (the toolbox benchmark, results in BENCHMARKS.md under "Toolbox vs
// conntrack(8)"). As root, with conntrack(8) installed, under the shared
// lock:
//
//	go build -o /tmp/ctsyncctl ./cmd/ctsyncctl
//	flock /tmp/ctsyncd-heavy.lock go run ./bench/ctbench -ctl /tmp/ctsyncctl [-n 1000000] [-runs 3]
//
// It makes a throw-away namespace, fills its table with -n flows of
// internal/flowgen's mix (kernel.Writer; TCP/UDP/ICMP, IPv4 and IPv6, 20 %
// NATed, marks, every 11th flow in zone 7), then for each run times, each
// tool writing to /dev/null:
//
//	list         conntrack -L                  ctsyncctl ct list
//	list -p tcp --dport 443 (a filter the kernel applies for both)
//	count        conntrack -C                  ctsyncctl ct count
//	count -w 7   conntrack -L -w 7 (its "N flow entries" line)   ctsyncctl ct count -w 7
//	delete -w 7  conntrack -D -w 7             ctsyncctl ct delete -w 7
//
// The zone-7 flows (n/11) are written back after each delete. It prints
// one line per measurement and a Markdown table of the medians.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/flowgen"
	"github.com/ctsyncd/ctsyncd/kernel"
)

func main() {
	n := flag.Int("n", 1000000, "flows in the table")
	runs := flag.Int("runs", 3, "runs of each measurement")
	ctl := flag.String("ctl", "ctsyncctl", "the ctsyncctl binary")
	ct := flag.String("conntrack", "conntrack", "the conntrack(8) binary")
	flag.Parse()
	if err := run(*n, *runs, *ctl, *ct); err != nil {
		fmt.Fprintln(os.Stderr, "ctbench:", err)
		os.Exit(1)
	}
}

type bench struct {
	ns      string
	nsfd    int
	ctl, ct string
	null    *os.File
}

func run(n, runs int, ctl, ct string) error {
	b := make([]byte, 4)
	rand.Read(b)
	bn := &bench{ns: "ctb" + hex.EncodeToString(b), ctl: ctl, ct: ct}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	bn.null = null
	if out, err := exec.Command("ip", "netns", "add", bn.ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", bn.ns).Run()
	nft := exec.Command("ip", "netns", "exec", bn.ns, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(`table inet ctbench {
	chain output { type filter hook output priority 0; ct state new accept; }
	chain postrouting { type nat hook postrouting priority srcnat; }
	chain prerouting { type nat hook prerouting priority dstnat; }
}
`)
	if out, err := nft.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, out)
	}
	if bn.nsfd, err = unix.Open("/run/netns/"+bn.ns, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return err
	}
	defer unix.Close(bn.nsfd)
	if max, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max"); true {
		if m, _ := strconv.Atoi(strings.TrimSpace(string(max))); m < n+n/10 {
			return fmt.Errorf("net.netfilter.nf_conntrack_max is %d; raise it above %d first", m, n+n/10)
		}
	}

	start := time.Now()
	if err := bn.fill(flowgen.Flows(0, n)); err != nil {
		return err
	}
	var zone7 []flow.Flow
	for i := 0; i < n; i++ {
		if i%11 == 0 {
			zone7 = append(zone7, flowgen.Flow(i))
		}
	}
	fmt.Printf("# %d flows written in %.1fs; %d in zone 7; %s, %d runs\n", n, time.Since(start).Seconds(), len(zone7), kernelRelease(), runs)

	type row struct {
		what               string
		theirs, ours       []float64 // wall seconds
		theirsCPU, oursCPU []float64 // user+system seconds
		tcount, ocount     string
	}
	rows := []*row{
		{what: "list (`-L`)"}, {what: "list `-p tcp --dport 443`"}, {what: "count (`-C`)"},
		{what: "count `-w 7`"}, {what: "delete `-w 7`"},
	}
	shown := regexp.MustCompile(`(\d+) flow entries have been (shown|deleted)`)
	for r := 0; r < runs; r++ {
		for i, m := range []struct {
			theirs, ours []string
		}{
			{[]string{"-L"}, []string{"ct", "list"}},
			{[]string{"-L", "-p", "tcp", "--dport", "443"}, []string{"ct", "list", "-p", "tcp", "--dport", "443"}},
			{[]string{"-C"}, []string{"ct", "count"}},
			{[]string{"-L", "-w", "7"}, []string{"ct", "count", "-w", "7"}},
			{[]string{"-D", "-w", "7"}, []string{"ct", "delete", "-w", "7"}},
		} {
			d, cpu, out, errOut, err := bn.time(true, m.theirs...)
			if err != nil {
				return err
			}
			rows[i].theirs = append(rows[i].theirs, d)
			rows[i].theirsCPU = append(rows[i].theirsCPU, cpu)
			rows[i].tcount = firstNumber(shown.FindStringSubmatch(errOut), out)
			if i == 4 {
				if err := bn.fill(zone7); err != nil {
					return err
				}
			}
			d2, cpu2, out2, _, err := bn.time(false, m.ours...)
			if err != nil {
				return err
			}
			rows[i].ours = append(rows[i].ours, d2)
			rows[i].oursCPU = append(rows[i].oursCPU, cpu2)
			rows[i].ocount = firstNumber(nil, out2)
			if i == 4 {
				if err := bn.fill(zone7); err != nil {
					return err
				}
			}
			fmt.Printf("run %d %-28s conntrack %7.3fs cpu %6.3fs (%s)  ctsyncctl %7.3fs cpu %6.3fs (%s)\n", r+1, rows[i].what, d, cpu, rows[i].tcount, d2, cpu2, rows[i].ocount)
		}
	}
	fmt.Printf("\n| %d flows, median of %d | conntrack(8) wall | ctsyncctl ct wall | speed-up | conntrack(8) CPU | ctsyncctl ct CPU | CPU ratio |\n|---|---:|---:|---:|---:|---:|---:|\n", n, runs)
	for _, r := range rows {
		t, o := median(r.theirs), median(r.ours)
		tc, oc := median(r.theirsCPU), median(r.oursCPU)
		fmt.Printf("| %s | %.3f s | %.3f s | %.1f× | %.3f s | %.3f s | %.1f× |\n", r.what, t, o, t/o, tc, oc, tc/oc)
	}
	return nil
}

// time runs conntrack(8) (in the namespace; `ip netns exec` execs it in
// place, so the process's CPU time is conntrack's) or ctsyncctl (--netns)
// with stdout to /dev/null for listings, captured otherwise; it returns the
// wall time and the process's user+system CPU time in seconds.
func (b *bench) time(theirs bool, args ...string) (wall, cpu float64, stdout, stderr string, err error) {
	var cmd *exec.Cmd
	if theirs {
		cmd = exec.Command("ip", append([]string{"netns", "exec", b.ns, b.ct}, args...)...)
	} else {
		cmd = exec.Command(b.ctl, append(args, "--netns", b.ns)...)
	}
	var out, errb strings.Builder
	// Listings go to /dev/null; conntrack -L and -D report their count on
	// stderr (-D also prints every deleted flow on stdout).
	if (theirs && args[0] != "-C") || (!theirs && args[1] == "list") {
		cmd.Stdout = b.null
	} else {
		cmd.Stdout = &out
	}
	cmd.Stderr = &errb
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, 0, "", "", fmt.Errorf("%s: %v: %s", strings.Join(cmd.Args, " "), err, errb.String())
	}
	wall = time.Since(start).Seconds()
	cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return wall, cpu, out.String(), errb.String(), nil
}

func firstNumber(m []string, out string) string {
	if len(m) > 1 {
		return m[1]
	}
	f := strings.Fields(out)
	if len(f) > 0 {
		return f[0]
	}
	return "-"
}

func (b *bench) fill(flows []flow.Flow) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: b.nsfd, MinTimeout: 7200})
	if err != nil {
		return err
	}
	defer w.Close()
	for lo := 0; lo < len(flows); lo += 100000 {
		hi := min(lo+100000, len(flows))
		res, err := w.Commit(ctx, flows[lo:hi], nil)
		if err != nil {
			return fmt.Errorf("fill: %w", err)
		}
		for _, r := range res {
			if r.Err != nil {
				return fmt.Errorf("fill %v: %w", r.Key, r.Err)
			}
		}
	}
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "linux"
	}
	return "Linux " + unix.ByteSliceToString(u.Release[:])
}
