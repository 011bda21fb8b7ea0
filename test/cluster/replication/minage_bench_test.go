//go:build cluster

package replication_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// BenchmarkMinAge measures what [sync] min_age saves and what it costs on
// a churn mix where 90% of the flows live half a second and 10% stay: the
// sync bytes and CPU per created flow on both nodes, and the protection
// lost — the share of the flows alive in A's kernel at the end (a failover
// then) that B does not hold. Run it as root:
//
//	go test -tags cluster -run '^$' -bench MinAge -benchtime 1x ./test/cluster/replication/
func BenchmarkMinAge(b *testing.B) {
	const (
		rate     = 2000 // new flows per second
		duration = 20 * time.Second
		shortTTL = 500 * time.Millisecond
	)
	for _, minAge := range []string{"0s", "1s", "3s"} {
		b.Run("min_age="+minAge, func(b *testing.B) {
			for range b.N {
				created, res := churnRun(b, minAge, rate, duration, shortTTL)
				b.ReportMetric(float64(res.bytes)/float64(created), "sync-bytes/flow")
				b.ReportMetric(float64(res.cpuA.Microseconds())/float64(created), "sender-µs/flow")
				b.ReportMetric(float64(res.cpuB.Microseconds())/float64(created), "receiver-µs/flow")
				b.ReportMetric(100*float64(res.missing)/float64(res.alive), "%-alive-not-on-standby")
				b.ReportMetric(100*float64(res.missingLong)/float64(max(1, res.aliveLong)), "%-long-lived-not-on-standby")
			}
		})
	}
}

type churnResult struct {
	bytes                  uint64
	cpuA, cpuB             time.Duration
	alive, missing         int
	aliveLong, missingLong int
}

// churnRun creates rate flows a second in A's kernel for d, one in ten
// long-lived and the rest destroyed ttl after creation, and measures.
func churnRun(b *testing.B, minAge string, rate int, d, ttl time.Duration) (int, churnResult) {
	a, bb := pair(b)
	key := writeKey(b)
	cfgA := syncConfig("udp", a, []*node{bb}, key)
	cfgA = cfgA[:len("[sync]\n")] + fmt.Sprintf("min_age = %q\n", minAge) + cfgA[len("[sync]\n"):]
	a.start(b, cfgA)
	bb.start(b, syncConfig("udp", bb, []*node{a}, key))
	daemontest.WaitFor(b, converge, "the peers to see each other", func() (bool, string) {
		return a.peers(b)[bb.name].Up && bb.peers(b)[a.name].Up, ""
	})
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: a.ns.FD(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	type pending struct {
		at   time.Time
		keys []flow.Key
	}
	var dying []pending
	bytes0, cpuA0, cpuB0 := a.peers(b)[bb.name].BytesOut, a.proc.CPU(), bb.proc.CPU()
	tick := 100 * time.Millisecond
	perTick := rate * int(tick) / int(time.Second)
	start, n := time.Now(), 0
	long := map[flow.Key]bool{}
	ctx := context.Background()
	for time.Since(start) < d {
		fs := mkFlows(n, perTick)
		if _, err := w.Commit(ctx, fs, nil); err != nil {
			b.Fatal(err)
		}
		var short []flow.Key
		for i, f := range fs {
			if (n+i)%10 == 0 {
				long[f.Key] = true
			} else {
				short = append(short, f.Key)
			}
		}
		n += len(fs)
		now := time.Now()
		dying = append(dying, pending{now.Add(ttl), short})
		for len(dying) > 0 && !dying[0].at.After(now) {
			if _, err := w.Delete(ctx, dying[0].keys); err != nil {
				b.Fatal(err)
			}
			dying = dying[1:]
		}
		time.Sleep(time.Until(start.Add(time.Duration(n/perTick) * tick)))
	}
	// The failover moment: what A's kernel holds now, B should hold.
	time.Sleep(200 * time.Millisecond) // what is in flight arrives
	var r churnResult
	inB := map[string]bool{}
	for _, m := range filterOrigin(bb.proc.Lines("dump", "external"), a.name) {
		inB[fmt.Sprint(m["src"], m["sport"], m["dst"], m["dport"], m["proto"])] = true
	}
	for _, f := range kernelKeys(b, a) {
		v := f.View()
		k := fmt.Sprint(v.Src, float64(v.Sport), v.Dst, float64(v.Dport), v.Proto)
		r.alive++
		if long[f.Key] {
			r.aliveLong++
		}
		if !inB[k] {
			r.missing++
			if long[f.Key] {
				r.missingLong++
			}
		}
	}
	r.bytes = a.peers(b)[bb.name].BytesOut - bytes0
	r.cpuA, r.cpuB = a.proc.CPU()-cpuA0, bb.proc.CPU()-cpuB0
	b.Logf("min_age %s: %d flows created, %d alive at the end (%d long-lived), %d not on B (%d long-lived); %d bytes sent; CPU A %v B %v",
		minAge, n, r.alive, r.aliveLong, r.missing, r.missingLong, r.bytes, r.cpuA, r.cpuB)
	return n, r
}
