//go:build cluster

package replication_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/daemontest"
)

// minAgeRun starts A with [sync] min_age and B, writes 20 flows that live
// one second and 20 that stay into A's kernel, and returns how many flow
// changes B applied from A after the write (once B holds the 20 that stay
// and the short ones are 5 s old) and A's count of flows removed before
// their min_age.
func minAgeRun(t *testing.T, minAge string) (applied uint64, neverSent float64) {
	a, b := pair(t)
	key := writeKey(t)
	withMinAge := strings.Replace(syncConfig("udp", a, []*node{b}, key), "[sync]\n", fmt.Sprintf("[sync]\nmin_age = %q\n", minAge), 1)
	a.start(t, withMinAge)
	b.start(t, syncConfig("udp", b, []*node{a}, key))
	daemontest.WaitFor(t, converge, "A and B to see each other", func() (bool, string) {
		pa, pb := a.peers(t)[b.name], b.peers(t)[a.name]
		return pa.Up && pb.Up && pb.BulksReceived > 0, fmt.Sprintf("A sees B %v, B sees A %v", pa.Up, pb.Up)
	})
	before := b.peers(t)[a.name].FlowsIn
	flows := mkFlows(0, 40)
	short, long := flows[:20], flows[20:]
	write(t, a.ns, flows)
	time.Sleep(time.Second)
	remove(t, a.ns, short)
	start := time.Now()
	daemontest.WaitFor(t, converge, "B to hold A's long-lived flows only", func() (bool, string) {
		n := len(filterOrigin(b.proc.Lines("dump", "external"), a.name))
		return n == len(long) && time.Since(start) > 4*time.Second, fmt.Sprint(n, " flows")
	})
	converged(t, a, b)
	var st struct {
		Internal map[string]float64 `json:"internal"`
	}
	a.proc.JSON(&st, "stats")
	return b.peers(t)[a.name].FlowsIn - before, st.Internal["removed_before_min_age"]
}

// TestClusterMinAge: with min_age = "3s", flows deleted after one second
// never reach the peer (neither they nor their destroys), while flows that
// live on do. The control run without min_age sends every one of them.
func TestClusterMinAge(t *testing.T) {
	t.Run("min_age=3s", func(t *testing.T) {
		applied, never := minAgeRun(t, "3s")
		t.Logf("min_age 3s: B applied %d changes from A; A never sent %v short-lived flows", applied, never)
		if applied != 20 {
			t.Errorf("B applied %d flow changes from A, want exactly the 20 long-lived flows", applied)
		}
		if never != 20 {
			t.Errorf("A counted %v flows removed before min_age, want 20", never)
		}
	})
	t.Run("control min_age=0s", func(t *testing.T) {
		applied, never := minAgeRun(t, "0s")
		t.Logf("min_age 0s: B applied %d changes from A", applied)
		if applied < 60 { // 40 creates, 20 destroys
			t.Errorf("control: B applied only %d changes; the short-lived flows should have been replicated", applied)
		}
		if never != 0 {
			t.Errorf("control: %v flows counted as never sent", never)
		}
	})
}
