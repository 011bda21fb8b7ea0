package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// clusterRun replicates in a cluster of k ctsyncd nodes over transport
// ("gossip" or "multicast"): the nodes' sync0 links on one bridge, each node
// creating N/k flows at once in its kernel, until every node's external
// cache holds the other nodes' flows. It records, per change (one flow
// created somewhere), the CPU seconds of the average node and the bytes
// all nodes sent on their sync links (tx), and the time to converge.
func (b *bench) clusterRun(transport string, k int, run string) {
	lab := fmt.Sprintf("cluster-%s-%d", transport, k)
	dir := filepath.Join(b.work, lab+"-"+run)
	rec := func(metric, format string, v any) { b.record(lab, run, metric, fmt.Sprintf(format, v)) }
	per := b.n / k
	err := runStep(lab+" run "+run, b.work, b.log, func(s *step) {
		defer b.keepLogs(dir, filepath.Join(b.out, "logs", lab+"-"+run))
		sw := netnstest.New(s)
		sw.Exec(s, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
		sw.Exec(s, "ip", "link", "set", "br0", "up")
		nss := make([]*netnstest.NS, k)
		addrs := make([]string, k)
		for i := range k {
			nss[i] = netnstest.New(s)
			addrs[i] = fmt.Sprintf("10.200.0.%d", i+1)
			port := fmt.Sprintf("p%d", i)
			netnstest.Veth(s, nss[i], "sync0", addrs[i]+"/24", sw, port, "")
			sw.Exec(s, "ip", "link", "set", port, "master", "br0")
			nss[i].Nft(s, natRuleset)
		}
		procs := make([]*proc, k)
		for i := range k {
			var peers []string
			for j := range k {
				if j != i {
					peers = append(peers, fmt.Sprintf("%q", addrs[j]+":3780"))
				}
			}
			procs[i] = b.startCtsyncd(s, nss[i], fmt.Sprintf("fw-%d", i), transport, addrs[i], strings.Join(peers, ", "), filepath.Join(dir, fmt.Sprintf("n%d", i)), "")
		}
		defer func() {
			for i, p := range procs {
				(&ctsyncd{b: b}).saveStats(filepath.Join(dir, fmt.Sprintf("n%d", i)))
				p.Stop(20 * time.Second)
			}
		}()
		time.Sleep(3 * time.Second) // peers meet
		rec("load1_before", "%.2f", loadavg())
		cpu0, by0 := 0.0, 0.0
		for i := range k {
			cpu0 += cpuSeconds(procs[i].pid())
			_, tx := linkRxTx(nss[i], "sync0")
			by0 += tx
		}
		t0 := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, k)
		for i := range k {
			wg.Go(func() {
				out, err := b.ctgen(nss[i], per, i*per, 0, 2)
				os.WriteFile(filepath.Join(dir, fmt.Sprintf("n%d", i), "ctgen.out"), []byte(out), 0o644)
				errs[i] = err
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				s.Fatal(err)
			}
		}
		want := per * (k - 1)
		conv := true
		for i := range k {
			d := &ctsyncd{b: b}
			if _, ok := waitN(b.timeout, want, func() (int, error) { return d.external(filepath.Join(dir, fmt.Sprintf("n%d", i))) }); !ok {
				conv = false
			}
		}
		t1 := time.Now()
		cpu1, by1 := 0.0, 0.0
		for i := range k {
			cpu1 += cpuSeconds(procs[i].pid())
			_, tx := linkRxTx(nss[i], "sync0")
			by1 += tx
		}
		changes := float64(per * k)
		rec("converged", "%d", b2i(conv))
		if conv {
			rec("replicate_s", "%.3f", t1.Sub(t0).Seconds())
		}
		rec("cpu_node_s_per_100k", "%.3f", (cpu1-cpu0)/float64(k)*100000/changes)
		// What every node sent on its sync link (a multicast datagram
		// counts once, however many nodes receive it).
		rec("wire_bytes_per_change", "%.1f", (by1-by0)/changes)
		rss := 0.0
		for i := range k {
			rss += rssBytes(procs[i].pid())
		}
		rec("rss_node_mib", "%.1f", rss/float64(k)/1048576)
		rec("load1_after", "%.2f", loadavg())
	})
	if err != nil {
		fmt.Fprintf(b.log, "   %v\n", err)
		rec("start_failed", "%d", 1)
	}
}
