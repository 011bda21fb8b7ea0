package failover

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// fakeKernel is a conntrack table behind the Writer interface.
type fakeKernel struct {
	mu    sync.Mutex
	table map[flow.Key]flow.Flow
	calls []int // flows per Commit call
	ages  []time.Duration
	fail  map[flow.Key]unix.Errno // keys whose writes fail
	// blockAfter, when > 0, makes every Commit call after the first
	// blockAfter ones wait for its context to end.
	blockAfter int
	updates    int
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{table: map[flow.Key]flow.Flow{}, fail: map[flow.Key]unix.Errno{}}
}

func (k *fakeKernel) Commit(ctx context.Context, flows []flow.Flow, age []time.Duration) ([]kernel.Result, error) {
	k.mu.Lock()
	block := k.blockAfter > 0 && len(k.calls) >= k.blockAfter
	k.calls = append(k.calls, len(flows))
	k.mu.Unlock()
	if block {
		<-ctx.Done()
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ages = append(k.ages, age...)
	res := make([]kernel.Result, len(flows))
	for i, f := range flows {
		res[i].Key = f.Key
		if err := ctx.Err(); err != nil {
			res[i].Op, res[i].Err = kernel.Failed, &kernel.OpError{Op: "create", Err: err}
			continue
		}
		if e, ok := k.fail[f.Key]; ok {
			res[i].Op, res[i].Err = kernel.Failed, &kernel.OpError{Op: "create", Err: e}
			continue
		}
		old, ok := k.table[f.Key]
		if !ok {
			// The reply tuple is taken by another entry.
			rk := flow.Key{Orig: f.Reply, Family: f.Family, Proto: f.Proto, Zone: f.Zone}
			if _, clash := k.table[rk]; clash {
				res[i].Op, res[i].Err = kernel.Failed, &kernel.OpError{Op: "create", Err: unix.EEXIST}
				continue
			}
		}
		switch {
		case !ok:
			res[i].Op = kernel.Created
		case old.Reply != f.Reply:
			res[i].Op = kernel.Replaced
		default:
			res[i].Op = kernel.Updated
		}
		f.Timeout = max(30, f.Timeout-uint32(age[i]/time.Second))
		k.table[f.Key] = f
	}
	return res, ctx.Err()
}

func (k *fakeKernel) Update(ctx context.Context, flows []flow.Flow) ([]kernel.Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	res := make([]kernel.Result, len(flows))
	for i, f := range flows {
		res[i].Key = f.Key
		if _, ok := k.table[f.Key]; !ok {
			res[i].Op, res[i].Err = kernel.Failed, &kernel.OpError{Op: "update", Err: unix.ENOENT}
			continue
		}
		k.updates++
		res[i].Op = kernel.Updated
		k.table[f.Key] = f
	}
	return res, nil
}

func (k *fakeKernel) Delete(ctx context.Context, keys []flow.Key) ([]kernel.Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	res := make([]kernel.Result, len(keys))
	for i, key := range keys {
		res[i].Key = key
		if _, ok := k.table[key]; !ok {
			res[i].Op, res[i].Err = kernel.Failed, &kernel.OpError{Op: "delete", Err: unix.ENOENT}
			continue
		}
		delete(k.table, key)
		res[i].Op = kernel.Deleted
	}
	return res, nil
}

// noDelete hides the fake's Delete.
type noDelete struct{ Writer }

func (k *fakeKernel) dump(ctx context.Context, fn func(*flow.Flow)) error {
	k.mu.Lock()
	flows := make([]flow.Flow, 0, len(k.table))
	for _, f := range k.table {
		flows = append(flows, f)
	}
	k.mu.Unlock()
	for i := range flows {
		if err := ctx.Err(); err != nil {
			return err
		}
		fn(&flows[i])
	}
	return nil
}

// testFlow is a distinct established TCP flow per i.
func testFlow(i int) flow.Flow {
	o := flow.Tuple{Src: [16]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}, Dst: [16]byte{192, 0, 2, 1},
		SrcPort: uint16(1024 + i%60000), DstPort: 443}
	return flow.Flow{
		Key:    flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP, Orig: o},
		Reply:  o.Invert(flow.ProtoTCP),
		Status: flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured,
		TCP:    flow.TCPInfo{State: flow.TCPEstablished},
		// Timeouts as an established flow idle for i%1000 seconds.
		Timeout: 432000 - uint32(i%1000),
	}
}

// fill applies n flows from origin, flow i idle for idle(i).
func fill(ext *cache.External, origin string, n int, idle func(i int) time.Duration, at time.Time) {
	for i := range n {
		ext.Apply(origin, cache.Change{Flow: testFlow(i), Idle: idle(i)}, at)
	}
}

func TestCommitOrderAndChunks(t *testing.T) {
	const n = 20000
	ext := cache.NewExternal()
	live := map[int]bool{17: true, 4242: true, 9999: true, 15000: true, 19999: true}
	fill(ext, "fw-b", n, func(i int) time.Duration {
		if live[i] {
			return time.Duration(i%7) * time.Millisecond
		}
		return time.Hour + time.Duration(i)*time.Second
	}, time.Now().Add(-3*time.Second))
	k := newFakeKernel()

	rep, err := Commit(context.Background(), ext, k, CommitOptions{FirstChunk: 100})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Flows != n || rep.Created != n || rep.Failed != 0 || rep.Removed != n {
		t.Fatalf("report %+v", rep)
	}
	if ext.Len() != 0 {
		t.Fatalf("external holds %d flows after commit", ext.Len())
	}
	if k.calls[0] != 100 {
		t.Errorf("first chunk %d flows, want 100", k.calls[0])
	}
	for i, c := range k.calls[1:] {
		if c < 100 || c > DefaultMaxChunk {
			t.Errorf("chunk %d: %d flows", i+1, c)
		}
	}
	for i := range live {
		if p := rep.Position(testFlow(i).Key); p < 0 || p >= len(live) {
			t.Errorf("live flow %d at position %d, want < %d", i, p, len(live))
		}
	}
	// The rest is ordered by idleness: flow i idle for 1h+i s.
	order := rep.Order()
	prev := -1
	for _, key := range order[len(live):] {
		i := int(key.Orig.Src[1])<<16 | int(key.Orig.Src[2])<<8 | int(key.Orig.Src[3])
		if i < prev {
			t.Fatalf("flow %d after flow %d: not ordered by idleness", i, prev)
		}
		prev = i
	}
	if rep.Position(testFlow(n+1).Key) != -1 {
		t.Error("Position of a flow not committed is not -1")
	}
	// Ages are the time since receipt (~3 s), and the writer got them.
	for _, a := range k.ages[:10] {
		if a < 3*time.Second || a > 10*time.Second {
			t.Errorf("age %v, want ~3s", a)
		}
	}

	// JSON carries the counts, not the order.
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 1000 || !strings.Contains(string(b), `"created":20000`) {
		t.Errorf("JSON report: %s", b)
	}
	sum := rep.Summary()
	if sum.Order() != nil || sum.Position(testFlow(17).Key) != -1 || sum.Created != rep.Created {
		t.Errorf("summary %+v", sum)
	}
	if sb, _ := json.Marshal(sum); string(sb) != string(b) {
		t.Errorf("summary JSON %s, report JSON %s", sb, b)
	}

	// Again: external is empty, nothing happens.
	rep2, err := Commit(context.Background(), ext, k, CommitOptions{})
	if err != nil || rep2.Flows != 0 || rep2.Committed() != 0 {
		t.Fatalf("second commit: %+v, %v", rep2, err)
	}
	// The same flows again: updated, the table unchanged.
	fill(ext, "fw-b", n, func(int) time.Duration { return 0 }, time.Now())
	rep3, err := Commit(context.Background(), ext, k, CommitOptions{})
	if err != nil || rep3.Updated != n || rep3.Created != 0 || len(k.table) != n {
		t.Fatalf("commit of the same flows: %+v, %v, table %d", rep3, err, len(k.table))
	}
}

func TestCommitSmall(t *testing.T) {
	ext := cache.NewExternal()
	fill(ext, "b", 10, func(i int) time.Duration { return time.Duration(10-i) * time.Second }, time.Now())
	k := newFakeKernel()
	rep, err := Commit(context.Background(), ext, k, CommitOptions{})
	if err != nil || rep.Created != 10 {
		t.Fatalf("%+v %v", rep, err)
	}
	if len(k.calls) != 1 {
		t.Errorf("calls %v, want one", k.calls)
	}
	if p := rep.Position(testFlow(9).Key); p != 0 {
		t.Errorf("least idle flow at %d", p)
	}
}

func TestCommitFailuresStay(t *testing.T) {
	const n = 1000
	ext := cache.NewExternal()
	fill(ext, "b", n, func(i int) time.Duration { return time.Duration(i) * time.Second }, time.Now())
	k := newFakeKernel()
	for i := 0; i < n; i += 10 {
		k.fail[testFlow(i).Key] = unix.EINVAL
	}
	k.fail[testFlow(1).Key] = unix.ENOMEM
	rep, err := Commit(context.Background(), ext, k, CommitOptions{MaxFailures: 5})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 101 || rep.Created != n-101 {
		t.Fatalf("report %+v", rep)
	}
	if len(rep.Failures) != 5 || rep.Errnos["EINVAL"] != 100 || rep.Errnos["ENOMEM"] != 1 {
		t.Errorf("failures %v, errnos %v", rep.Failures, rep.Errnos)
	}
	if !strings.Contains(rep.Failures[0].Error, "invalid argument") || !strings.Contains(rep.Failures[0].Flow, "tcp") {
		t.Errorf("failure %+v", rep.Failures[0])
	}
	if ext.Len() != 101 {
		t.Errorf("external holds %d, want the 101 failed flows", ext.Len())
	}
	// Fixed, they go in on the next commit.
	clear(k.fail)
	rep, err = Commit(context.Background(), ext, k, CommitOptions{})
	if err != nil || rep.Created != 101 || ext.Len() != 0 {
		t.Fatalf("retry: %+v %v, external %d", rep, err, ext.Len())
	}
}

func TestCommitTimeout(t *testing.T) {
	ext := cache.NewExternal()
	fill(ext, "b", 5000, func(i int) time.Duration { return time.Duration(i) * time.Millisecond }, time.Now())
	k := newFakeKernel()
	k.blockAfter = 1 // the first chunk goes in, the second (10*chunkGrowth flows) hangs
	rep, err := Commit(context.Background(), ext, k, CommitOptions{Timeout: 100 * time.Millisecond, FirstChunk: 10, MaxChunk: 100})
	if !errors.Is(err, ErrCommitTimeout) {
		t.Fatalf("err %v, want ErrCommitTimeout", err)
	}
	if rep.Created != 10 || rep.Failed != 4990 || rep.NotTried != 4990-10*chunkGrowth || rep.Errnos["deadline"] != 4990 {
		t.Fatalf("report %+v", rep)
	}
	if ext.Len() != 4990 {
		t.Errorf("external %d, want 4990", ext.Len())
	}
	// The first chunk, the least idle flows, made it.
	for i := range 10 {
		if _, ok := k.table[testFlow(i).Key]; !ok {
			t.Errorf("live flow %d not committed", i)
		}
	}
}

func TestCommitReplyClash(t *testing.T) {
	// A server's reply to the SNAT address reached this node before the
	// commit and left a local entry whose original tuple is the SNATed
	// flow's reply tuple.
	f := testFlow(1)
	f.Reply = flow.Tuple{Src: f.Orig.Dst, Dst: [16]byte{203, 0, 113, 1}, SrcPort: f.Orig.DstPort, DstPort: 61000}
	local := flow.Flow{Key: flow.Key{Orig: f.Reply, Family: f.Family, Proto: f.Proto}, Reply: f.Reply.Invert(f.Proto)}
	for _, withDelete := range []bool{true, false} {
		k := newFakeKernel()
		k.table[local.Key] = local
		ext := cache.NewExternal()
		ext.Apply("b", cache.Change{Flow: f}, time.Now())
		ext.Apply("b", cache.Change{Flow: testFlow(2)}, time.Now())
		var w Writer = k
		if !withDelete {
			w = noDelete{k}
		}
		rep, err := Commit(context.Background(), ext, w, CommitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if withDelete {
			if rep.Created != 2 || rep.Cleared != 1 || rep.Failed != 0 || ext.Len() != 0 {
				t.Errorf("with Delete: %+v, external %d", rep, ext.Len())
			}
			if _, ok := k.table[local.Key]; ok {
				t.Error("the clashing entry is still there")
			}
			continue
		}
		if rep.Created != 1 || rep.Failed != 1 || rep.Errnos["EEXIST"] != 1 || ext.Len() != 1 {
			t.Errorf("without Delete: %+v, external %d", rep, ext.Len())
		}
	}
}

func TestCommitTwoOrigins(t *testing.T) {
	ext := cache.NewExternal()
	old := time.Now().Add(-time.Minute)
	f := testFlow(1)
	ext.Apply("a", cache.Change{Flow: f}, old)
	g := f
	g.Mark = 7
	ext.Apply("c", cache.Change{Flow: g}, time.Now())
	ext.Apply("a", cache.Change{Flow: testFlow(2)}, old)
	k := newFakeKernel()
	rep, err := Commit(context.Background(), ext, k, CommitOptions{})
	if err != nil || rep.Flows != 2 || rep.Created != 2 || rep.Removed != 3 {
		t.Fatalf("%+v %v", rep, err)
	}
	if k.table[f.Key].Mark != 7 {
		t.Errorf("the older origin's entry won")
	}
}

func TestPurge(t *testing.T) {
	k := newFakeKernel()
	for i := range 100 {
		f := testFlow(i)
		if i%2 == 0 {
			f.Timeout = 20
		}
		k.table[f.Key] = f
	}
	own := testFlow(1).Key // e.g. an SSH session to the firewall
	match := func(f *flow.Flow) bool { return f.Key != own }
	rep, err := Purge(context.Background(), k.dump, k, match, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Seen != 100 || rep.Matched != 99 || rep.Capped != 49 || rep.Failed != 0 {
		t.Fatalf("report %+v", rep)
	}
	for key, f := range k.table {
		switch {
		case key == own:
			if f.Timeout != testFlow(1).Timeout {
				t.Errorf("unmatched flow's timeout changed to %d", f.Timeout)
			}
		case f.Timeout > 30:
			t.Errorf("flow %v timeout %d > 30", f.String(), f.Timeout)
		}
	}
	// Again: nothing left to cap.
	rep, err = Purge(context.Background(), k.dump, k, match, 30*time.Second)
	if err != nil || rep.Capped != 0 {
		t.Fatalf("second purge %+v %v", rep, err)
	}
	if _, err := Purge(context.Background(), k.dump, k, match, 0); err == nil {
		t.Error("purge timeout 0 accepted")
	}
}

func TestPurgeGone(t *testing.T) {
	k := newFakeKernel()
	for i := range 10 {
		k.table[testFlow(i).Key] = testFlow(i)
	}
	dump := func(ctx context.Context, fn func(*flow.Flow)) error {
		err := k.dump(ctx, fn)
		delete(k.table, testFlow(3).Key) // expires between dump and update
		return err
	}
	rep, err := Purge(context.Background(), dump, k, func(*flow.Flow) bool { return true }, time.Minute)
	if err != nil || rep.Capped != 9 || rep.Gone != 1 || rep.Failed != 0 {
		t.Fatalf("%+v %v", rep, err)
	}
}

// idleOrder sorts by idleness (in units of 65.5 µs), least idle first,
// ties in index order, like a stable comparison sort, over the whole range
// of durations.
func TestIdleOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 100, 5000} {
		entries := make([]cache.ExternalEntry, n)
		for i := range entries {
			switch i % 4 {
			case 0:
				entries[i].IdleAt = time.Duration(rng.Int64N(int64(48 * time.Hour)))
			case 1:
				entries[i].IdleAt = time.Duration(rng.IntN(4)) // ties
			case 2:
				entries[i].IdleAt = time.Duration(rng.Int64()) // the top bytes
			default:
				entries[i].IdleAt = -time.Second // clock skew: as not idle
			}
		}
		want := make([]int32, n)
		for i := range want {
			want[i] = int32(i)
		}
		key := func(i int32) time.Duration { return max(entries[i].IdleAt, 0) >> 16 } // idleGrain
		slices.SortStableFunc(want, func(a, b int32) int { return cmp.Compare(key(a), key(b)) })
		if got := idleOrder(n, func(i int) time.Duration { return entries[i].IdleAt }); !slices.Equal(got, want) {
			t.Errorf("n=%d: order differs", n)
		}
	}
}
