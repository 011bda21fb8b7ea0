package failover

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// fakeExpectWriter answers by the master's source port: 1 created, 2
// exists, 3 no master, 4 EIO.
type fakeExpectWriter struct {
	created []flow.Expect
	age     []time.Duration
	updated []flow.Expect
}

func (f *fakeExpectWriter) CreateExpect(_ context.Context, exps []flow.Expect, age []time.Duration) ([]kernel.ExpectResult, error) {
	f.created = append(f.created, exps...)
	f.age = append(f.age, age...)
	res := make([]kernel.ExpectResult, len(exps))
	for i, e := range exps {
		res[i].Key = e.ExpectKey
		switch e.Master.SrcPort {
		case 1:
			res[i].Op = kernel.Created
		case 2:
			res[i].Op = kernel.Updated
		case 3:
			res[i].Op, res[i].Err = kernel.Failed, &kernel.OpError{Op: "create expectation", Err: unix.ENOENT}
		default:
			res[i].Op, res[i].Err = kernel.Failed, &kernel.OpError{Op: "create expectation", Err: unix.EIO}
		}
	}
	return res, nil
}

func (f *fakeExpectWriter) UpdateExpect(_ context.Context, exps []flow.Expect) ([]kernel.ExpectResult, error) {
	f.updated = append(f.updated, exps...)
	res := make([]kernel.ExpectResult, len(exps))
	for i := range res {
		res[i].Op = kernel.Updated
	}
	return res, nil
}

func expectFor(masterPort, port uint16, timeout uint32) flow.Expect {
	a := func(s string) [16]byte { return flow.AddrFrom(netip.MustParseAddr(s)) }
	return flow.Expect{
		ExpectKey:   flow.ExpectKey{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Tuple: flow.Tuple{Src: a("10.0.1.2"), Dst: a("10.0.2.2"), DstPort: port}},
		Master:      flow.Tuple{Src: a("10.0.1.2"), Dst: a("10.0.2.2"), SrcPort: masterPort, DstPort: 21},
		MasterProto: flow.ProtoTCP, Timeout: timeout, Helper: "ftp",
	}
}

// Written and unwritable (no master, expired) expectations leave the cache;
// other failures stay for the next commit; the age since receipt is passed.
func TestCommitExpects(t *testing.T) {
	ext := cache.NewExternal()
	now := time.Now()
	for _, e := range []flow.Expect{expectFor(1, 1, 300), expectFor(2, 2, 300), expectFor(3, 3, 300), expectFor(4, 4, 300)} {
		ext.ApplyExpect("a", cache.ExpectChange{Expect: e}, now.Add(-2*time.Second))
	}
	ext.ApplyExpect("a", cache.ExpectChange{Expect: expectFor(1, 5, 10)}, now.Add(-time.Minute)) // expired
	// The same key from another origin, older: the newer wins.
	old := expectFor(4, 1, 300)
	old.Timeout = 7
	ext.ApplyExpect("b", cache.ExpectChange{Expect: old}, now.Add(-time.Hour))

	w := &fakeExpectWriter{}
	rep, err := CommitExpects(context.Background(), ext, w, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Expectations != 5 || rep.Created != 1 || rep.Updated != 1 || rep.NoMaster != 1 || rep.Failed != 1 || rep.Expired != 1 {
		t.Errorf("report %+v", rep)
	}
	if len(rep.Failures) != 2 {
		t.Errorf("failures %+v", rep.Failures)
	}
	for i, e := range w.created {
		if e.Tuple.DstPort == 1 && e.Timeout != 300 {
			t.Errorf("the older origin's expectation was written: %+v", e)
		}
		if w.age[i] < 2*time.Second || w.age[i] > time.Minute {
			t.Errorf("age %v", w.age[i])
		}
	}
	left := ext.ExpectSnapshot()
	if len(left) != 1 || left[0].Expect.Master.SrcPort != 4 {
		t.Errorf("left in the cache: %+v", left)
	}
}

func TestPurgeExpects(t *testing.T) {
	w := &fakeExpectWriter{}
	dump := func(_ context.Context, fn func(*flow.Expect)) error {
		for _, e := range []flow.Expect{expectFor(1, 1, 300), expectFor(1, 2, 20), expectFor(1, 3, 300)} {
			fn(&e)
		}
		return nil
	}
	n, err := PurgeExpects(context.Background(), dump, w, func(e *flow.Expect) bool { return e.Tuple.DstPort != 3 }, 60*time.Second)
	if err != nil || n != 1 || len(w.updated) != 1 || w.updated[0].Timeout != 60 || w.updated[0].Tuple.DstPort != 1 {
		t.Errorf("n %d err %v updated %+v", n, err, w.updated)
	}
}
