package cluster

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// TestExampleConfigs loads the shipped ctsyncd configurations with the
// daemon's own parser (unit tier: no root).
func TestExampleConfigs(t *testing.T) {
	for _, tt := range []struct {
		path      string
		transport string
		peers     int
	}{
		{"../../configs/ctsyncd.toml", "udp", 1},
		{"../../configs/ctsyncd-cluster.toml", "gossip", 2},
	} {
		c, err := config.Load(tt.path)
		if err != nil {
			t.Errorf("%s: %v", tt.path, err)
			continue
		}
		if c.Sync.Transport != tt.transport || len(c.Sync.Peers) != tt.peers {
			t.Errorf("%s: transport %q with %d peers", tt.path, c.Sync.Transport, len(c.Sync.Peers))
		}
		if c.Failover.PurgeTimeout.Duration <= 0 || c.Failover.CommitTimeout.Duration <= 0 {
			t.Errorf("%s: failover %+v", tt.path, c.Failover)
		}
	}
}

// TestHarnessCtsyncdConfig checks that the configs the harness writes for
// ctsyncd on the firewalls pass the daemon's parser.
func TestHarnessCtsyncdConfig(t *testing.T) {
	tp := &Topology{dir: t.TempDir()}
	tp.A = &Firewall{Name: "fw-a", SyncAddr: SyncA, PeerSyncAddr: SyncB, Dir: t.TempDir(), topo: tp}
	for _, transport := range []string{"udp", "multicast", "gossip"} {
		path := tp.A.CtsyncdConfig(t, transport, "[filter]\nprotocols = [\"tcp\", \"udp\"]\n")
		c, err := config.Load(path)
		if err != nil {
			t.Errorf("%s: %v", transport, err)
			continue
		}
		if c.Sync.Transport != transport || c.Control.Socket != tp.A.Socket() || c.Failover.ReadyFile != tp.A.ReadyFile() {
			t.Errorf("%s: %+v", transport, c)
		}
	}
}

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
