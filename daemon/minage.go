package daemon

import (
	"context"
	"time"
)

// promoteAged releases flows that reached [sync] min_age to replication. It
// wakes when the oldest waiting flow comes of age, and at least every
// min_age otherwise (new flows are at least min_age away from it).
func (d *Daemon) promoteAged(ctx context.Context) error {
	minAge := d.cfg.Sync.MinAge.Duration
	t := time.NewTimer(minAge)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		next := d.internal.PromoteAged()
		if next <= 0 || next > minAge {
			next = minAge
		}
		t.Reset(max(next, 100*time.Millisecond))
	}
}
