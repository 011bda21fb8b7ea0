//go:build cluster

package cluster

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/daemontest"
)

// newNoCommitPair is an HA pair with ctsyncd on both firewalls and
// keepalived without a notify hook: a takeover runs no commit. inject sets
// sync.inject.
func newNoCommitPair(t *testing.T, inject bool) *pair {
	t.Helper()
	daemonBin, ctlBin := daemontest.Binaries(t)
	p := &pair{ctlBin: ctlBin, procs: map[string]*Process{}}
	p.Topology = New(t, Options{
		SNAT:      true,
		TrackFile: func(fw *Firewall) string { return fw.ReadyFile() },
		Setup: func(t testing.TB, fw *Firewall) {
			cfg := fw.CtsyncdConfig(t, "udp", "[kernel]\nresync_interval = \"2s\"\n")
			if inject {
				patchSync(t, cfg, "inject = true\n")
			}
			p.procs[fw.Name] = fw.Start(t, "ctsyncd", daemonBin, "--config", cfg)
			daemontest.WaitFor(t, WaitTimeout, fw.Name+"'s ctsyncd to answer", func() (bool, string) {
				_, err := p.run(fw, "status")
				return err == nil, fmt.Sprint(err)
			})
		},
	})
	return p
}

// TestClusterInjectFailover: in inject mode the standby's kernel already
// holds the master's flows, so live TCP and UDP streams (IPv4 and IPv6,
// SNAT) survive a takeover with no commit at all; a `ctsyncctl commit`
// afterwards is harmless. The control, without inject and without a
// commit, must break every stream.
func TestClusterInjectFailover(t *testing.T) {
	for _, inject := range []bool{true, false} {
		name := "inject"
		if !inject {
			name = "control"
		}
		t.Run(name, func(t *testing.T) {
			p := newNoCommitPair(t, inject)
			p.WaitMaster(t, p.A)
			streams := startStreams(t, p.Topology)
			keys := streamFlows(t, p.A)
			p.waitReplicated(t, p.B, keys)
			if inject {
				daemontest.WaitFor(t, WaitTimeout, "fw-b's kernel to hold the streams' flows", func() (bool, string) {
					have := streamFlows(t, p.B)
					missing := 0
					for _, k := range keys {
						if !slices.Contains(have, k) {
							missing++
						}
					}
					return missing == 0, fmt.Sprintf("%d of %d missing", missing, len(keys))
				})
			}
			dead := p.KillFirewall(t, p.A)
			p.WaitMaster(t, p.B)
			if !inject {
				for _, s := range streams {
					if ok, _ := s.Survived(dead, 10*time.Second); ok {
						t.Errorf("%s survived with no commit and no inject: the test cannot fail", s.Name)
					}
				}
				return
			}
			mustSurvive(t, streams, dead, "the takeover by fw-b with no commit")
			var st struct{ Inject json.RawMessage }
			if err := json.Unmarshal([]byte(p.ctl(t, p.B, "--json", "stats")), &st); err != nil {
				t.Fatal(err)
			}
			t.Logf("fw-b inject stats: %s", st.Inject)
			out := p.ctl(t, p.B, "commit")
			t.Logf("commit after the takeover: %s", out)
			mustSurvive(t, streams, time.Now(), "a commit after the takeover")
			if n := len(streamFlows(t, p.B)); n < len(keys) {
				t.Errorf("fw-b's kernel has %d stream flows after the commit, want at least %d", n, len(keys))
			}
		})
	}
}
