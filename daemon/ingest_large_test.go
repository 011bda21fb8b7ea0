//go:build kernel && large

package daemon

import (
	"context"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// TestKernelLargeIngest creates many flows in the kernel as fast as two
// netlink sockets can, and measures how fast the daemon ingests their NEW
// events (flows/s from the first create until the cache holds them all),
// with the default 64 MiB event buffer. It asserts correctness only: the
// cache ends equal to the kernel table; the rates are logged.
// CTSYNCD_INGEST_FLOWS sets the count (default 100000);
// CTSYNCD_INGEST_PROFILE names a CPU profile file to write.
func TestKernelLargeIngest(t *testing.T) {
	n := 100000
	if s := os.Getenv("CTSYNCD_INGEST_FLOWS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	netnstest.Run(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_max=4000000")
	ns := netnstest.New(t)
	d := startDaemon(t, ns, func(c *config.Config) {
		c.Kernel.ResyncInterval = config.Duration{}
		c.Filter.IgnoreOwnAddresses = new(bool)
	})
	if p := os.Getenv("CTSYNCD_INGEST_PROFILE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	const workers = 2
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ct, err := conntrack.Dial(&netlink.Config{NetNS: ns.FD(t)})
			if err != nil {
				t.Error(err)
				return
			}
			defer ct.Close()
			for i := w; i < n; i += workers {
				src := netip.AddrFrom4([4]byte{10, byte(40 + i>>24), byte(i >> 16), byte(i >> 8)})
				dst := netip.AddrFrom4([4]byte{10, 99, byte(i), 1})
				f := conntrack.NewFlow(flow.ProtoTCP, 0, src, dst, uint16(1024+i%60000), 443, 600, 0)
				f.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: flow.TCPEstablished, OriginalWindowScale: 7, ReplyWindowScale: 7}
				if err := ct.Create(f); err != nil {
					t.Errorf("create %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	created := time.Since(start)
	waitFor(t, "all flows ingested", func() (bool, string) {
		return d.Internal().Len() >= n, strconv.Itoa(d.Internal().Len())
	})
	ingested := time.Since(start)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	st := d.stats()
	t.Logf("%d flows: created in %v (%.0f/s on %d sockets), ingested in %v (%.0f events/s), overruns %d, heap +%.0f bytes/flow",
		n, created.Round(time.Millisecond), float64(n)/created.Seconds(), workers,
		ingested.Round(time.Millisecond), float64(n)/ingested.Seconds(), st.Events.Overruns,
		float64(after.HeapAlloc-before.HeapAlloc)/float64(n))

	var kernelN int
	if err := kernel.Dump(context.Background(), kernel.DumpOptions{NetNS: ns.FD(t)}, func(*flow.Flow) { kernelN++ }); err != nil {
		t.Fatal(err)
	}
	if kernelN != d.Internal().Len() {
		t.Errorf("kernel has %d flows, cache %d", kernelN, d.Internal().Len())
	}

	// A flush makes the kernel emit every DESTROY event as fast as it can
	// delete: the daemon's ingest, not the creator, sets the pace here.
	overruns := st.Events.Overruns
	start = time.Now()
	ns.Exec(t, "conntrack", "-F")
	flushed := time.Since(start)
	waitFor(t, "all DESTROY events ingested", func() (bool, string) {
		return d.Internal().Len() == 0, strconv.Itoa(d.Internal().Len())
	})
	drained := time.Since(start)
	st = d.stats()
	t.Logf("flush of %d flows: kernel done in %v, cache empty after %v (%.0f events/s), overruns during the flush %d",
		n, flushed.Round(time.Millisecond), drained.Round(time.Millisecond), float64(n)/drained.Seconds(), st.Events.Overruns-overruns)
}
