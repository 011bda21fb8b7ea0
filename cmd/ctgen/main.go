// Command ctgen writes a fixed, documented mix of conntrack flows into a
// kernel table and reports how fast it went: ctsyncd's flow generator for
// tests and benchmarks (see internal/flowgen for the mix).
//
//	ctgen [-netns NAME] [-n 100000] [-mode writer|timo] [-sockets 2] [-batch 256] [-flush] [-min-timeout S] [-rate R]
//
// -mode writer commits with kernel.Writer (batched, parallel, NAT-aware);
// -mode timo creates the same flows one by one with ti-mo/conntrack's
// Conn.Create (which waits for an ACK per flow and cannot express NAT: the
// NATed share is created with its reply tuple but without NAT), the
// baseline. -netns names a namespace under /run/netns (ip netns add); the
// default is the current one. The namespace needs nf_conntrack_max above
// -n (settable only from the initial namespace) and, for the NATed share,
// nf_nat loaded (any nftables nat chain). -min-timeout raises short
// timeouts (ICMP's 30..89 s) so that flows outlive a long benchmark run;
// -rate paces writer creates at R flows/s (chunks of R/100 every 10 ms).
//
// Output is one line of key=value pairs.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/flowgen"
	"github.com/ctsyncd/ctsyncd/internal/timoconv"
	"github.com/ctsyncd/ctsyncd/kernel"
)

func main() {
	var (
		n       = flag.Int("n", 100000, "number of flows")
		offset  = flag.Int("offset", 0, "number of the first flow (flows are a function of their number)")
		mode    = flag.String("mode", "writer", "writer | timo")
		sockets = flag.Int("sockets", 2, "writer: parallel netlink sockets (creates too, unlike the daemon's commit, which creates on one)")
		batch   = flag.Int("batch", 256, "writer: messages per sendmsg")
		netns   = flag.String("netns", "", "network namespace name (/run/netns/NAME); default the current one")
		flush   = flag.Bool("flush", false, "flush the table first (not timed)")
		timeout = flag.Duration("timeout", 10*time.Minute, "give up after this long")
		minTO   = flag.Uint("min-timeout", 0, "raise every flow's timeout to at least this many seconds (0: the mix's own, ICMP from 30 s)")
		rate    = flag.Int("rate", 0, "writer: create at most this many flows per second, in chunks every 10 ms (0: as fast as the kernel takes them)")
	)
	flag.Parse()
	if err := run(*n, *offset, *mode, *sockets, *batch, *netns, *flush, *timeout, uint32(*minTO), *rate); err != nil {
		fmt.Fprintln(os.Stderr, "ctgen:", err)
		os.Exit(1)
	}
}

func run(n, offset int, mode string, sockets, batch int, netns string, flush bool, timeout time.Duration, minTimeout uint32, rate int) error {
	fd := 0
	if netns != "" {
		var err error
		fd, err = unix.Open("/run/netns/"+netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("netns %s: %w", netns, err)
		}
		defer unix.Close(fd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	flows := make([]flow.Flow, n)
	for i := range flows {
		flows[i] = flowgen.Flow(offset + i)
		flows[i].Timeout = max(flows[i].Timeout, minTimeout)
	}

	w, err := kernel.NewWriter(kernel.WriterOptions{Sockets: sockets, ParallelCreates: true, Batch: batch, NetNS: fd})
	if err != nil {
		return err
	}
	defer w.Close()
	if flush {
		if err := w.Flush(ctx); err != nil {
			return err
		}
	}

	switch mode {
	case "writer":
		start := time.Now()
		res, err := commitPaced(ctx, w, flows, rate)
		el := time.Since(start)
		ops := map[kernel.Op]int{}
		var firstErr error
		for _, r := range res {
			ops[r.Op]++
			if r.Err != nil && firstErr == nil {
				firstErr = r.Err
			}
		}
		fmt.Printf("mode=writer n=%d sockets=%d batch=%d rate=%d elapsed=%.3fs flows_per_s=%.0f created=%d updated=%d replaced=%d failed=%d first_error=%q\n",
			n, sockets, batch, rate, el.Seconds(), float64(n)/el.Seconds(),
			ops[kernel.Created], ops[kernel.Updated], ops[kernel.Replaced], ops[kernel.Failed], fmt.Sprint(firstErr))
		return err
	case "timo":
		c, err := conntrack.Dial(&netlink.Config{NetNS: fd})
		if err != nil {
			return err
		}
		defer c.Close()
		var failed int
		var firstErr error
		start := time.Now()
		for i := range flows {
			f := &flows[i]
			cf := timoconv.ToConntrack(f)
			cf.Status = conntrack.Status(f.Status&^(flow.StatusSrcNAT|flow.StatusDstNAT|flow.StatusSrcNATDone|flow.StatusDstNATDone) | flow.StatusConfirmed)
			cf.Timeout = max(f.Timeout, 30)
			if err := c.Create(cf); err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
			}
			if i%1024 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
		}
		el := time.Since(start)
		fmt.Printf("mode=timo n=%d elapsed=%.3fs flows_per_s=%.0f failed=%d first_error=%q\n",
			n, el.Seconds(), float64(n)/el.Seconds(), failed, fmt.Sprint(firstErr))
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// commitPaced commits flows at once when rate is 0, else in chunks of
// rate/100 flows, each chunk due 10 ms after the previous one (a chunk that
// runs late is not made up for by bursts beyond the schedule).
func commitPaced(ctx context.Context, w *kernel.Writer, flows []flow.Flow, rate int) ([]kernel.Result, error) {
	if rate <= 0 {
		return w.Commit(ctx, flows, nil)
	}
	chunk := max(rate/100, 1) // one chunk every 10 ms
	res := make([]kernel.Result, 0, len(flows))
	start := time.Now()
	for i := 0; i < len(flows); i += chunk {
		due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if d := time.Until(due); d > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(d):
			}
		}
		r, err := w.Commit(ctx, flows[i:min(i+chunk, len(flows))], nil)
		res = append(res, r...)
		if err != nil {
			return res, err
		}
	}
	return res, nil
}
