//go:build cluster

package replication_test

import (
	"fmt"
	"testing"

	"github.com/ctsyncd/ctsyncd/internal/daemontest"
)

// previousRelease is the earliest commit of this repository whose sync
// protocol the current code must speak: protocol version 2 with the
// extension rule (flagStreamExt: unknown stream messages are taken and
// skipped, other unknown messages ignored). A rolling upgrade from it runs
// in TestClusterRollingUpgrade. Move it forward only with a release note.
const previousRelease = "af95f5f"

// TestClusterRollingUpgrade: an earlier version of ctsyncd (built from
// this repository's history) and the current one replicate both ways and
// fail over to each other: each commits the other's flows into its kernel.
func TestClusterRollingUpgrade(t *testing.T) {
	oldD, oldC := daemontest.BuildAt(t, previousRelease)
	a, b := pair(t)
	key := writeKey(t)
	a.proc = daemontest.StartWith(t, a.ns, a.name, syncConfig("udp", a, []*node{b}, key), oldD, oldC)
	b.start(t, syncConfig("udp", b, []*node{a}, key))
	fromA, fromB := mkFlows(0, 2000), mkFlows(5000, 2000)
	write(t, a.ns, fromA)
	write(t, b.ns, fromB)
	converged(t, a, b) // old → new
	converged(t, b, a) // new → old

	// Failover both ways: each commits what the other replicated.
	for _, c := range []struct{ to, from *node }{{b, a}, {a, b}} {
		c.to.proc.Ctl("commit")
		daemontest.WaitFor(t, converge, c.to.name+" to hold "+c.from.name+"'s flows in its kernel", func() (bool, string) {
			k := kernelKeys(t, c.to)
			missing := 0
			src := fromA
			if c.from == b {
				src = fromB
			}
			for _, f := range src {
				if _, ok := k[f.Key]; !ok {
					missing++
				}
			}
			return missing == 0, fmt.Sprintf("%d of %d missing", missing, len(src))
		})
	}
	// The old node took the current one's newer messages (NODE_INFO)
	// without counting them malformed.
	if d := a.peers(t)[b.name].Drops; d.Malformed != 0 {
		t.Errorf("the old node dropped %d of the current one's datagrams as malformed", d.Malformed)
	}
	t.Logf("old (%s) and current replicated %d and %d flows to each other and committed them", previousRelease, len(fromA), len(fromB))
}
