package cluster

import (
	"testing"

	"github.com/ctsyncd/ctsyncd/config"
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
