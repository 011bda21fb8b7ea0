//go:build kernel

package kernel

import (
	"context"
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// TestKernelCommitKeepNewerTCP: with KeepNewerTCP, a commit of a TCP flow
// in SYN_SENT leaves the kernel's ESTABLISHED entry alone (Kept); a later
// state still updates it; without the option the entry goes back.
func TestKernelCommitKeepNewerTCP(t *testing.T) {
	ns := netnstest.New(t)
	ctx := context.Background()
	f := tcpTestFlow()
	for _, keep := range []bool{true, false} {
		w := newTestWriter(t, ns, WriterOptions{KeepNewerTCP: keep})
		est := f
		est.TCP.State = flow.TCPEstablished
		est.Status |= flow.StatusSeenReply | flow.StatusAssured
		if _, err := w.Commit(ctx, []flow.Flow{est}, nil); err != nil {
			t.Fatal(err)
		}
		syn := f
		syn.TCP.State = flow.TCPSynSent
		res, err := w.Commit(ctx, []flow.Flow{syn}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := dumpTable(t, ns)[f.Key].TCP.State
		want, wantOp := flow.TCPEstablished, Kept
		if !keep {
			want, wantOp = flow.TCPSynSent, Updated
		}
		if res[0].Op != wantOp || got != want {
			t.Errorf("keep=%v: op %v, kernel state %s; want %v, %s", keep, res[0].Op, flow.TCPStateName(got), wantOp, flow.TCPStateName(want))
		}
		fin := f
		fin.TCP.State = flow.TCPFinWait
		fin.Status = est.Status
		if res, err := w.Commit(ctx, []flow.Flow{fin}, nil); err != nil || res[0].Op != Updated {
			t.Errorf("keep=%v: later state: %v %v", keep, res[0].Op, err)
		}
		if _, err := w.Delete(ctx, []flow.Key{f.Key}); err != nil {
			t.Fatal(err)
		}
	}
}

func tcpTestFlow() flow.Flow {
	for i := 0; ; i++ {
		if f := testFlow(i); f.Proto == flow.ProtoTCP && !f.NATed() && f.Family == flow.FamilyIPv4 {
			f.Extra = nil
			return f
		}
	}
}
