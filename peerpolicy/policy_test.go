package peerpolicy

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/filter"
	"github.com/ctsyncd/ctsyncd/flow"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

var fw = netip.MustParseAddr("192.0.2.1")

// crafted is what a malicious peer sent in the review: 203.0.113.66:40000
// → fw:22, DNATed to 10.0.0.5:5432, zone 7, mark 0x1337, helper "ftp",
// labels, ASSURED|FIXED_TIMEOUT and a 2^31 s timeout.
func crafted() flow.Flow {
	f := flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Zone: 7}}
	f.Orig = flow.Tuple{Src: flow.AddrFrom(netip.MustParseAddr("203.0.113.66")), Dst: flow.AddrFrom(fw), SrcPort: 40000, DstPort: 22}
	f.Reply = flow.Tuple{Src: flow.AddrFrom(netip.MustParseAddr("10.0.0.5")), Dst: f.Orig.Src, SrcPort: 5432, DstPort: 40000}
	f.Status = flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured | flow.StatusFixedTimeout |
		flow.StatusDstNAT | flow.StatusDstNATDone
	f.Timeout = 1 << 31
	f.Mark = 0x1337
	f.TCP.State = flow.TCPEstablished
	f.Extra = &flow.Extra{Helper: "ftp", Labels: [16]byte{0: 1}}
	return f
}

// TestCraftedFlowDefaultPolicy: the default policy refuses the crafted flow
// (helper not allowed); the node's own filter refuses it too when it
// ignores the source; allowing the helper admits it sanitized.
func TestCraftedFlowDefaultPolicy(t *testing.T) {
	p, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := crafted()
	if err := p.Check(&f); err == nil || !strings.Contains(err.Error(), "helper") {
		t.Fatalf("default policy: %v, want the helper refused", err)
	}

	// The node's filter ignores the crafted source (a filter the node
	// applies to its own flows applies to its peers' flows too).
	own := filter.New(nil, nil, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, filter.Exclude{})
	p, _ = New(Options{Filter: own, Helpers: []string{"ftp"}})
	f = crafted()
	if err := p.Check(&f); err == nil || !strings.Contains(err.Error(), "filter") {
		t.Fatalf("with the node's filter: %v, want refused by it", err)
	}

	p, _ = New(Options{Helpers: []string{"ftp", "sip"}})
	f = crafted()
	if err := p.Check(&f); err != nil {
		t.Fatalf("helper allowed: %v", err)
	}
	if f.Status&flow.StatusFixedTimeout != 0 {
		t.Error("FIXED_TIMEOUT kept")
	}
	if f.Timeout != 5*24*3600 {
		t.Errorf("timeout %d, want capped at 432000", f.Timeout)
	}
	if f.Mark != 0x1337 || f.Zone != 7 || !f.NATed() {
		t.Errorf("allowed attributes changed: %v", f.String())
	}
}

// TestModes: each of mark, labels, zone and NAT refused, required or
// stripped as configured.
func TestModes(t *testing.T) {
	plain := func() flow.Flow {
		f := crafted()
		f.Zone, f.Mark, f.Extra = 0, 0, nil
		f.Reply = f.Orig.Invert(f.Proto)
		f.Status &^= flow.StatusDstNAT | flow.StatusDstNATDone
		return f
	}
	for _, tc := range []struct {
		name string
		opt  Options
		f    func() flow.Flow
		ok   bool
	}{
		{"zone refused", Options{Zone: Refuse, Helpers: []string{"ftp"}}, crafted, false},
		{"nat refused", Options{NAT: Refuse, Helpers: []string{"ftp"}}, crafted, false},
		{"mark refused", Options{Mark: Refuse, Helpers: []string{"ftp"}}, crafted, false},
		{"labels refused", Options{Labels: Refuse, Helpers: []string{"ftp"}}, crafted, false},
		{"mark required", Options{Mark: Require}, plain, false},
		{"nat required", Options{NAT: Require}, plain, false},
		{"zone required", Options{Zone: Require}, plain, false},
		{"plain allowed", Options{}, plain, true},
	} {
		f := tc.f()
		p, err := New(tc.opt)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Check(&f); (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	p, _ := New(Options{Mark: Strip, Labels: Strip, Helpers: []string{"ftp"}})
	f := crafted()
	x := f.Extra
	if err := p.Check(&f); err != nil {
		t.Fatal(err)
	}
	if f.Mark != 0 || f.Extra.Labels != ([16]byte{}) || x.Labels == ([16]byte{}) {
		t.Errorf("strip: mark %#x labels %x (sender's copy %x)", f.Mark, f.Extra.Labels, x.Labels)
	}
	if _, err := New(Options{Zone: Strip}); err == nil {
		t.Error("zone strip accepted")
	}
}

// TestPeerCannotPlantFlow: a peer holding the key replicates the crafted
// flow; a node with the default policy keeps nothing of it and counts the
// refusal. Without a policy (the code before) the flow is kept as sent.
func TestPeerCannotPlantFlow(t *testing.T) {
	key := [ctsync.KeyLen]byte{1}
	for _, withPolicy := range []bool{false, true} {
		net := ctsync.NewMemNetwork(1)
		in := cache.NewInternal(nil)
		exA, exB := cache.NewExternal(), cache.NewExternal()
		a, err := ctsync.New(ctsync.Options{NodeName: "evil", Key: &key}, in, exA, net.Endpoint("evil"))
		if err != nil {
			t.Fatal(err)
		}
		ob := ctsync.Options{NodeName: "fw", Key: &key}
		if withPolicy {
			p, _ := New(Options{})
			ob.Policy = p
		}
		b, err := ctsync.New(ob, cache.NewInternal(nil), exB, net.Endpoint("fw"))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{}, 2)
		go func() { a.Run(ctx); done <- struct{}{} }()
		go func() { b.Run(ctx); done <- struct{}{} }()
		f := crafted()
		in.Upsert(&f)
		good := crafted()
		good.Extra, good.Zone, good.Orig.SrcPort = nil, 0, 40001
		good.Reply = good.Orig.Invert(good.Proto)
		in.Upsert(&good)
		deadline := time.Now().Add(10 * time.Second)
		for exB.Len() == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond) // both are in one message; see the stats below
		cancel()
		<-done
		<-done
		_, planted := exB.Get("evil", f.Key)
		st := b.Stats()["evil"]
		t.Logf("policy %v: planted %v, external %d flows, policy refused %d", withPolicy, planted, exB.Len(), st.PolicyRefused)
		if withPolicy {
			// Each flow may arrive more than once (its change, then a bulk):
			// every copy of the crafted one is refused, the other applied.
			if planted || st.PolicyRefused == 0 || st.FlowsIn == 0 || st.PolicyRefused != st.FlowsIn {
				t.Errorf("with the default policy: planted %v, refused %d, applied %d", planted, st.PolicyRefused, st.FlowsIn)
			}
			e, ok := exB.Get("evil", good.Key)
			if !ok || e.Flow.Status&flow.StatusFixedTimeout != 0 || e.Flow.Timeout > 5*24*3600 {
				t.Errorf("admitted flow not sanitized: %v %+v", ok, e.Flow)
			}
		} else if !planted {
			t.Errorf("without a policy the crafted flow should arrive (control run)")
		}
	}
}
