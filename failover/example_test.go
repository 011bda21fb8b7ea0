package failover_test

import (
	"context"
	"fmt"

	"github.com/ctsyncd/ctsyncd/failover"
)

// steps stands for the daemon: what each transition does.
type steps struct{}

func (steps) CommitSequence(ctx context.Context) (*failover.Report, error) {
	// failover.Commit(ctx, external, writer, opts), then resync + bulk.
	return &failover.Report{Created: 3}, nil
}
func (steps) BecomeBackup(ctx context.Context) error { return nil }
func (steps) Fault(ctx context.Context) error        { return nil }

// keepalived runs `ctsyncctl keepalived GROUP FW MASTER 150`; the control
// server hands the arguments to the daemon's Coordinator.
func ExampleCoordinator() {
	c := failover.NewCoordinator(steps{}, nil)
	defer c.Close()
	for _, args := range [][]string{
		{"GROUP", "FW", "MASTER", "150"},
		{"INSTANCE", "VI_LAN0", "MASTER", "150"}, // the instance's notify, same transition
		{"INSTANCE", "VI_LAN0", "STOP", "150"},
	} {
		n, err := failover.ParseNotify(args)
		if err != nil {
			fmt.Println(err)
			return
		}
		r, err := c.Handle(context.Background(), n)
		fmt.Println(n, "->", r.Outcome, err)
	}
	// Output:
	// GROUP FW MASTER 150 -> applied <nil>
	// INSTANCE VI_LAN0 MASTER 150 -> duplicate <nil>
	// INSTANCE VI_LAN0 STOP 150 -> ignored <nil>
}
