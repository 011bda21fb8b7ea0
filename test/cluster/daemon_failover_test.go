//go:build cluster

package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// pair is an HA pair with ctsyncd running on the firewalls that sync is
// true for, and keepalived's notify hook `ctsyncctl keepalived`.
type pair struct {
	*Topology
	ctlBin string
	procs  map[string]*Process
}

func newPair(t *testing.T, transport string, sync map[string]bool) *pair {
	t.Helper()
	daemonBin, ctlBin := daemontest.Binaries(t)
	p := &pair{ctlBin: ctlBin, procs: map[string]*Process{}}
	p.Topology = New(t, Options{
		SNAT: true,
		Notify: func(fw *Firewall) string {
			return fmt.Sprintf("%s --socket %s keepalived", ctlBin, fw.Socket())
		},
		TrackFile: func(fw *Firewall) string { return fw.ReadyFile() },
		Setup: func(t testing.TB, fw *Firewall) {
			if !sync[fw.Name] {
				return
			}
			cfg := fw.CtsyncdConfig(t, transport, "[kernel]\nresync_interval = \"2s\"\n")
			p.procs[fw.Name] = fw.Start(t, "ctsyncd", daemonBin, "--config", cfg)
			daemontest.WaitFor(t, WaitTimeout, fw.Name+"'s ctsyncd to answer", func() (bool, string) {
				_, err := p.run(fw, "status")
				return err == nil, fmt.Sprint(err)
			})
		},
	})
	return p
}

// run runs ctsyncctl against fw's daemon.
func (p *pair) run(fw *Firewall, args ...string) (string, error) {
	out, err := fw.NS.Cmd(append([]string{p.ctlBin, "--socket", fw.Socket()}, args...)...).CombinedOutput()
	return string(out), err
}

func (p *pair) ctl(t testing.TB, fw *Firewall, args ...string) string {
	t.Helper()
	out, err := p.run(fw, args...)
	if err != nil {
		t.Fatalf("%s: ctsyncctl %s: %v\n%s", fw.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// streamFlows returns the keys of the TCP and UDP flows fw's kernel tracks
// between the client and the server: the streams'.
func streamFlows(t testing.TB, fw *Firewall) []flow.Key {
	t.Helper()
	var keys []flow.Key
	err := kernel.Dump(context.Background(), kernel.DumpOptions{NetNS: fw.NS.FD(t)}, func(f *flow.Flow) {
		src := f.SrcAddr().String()
		if (f.Proto == flow.ProtoTCP || f.Proto == flow.ProtoUDP) && (src == ClientV4 || src == ClientV6 || src == ServerV4 || src == ServerV6) {
			keys = append(keys, f.Key)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// waitReplicated waits until to's external cache holds every key.
func (p *pair) waitReplicated(t testing.TB, to *Firewall, keys []flow.Key) {
	t.Helper()
	daemontest.WaitFor(t, WaitTimeout, to.Name+" to receive the streams' flows", func() (bool, string) {
		ext := p.ctl(t, to, "dump", "external")
		missing := 0
		for _, k := range keys {
			f := flow.Flow{Key: k}
			needle := fmt.Sprintf("src=%s dst=%s sport=%d dport=%d", f.SrcAddr(), f.DstAddr(), k.Orig.SrcPort, k.Orig.DstPort)
			if !strings.Contains(ext, needle) {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d missing", missing, len(keys))
	})
}

func startStreams(t *testing.T, tp *Topology) []*Stream {
	streams := []*Stream{tp.TCPStream(t, false), tp.TCPStream(t, true), tp.UDPStream(t, false), tp.UDPStream(t, true)}
	for _, s := range streams {
		s.WaitFlowing(t)
	}
	return streams
}

// mustSurvive checks that every stream carried traffic again within 20 s
// of since, and logs the longest stall each had in its whole life.
func mustSurvive(t *testing.T, streams []*Stream, since time.Time, what string) {
	t.Helper()
	for _, s := range streams {
		ok, stall := s.Survived(since, 20*time.Second)
		if !ok {
			t.Errorf("%s broke on %s", s.Name, what)
			continue
		}
		t.Logf("%s survived %s; longest stall so far %v", s.Name, what, stall.Round(time.Millisecond))
	}
}

// TestClusterDaemonFailover: ctsyncd on both firewalls, keepalived's notify
// hook `ctsyncctl keepalived`, SNAT to the server-side VIP. TCP streams
// (both directions, IPv4 and IPv6) and server-driven UDP streams survive
// fw-a's death, and survive again when fw-a returns and takes back over
// (fail-back within purge_timeout). The control run, with no ctsyncd on
// fw-b, must break every stream.
func TestClusterDaemonFailover(t *testing.T) {
	for _, transport := range []string{"udp", "multicast"} {
		t.Run(transport, func(t *testing.T) {
			p := newPair(t, transport, map[string]bool{"fw-a": true, "fw-b": true})
			p.WaitMaster(t, p.A)
			streams := startStreams(t, p.Topology)
			p.waitReplicated(t, p.B, streamFlows(t, p.A))

			dead := p.KillFirewall(t, p.A)
			p.WaitMaster(t, p.B)
			mustSurvive(t, streams, dead, "the failover to fw-b")
			t.Logf("fw-b after the takeover:\n%s", p.ctl(t, p.B, "status"))

			// Fail back: fw-a returns (its ctsyncd ran on, cut off), gets
			// fw-b's table, and takes the VIPs back with its higher priority.
			p.Revive(t, p.A)
			p.waitReplicated(t, p.A, streamFlows(t, p.B))
			back := time.Now()
			p.WaitMaster(t, p.A)
			mustSurvive(t, streams, back, "the fail-back to fw-a")
		})
	}
}

// TestClusterDaemonFailoverControl is the control run: ctsyncd only on
// fw-a, none on fw-b. Every stream must break when fw-a dies.
func TestClusterDaemonFailoverControl(t *testing.T) {
	p := newPair(t, "udp", map[string]bool{"fw-a": true})
	p.WaitMaster(t, p.A)
	streams := startStreams(t, p.Topology)
	dead := p.KillFirewall(t, p.A)
	p.WaitMaster(t, p.B)
	for _, s := range streams {
		if ok, _ := s.Survived(dead, 10*time.Second); ok {
			t.Errorf("%s survived without ctsyncd on fw-b: the test cannot fail", s.Name)
		}
	}
}
