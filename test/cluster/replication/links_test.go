//go:build cluster

package replication_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

// linkStatus reads the sync links' state from `ctsyncctl status --json`.
func (n *node) links(t *testing.T) []ctsync.LinkStatus {
	var st struct {
		Sync struct {
			Links []ctsync.LinkStatus `json:"links"`
		} `json:"sync"`
	}
	n.proc.JSON(&st, "status")
	return st.Sync.Links
}

// TestClusterRedundantLinks: two sync links; the first is cut while A's
// flows are replicating; B still ends with every flow, and both nodes'
// status shows the cut link down and the other up. The control run has one
// link: the same cut stops replication.
func TestClusterRedundantLinks(t *testing.T) {
	run := func(t *testing.T, twoLinks bool, wait time.Duration) (complete bool, a, b *node) {
		a, b = pair(t)
		key := writeKey(t)
		cfgA, cfgB := syncConfig("udp", a, []*node{b}, key), syncConfig("udp", b, []*node{a}, key)
		if twoLinks {
			netnstest.Veth(t, a.ns, "sync1", "10.201.0.1/24", b.ns, "sync1", "10.201.0.2/24")
			link := "\n[[sync.link]]\ninterface = \"sync1\"\nlisten = %q\npeers = [%q]\n"
			cfgA += fmt.Sprintf(link, "10.201.0.1:3780", "10.201.0.2:3780")
			cfgB += fmt.Sprintf(link, "10.201.0.2:3780", "10.201.0.1:3780")
		}
		a.start(t, cfgA)
		b.start(t, cfgB)
		daemontest.WaitFor(t, converge, "A and B to see each other", func() (bool, string) {
			pa, pb := a.peers(t)[b.name], b.peers(t)[a.name]
			return pa.Up && pb.Up, fmt.Sprintf("A sees B %v, B sees A %v", pa.Up, pb.Up)
		})
		flows := mkFlows(0, 20000)
		write(t, a.ns, flows[:10000])
		a.ns.Exec(t, "ip", "link", "set", "sync0", "down")
		write(t, a.ns, flows[10000:])
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) {
			var st struct {
				Sync struct {
					ExternalFlows int `json:"external_flows"`
				} `json:"sync"`
			}
			b.proc.JSON(&st, "status")
			if st.Sync.ExternalFlows == len(flows) {
				return true, a, b
			}
			time.Sleep(200 * time.Millisecond)
		}
		return false, a, b
	}

	t.Run("two links", func(t *testing.T) {
		complete, a, b := run(t, true, 60*time.Second)
		if !complete {
			t.Fatal("B does not hold A's 20000 flows 60 s after the first link was cut")
		}
		converged(t, a, b)
		for _, n := range []*node{a, b} {
			daemontest.WaitFor(t, 10*time.Second, n.name+"'s status to show sync0 down and sync1 up", func() (bool, string) {
				ls := n.links(t)
				return len(ls) == 2 && ls[0].Name == "sync0" && !ls[0].Up && ls[1].Name == "sync1" && ls[1].Up, fmt.Sprintf("%+v", ls)
			})
		}
		st := b.peers(t)[a.name]
		t.Logf("B's links after the cut: %+v; from A: %d msgs, %d full resyncs, %d replays dropped", b.links(t), st.MsgsIn, st.FullResyncs, st.Drops.Replay)
		if out := b.proc.Ctl("status"); !strings.Contains(out, "sync1") {
			t.Errorf("ctsyncctl status does not name the links:\n%s", out)
		}
	})
	t.Run("control: one link", func(t *testing.T) {
		// The cut is permanent: any wait shows it.
		if complete, _, _ := run(t, false, 10*time.Second); complete {
			t.Fatal("control: replication went on after the only sync link was cut")
		}
	})
}
