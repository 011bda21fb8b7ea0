package failover

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteReady writes the readiness file that keepalived's track_file reads:
// "0\n" when this node is ready (its initial bulk sync is complete) and
// "1\n" when it is not. The file is replaced atomically (a temporary file
// in the same directory, then rename), so keepalived never reads a partial
// value.
//
// keepalived multiplies the number in the file by the track_file's weight
// and adds the product to the priority. With a negative weight, e.g.
//
//	track_file ctsyncd_ready {
//		file "/run/ctsyncd/ready"
//		weight -50
//		init_file 1       # not ready until ctsyncd says so
//	}
//
// referenced from the vrrp_sync_group (with sync_group_tracking_weight) or
// from each vrrp_instance, a node that is not in sync runs 50 below its
// configured priority: it loses the election to an in-sync peer, yet a lone
// survivor still becomes master. Never use weight 0: keepalived then treats
// any non-zero value as a failure and forces FAULT, so a node that could
// not sync (its peer died first) would never take over.
func WriteReady(path string, ready bool) error {
	val := "1\n"
	if ready {
		val = "0\n"
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("failover: ready file: %w", err)
	}
	tmp := f.Name()
	_, err = f.WriteString(val)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("failover: ready file: %w", err)
	}
	return nil
}
