//go:build cluster && large

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// TestClusterLargeCommitOrder: with 200,000 idle background flows
// replicated after the live streams started, fw-b's commit on takeover puts
// every live flow in the first 1% of its order. The streams' stall is
// logged, not asserted (timing belongs to the benchmarks).
func TestClusterLargeCommitOrder(t *testing.T) {
	const background = 200000
	raiseConntrackMax(t, 4*background)
	p := newPair(t, "udp", map[string]bool{"fw-a": true, "fw-b": true})
	p.WaitMaster(t, p.A)
	streams := startStreams(t, p.Topology)
	live := streamFlows(t, p.A)
	p.waitReplicated(t, p.B, live)

	// Idle background flows on fw-a: established TCP whose remaining
	// timeout says they have carried nothing for an hour or more.
	bg := make([]flow.Flow, background)
	for i := range bg {
		f := flow.Flow{
			Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Orig: flow.Tuple{
				Src: [16]byte{10, 100 + byte(i>>16), byte(i >> 8), byte(i)}, Dst: [16]byte{192, 0, 2, 1},
				SrcPort: uint16(1024 + i%60000), DstPort: 443}},
			Status:  flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured,
			TCP:     flow.TCPInfo{State: flow.TCPEstablished, WScaleOrig: 7, WScaleRep: 7},
			Timeout: 432000 - 3600 - uint32(i%3600),
		}
		f.Reply = f.Orig.Invert(f.Proto)
		bg[i] = f
	}
	w, err := kernel.NewWriter(kernel.WriterOptions{NetNS: p.A.NS.FD(t)})
	if err != nil {
		t.Fatal(err)
	}
	res, err := w.Commit(context.Background(), bg, nil)
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("background flow: %v", r.Err)
		}
	}
	var st struct {
		Sync struct {
			ExternalFlows int `json:"external_flows"`
		} `json:"sync"`
	}
	daemontest.WaitFor(t, 3*WaitTimeout, "fw-b to receive the background flows", func() (bool, string) {
		json.Unmarshal([]byte(p.ctl(t, p.B, "status", "--json")), &st)
		return st.Sync.ExternalFlows >= background+len(live), fmt.Sprint(st.Sync.ExternalFlows)
	})

	dead := p.KillFirewall(t, p.A)
	p.WaitMaster(t, p.B)
	for _, s := range streams {
		ok, stall := s.Survived(dead, 30*time.Second)
		if !ok {
			t.Errorf("%s broke on failover with %d background flows", s.Name, background)
			continue
		}
		t.Logf("%s survived with %d background flows, longest stall %v", s.Name, background, stall.Round(time.Millisecond))
	}

	// Where did the live flows land in fw-b's commit?
	var order []string
	daemontest.WaitFor(t, WaitTimeout, "fw-b's commit", func() (bool, string) {
		out, err := p.run(p.B, "dump", "commit")
		order = strings.Split(strings.TrimSpace(out), "\n")
		return err == nil && len(order) >= background, fmt.Sprint(len(order), err)
	})
	limit := len(order) / 100
	pos := map[string]int{}
	for i, line := range order {
		f := strings.Fields(line)
		if len(f) >= 7 {
			pos[strings.Join(f[3:7], " ")] = i
		}
	}
	for _, k := range live {
		f := flow.Flow{Key: k}
		key := fmt.Sprintf("src=%s dst=%s sport=%d dport=%d", f.SrcAddr(), f.DstAddr(), k.Orig.SrcPort, k.Orig.DstPort)
		i, ok := pos[key]
		switch {
		case !ok:
			t.Errorf("live flow %s not in the commit order", key)
		case i >= limit:
			t.Errorf("live flow %s at position %d of %d, not in the first 1%% (%d)", key, i, len(order), limit)
		default:
			t.Logf("live flow %s at position %d of %d", key, i, len(order))
		}
	}
	t.Logf("fw-b's commit: %s", grepLine(p.procs[p.B.Name].Log(), "commit done"))
}

func grepLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
