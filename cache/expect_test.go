package cache

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

func testExpect(port uint16, masterPort uint16) flow.Expect {
	a := func(s string) [16]byte { return flow.AddrFrom(netip.MustParseAddr(s)) }
	return flow.Expect{
		ExpectKey:   flow.ExpectKey{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Tuple: flow.Tuple{Src: a("10.0.1.2"), Dst: a("10.0.2.2"), DstPort: port}},
		Mask:        flow.Tuple{Src: a("255.255.255.255"), Dst: a("255.255.255.255"), DstPort: 0xffff},
		Master:      flow.Tuple{Src: a("10.0.1.2"), Dst: a("10.0.2.2"), SrcPort: masterPort, DstPort: 21},
		MasterProto: flow.ProtoTCP, Timeout: 300, Helper: "ftp",
	}
}

func TestInternalExpectEvents(t *testing.T) {
	c := NewInternalExpect()
	now := time.Unix(1000, 0)
	c.SetClock(func() time.Time { return now })
	e := testExpect(40000, 50000)
	c.Upsert(&e)
	c.Upsert(&e) // the same state again: one change
	ch := c.TakeChanges(0)
	if len(ch) != 1 || ch[0].Deleted || ch[0].Expect != e {
		t.Fatalf("changes %+v", ch)
	}
	// Timeouts age with the clock.
	now = now.Add(10 * time.Second)
	if got := c.Snapshot(); len(got) != 1 || got[0].Timeout != 290 {
		t.Errorf("snapshot %+v", got)
	}
	if cur := c.Current(e.ExpectKey); cur.Deleted || cur.Expect.Timeout != 290 {
		t.Errorf("current %+v", cur)
	}
	c.Delete(e.ExpectKey)
	ch = c.TakeChanges(0)
	if len(ch) != 1 || !ch[0].Deleted || ch[0].Expect.ExpectKey != e.ExpectKey {
		t.Fatalf("changes after delete %+v", ch)
	}
	if s := c.Stats(); s.Created != 1 || s.Deleted != 1 || s.Expectations != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A reconcile adds what events missed and removes what the kernel no
// longer has, but an expectation destroyed or created by an event during
// the dump keeps the event's word.
func TestInternalExpectReconcile(t *testing.T) {
	c := NewInternalExpect()
	kept, gone, missed, raced, late := testExpect(1, 1), testExpect(2, 1), testExpect(3, 1), testExpect(4, 1), testExpect(5, 1)
	c.Upsert(&kept)
	c.Upsert(&gone)
	c.Upsert(&raced)
	c.TakeChanges(0)
	r := c.BeginReconcile()
	c.Delete(raced.ExpectKey) // destroyed after the dump began
	c.Upsert(&late)           // created after the dump began
	r.Add(&kept)
	r.Add(&missed)
	r.Add(&raced)
	res := r.Finish()
	if res.Added != 1 || res.Removed != 1 {
		t.Errorf("result %+v", res)
	}
	have := map[flow.ExpectKey]bool{}
	for _, k := range c.Keys() {
		have[k] = true
	}
	for _, e := range []flow.Expect{kept, missed, late} {
		if !have[e.ExpectKey] {
			t.Errorf("%s missing", e.String())
		}
	}
	for _, e := range []flow.Expect{gone, raced} {
		if have[e.ExpectKey] {
			t.Errorf("%s still cached", e.String())
		}
	}
}

func TestExternalExpects(t *testing.T) {
	c := NewExternal()
	now := time.Now()
	e1, e2 := testExpect(1, 50000), testExpect(2, 50001)
	c.ApplyExpect("a", ExpectChange{Expect: e1}, now)
	c.ApplyExpect("a", ExpectChange{Expect: e2}, now)
	if c.ExpectLen() != 2 {
		t.Fatalf("len %d", c.ExpectLen())
	}
	// The master's removal takes its expectation along.
	c.Apply("a", Change{Flow: flow.Flow{Key: e1.MasterKey()}, Deleted: true}, now)
	snap := c.ExpectSnapshot()
	if len(snap) != 1 || snap[0].Expect != e2 || snap[0].Origin != "a" {
		t.Fatalf("snapshot %+v", snap)
	}
	// A bulk that does not carry e2 removes it.
	c.ApplyExpect("a", ExpectChange{Expect: e1}, now)
	c.BeginBulk("a", 7)
	c.ApplyExpect("a", ExpectChange{Expect: e1}, now)
	c.EndBulk("a", 7)
	if snap := c.ExpectSnapshot(); len(snap) != 1 || snap[0].Expect != e1 {
		t.Fatalf("after bulk %+v", snap)
	}
	c.ApplyExpect("a", ExpectChange{Expect: e1, Deleted: true}, now)
	if c.ExpectLen() != 0 {
		t.Error("delete did not remove")
	}
	c.ApplyExpect("a", ExpectChange{Expect: e1}, now)
	c.ApplyExpect("b", ExpectChange{Expect: e2}, now)
	if n := c.RemoveExpects([]flow.ExpectKey{e1.ExpectKey}); n != 1 {
		t.Errorf("removed %d", n)
	}
	if n := c.Flush(""); n != 0 || c.ExpectLen() != 0 {
		t.Errorf("flush left %d expectations", c.ExpectLen())
	}
	if s := c.Stats(); s.ExpectApplied != 7 {
		t.Errorf("stats %+v", s)
	}
}
