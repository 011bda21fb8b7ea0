//go:build cluster

package cluster

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// TestClusterKeepalivedConfig checks configs/keepalived.conf with
// keepalived's own parser, for both nodes, in a namespace that has the
// interfaces it names.
func TestClusterKeepalivedConfig(t *testing.T) {
	netnstest.Need(t, "keepalived")
	ns := netnstest.New(t)
	for _, ifc := range []string{"lan0", "lan1", "sync0"} {
		ns.Exec(t, "ip", "link", "add", ifc, "type", "veth", "peer", "name", ifc+"p")
		ns.Exec(t, "ip", "link", "set", ifc, "up")
	}
	for _, id := range []string{"fw-a", "fw-b"} {
		out, err := ns.Cmd("keepalived", "--config-test", "--use-file", "../../configs/keepalived.conf", "--config-id", id).CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !(isExit(err, &ee)) {
			t.Fatalf("keepalived: %v", err)
		}
		// /usr/sbin/ctsyncctl is not installed on a test machine: that
		// warning is expected, nothing else is.
		var bad []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" && !strings.Contains(line, "ctsyncctl") {
				bad = append(bad, line)
			}
		}
		if len(bad) > 0 || (err != nil && !strings.Contains(string(out), "ctsyncctl")) {
			t.Errorf("keepalived --config-test -i %s: %v\n%s", id, err, out)
		}
	}
}

func isExit(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	*ee = e
	return ok
}
