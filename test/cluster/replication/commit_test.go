//go:build cluster

package replication_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

func kernelKeys(t testing.TB, n *node) map[flow.Key]flow.Flow {
	t.Helper()
	m := map[flow.Key]flow.Flow{}
	if err := kernel.Dump(context.Background(), kernel.DumpOptions{NetNS: n.ns.FD(t)}, func(f *flow.Flow) { m[f.Key] = *f }); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestClusterKeepalivedMaster: flows replicated from A are committed into
// B's kernel when keepalived tells B it is MASTER; the committed entries
// leave B's external cache, B re-reads its kernel and sends it to A in bulk.
// A repeated MASTER is a duplicate; bad notify arguments are refused.
func TestClusterKeepalivedMaster(t *testing.T) {
	a, b := pair(t)
	key := writeKey(t)
	// The nodes use the ftp helper: their peers' flows may carry it (the
	// receive policy allows no helper by default).
	helpers := "\n[peer_policy]\nhelpers = [\"ftp\"]\n"
	a.start(t, syncConfig("udp", a, []*node{b}, key)+helpers)
	b.start(t, syncConfig("udp", b, []*node{a}, key)+helpers)
	flows := mkFlows(0, 3000)
	// An FTP control connection with its helper: the helper name is
	// replicated and committed (expectations are not).
	ftp := flows[0]
	ftp.Orig.SrcPort, ftp.Orig.DstPort = 40021, 21
	ftp.Reply = ftp.Orig.Invert(ftp.Proto)
	ftp.Extra = &flow.Extra{Helper: "ftp"}
	flows = append(flows, ftp)
	write(t, a.ns, flows)
	converged(t, a, b)
	if n := len(kernelKeys(t, b)); n != 0 {
		t.Fatalf("B's kernel has %d flows before the commit", n)
	}

	var res failover.Result
	b.proc.JSON(&res, "keepalived", "INSTANCE", "VI_1", "MASTER", "100")
	if res.Outcome != failover.Applied || res.Report == nil {
		t.Fatalf("MASTER: %+v", res)
	}
	r := res.Report
	t.Logf("commit of %d flows: created %d, updated %d, failed %d in %.3f s (first chunk %.4f s)",
		r.Flows, r.Created, r.Updated, r.Failed, r.Seconds, r.FirstChunkSeconds)
	if r.Created != len(flows) || r.Failed != 0 {
		t.Errorf("report %+v, want %d created", r, len(flows))
	}
	got := kernelKeys(t, b)
	for _, f := range flows {
		k, ok := got[f.Key]
		if !ok {
			t.Errorf("not in B's kernel: %s", f.String())
			continue
		}
		if k.Reply != f.Reply || k.Mark != f.Mark || (f.Proto == flow.ProtoTCP && k.TCP.State != f.TCP.State) {
			t.Errorf("B's kernel has\n%s\nwant\n%s", k.String(), f.String())
		}
		if f.Extra != nil && (k.Extra == nil || k.Extra.Helper != f.Extra.Helper) {
			t.Errorf("helper not committed: B's kernel has %s", k.String())
		}
	}
	if n := len(filterOrigin(b.proc.Lines("dump", "external"), a.name)); n != 0 {
		t.Errorf("%d committed flows still in B's external cache", n)
	}
	// B re-read its kernel: its internal cache holds the flows, and A gets
	// them from B's bulk.
	converged(t, b, a)

	b.proc.JSON(&res, "keepalived", "GROUP", "G1", "MASTER", "100")
	if res.Outcome != failover.Duplicate {
		t.Errorf("second MASTER: outcome %s, want duplicate", res.Outcome)
	}
	var st struct {
		Role string `json:"role"`
	}
	b.proc.JSON(&st, "status")
	if st.Role != "MASTER" {
		t.Errorf("status role %q", st.Role)
	}
	_, e, code := b.proc.Run("keepalived", "INSTANCE", "VI_1", "SIDEWAYS")
	if code == 0 || !strings.Contains(e, "SIDEWAYS") {
		t.Errorf("bad state: exit %d, %q", code, e)
	}

	// BACKUP purges: B's kernel timeouts are capped at purge_timeout (60 s).
	b.proc.JSON(&res, "keepalived", "INSTANCE", "VI_1", "BACKUP", "100")
	if res.Outcome != failover.Applied {
		t.Fatalf("BACKUP: %+v", res)
	}
	daemontest.WaitFor(t, converge, "purged timeouts", func() (bool, string) {
		for _, f := range kernelKeys(t, b) {
			if f.Timeout > 60 {
				return false, f.String()
			}
		}
		return true, ""
	})

	// A manual `ctsyncctl commit` writes what arrived since and reports it.
	more := mkFlows(3000, 500) // after the first set: SNAT reply tuples do not clash
	write(t, a.ns, more)
	daemontest.WaitFor(t, converge, "the new flows on B", func() (bool, string) {
		n := len(filterOrigin(b.proc.Lines("dump", "external"), a.name))
		return n >= len(more), fmt.Sprint(n)
	})
	var rep failover.Report
	b.proc.JSON(&rep, "commit")
	if rep.Failed != 0 || rep.Created < len(more) {
		t.Errorf("ctsyncctl commit: %+v", rep)
	}
	got = kernelKeys(t, b)
	for _, f := range more {
		if _, ok := got[f.Key]; !ok {
			t.Errorf("not committed: %s", f.String())
		}
	}
	// The events of B's own writes were recognized by port id: dropped by
	// the kernel (B's BPF filter) or skipped undecoded, never taken as
	// B's own new flows. A foreign create afterwards marks the point by
	// which every event of the commit has arrived.
	var stats struct {
		Events struct {
			New         uint64 `json:"new"`
			Own         uint64 `json:"own_writes_ignored"`
			OwnInKernel bool   `json:"own_writes_dropped_by_kernel"`
		} `json:"events"`
	}
	b.proc.JSON(&stats, "stats")
	before := stats.Events.New
	marker := mkFlows(4000, 1)
	write(t, b.ns, marker)
	daemontest.WaitFor(t, converge, "B to see the marker flow", func() (bool, string) {
		b.proc.JSON(&stats, "stats")
		return stats.Events.New > before, fmt.Sprint(stats.Events.New)
	})
	if n := stats.Events.New - before; n >= uint64(len(more)) {
		t.Errorf("B took %d new events after its commit of %d flows: its own writes' events were not recognized", n, len(more))
	}
	if !stats.Events.OwnInKernel && stats.Events.Own < uint64(len(more)) {
		t.Errorf("own writes: dropped by the kernel %v, skipped %d, want all %d skipped", stats.Events.OwnInKernel, stats.Events.Own, len(more))
	}
}
