//go:build kernel && large

package failover

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// TestKernelLargeCommit measures commits of 100k and 1M flows (the
// kernel-large tier: -tags kernel,large, no race detector), with five live flows
// among them that must be in the first chunk.
func TestKernelLargeCommit(t *testing.T) {
	for _, n := range []int{100000, 1000000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			_, w, _ := kernelNS(t)
			if b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max"); err == nil {
				if cur, _ := strconv.Atoi(strings.TrimSpace(string(b))); cur < 2*n {
					netnstest.Run(t, "sysctl", "-qw", fmt.Sprintf("net.netfilter.nf_conntrack_max=%d", 2*n))
				}
			}
			ext := cache.NewExternal()
			now := time.Now()
			live := []int{1, n / 3, n / 2, n - 7, n - 1}
			for i := range n {
				ext.Apply("fw-a", cache.Change{Flow: bulkFlow(i), Idle: time.Duration(60+i%3600) * time.Second}, now)
			}
			for _, i := range live {
				ext.Apply("fw-a", cache.Change{Flow: bulkFlow(i), Idle: time.Millisecond}, now)
			}
			snapStart := time.Now()
			_ = ext.Snapshot()
			snap := time.Since(snapStart)

			rep, err := Commit(context.Background(), ext, w, CommitOptions{Timeout: 120 * time.Second})
			if err != nil || rep.Created != n {
				t.Fatalf("Commit: %v %+v", err, rep)
			}
			for _, i := range live {
				if p := rep.Position(bulkFlow(i).Key); p < 0 || p >= DefaultFirstChunk {
					t.Errorf("live flow %d at position %d", i, p)
				}
			}
			t.Logf("%d flows in %.3fs (%.0f flows/s); first chunk (%d flows) in the kernel after %.1fms (a snapshot of the cache alone: %.1fms)",
				n, rep.Seconds, float64(n)/rep.Seconds, DefaultFirstChunk, rep.FirstChunkSeconds*1000, float64(snap.Microseconds())/1000)
		})
	}
}
