//go:build cluster

package cluster

import (
	"testing"
	"time"
)

// TestClusterVRRP is the harness's smoke test and the control run of every
// failover test: keepalived elects fw-a, traffic flows through it, killing
// fw-a moves the VIPs to fw-b, new connections work through fw-b — and,
// with nothing replicated, established TCP streams (both ways, v4 and v6)
// and server-driven UDP streams (v4 and v6) break, because fw-b's forward chain only
// accepts flows its conntrack table knows (tcp_loose=0). A failover test
// with ctsyncd must make exactly these streams survive.
func TestClusterVRRP(t *testing.T) {
	tp := New(t, Options{})
	d := tp.WaitMaster(t, tp.A)
	t.Logf("fw-a master after %v", d.Round(time.Millisecond))

	tcp4 := tp.TCPStream(t, false)
	tcp6 := tp.TCPStream(t, true)
	streams := []*Stream{tcp4, tcp6, tp.UDPStream(t, false), tp.UDPStream(t, true)}
	for _, s := range streams {
		s.WaitFlowing(t)
	}
	if tp.B.HasVIPs(t) {
		t.Fatal("fw-b holds VIPs while fw-a is master")
	}

	killed := tp.KillFirewall(t, tp.A)
	d = tp.WaitMaster(t, tp.B)
	t.Logf("fw-b master %v after fw-a died", d.Round(time.Millisecond))

	// fw-b forwards: new connections through it work, v4 and v6.
	for _, v6 := range []bool{false, true} {
		s := tp.TCPStream(t, v6)
		s.WaitFlowing(t)
		s.Close()
	}

	// The control: what fw-b does not know, it drops.
	for _, s := range streams {
		ok, stall := s.Survived(killed, 5*time.Second)
		if ok {
			t.Errorf("%s survived the failover with nothing replicated (stall %v): the failover tests could not fail", s.Name, stall)
		}
		for _, dir := range s.Directions() {
			st := s.Stats(dir)
			t.Logf("%s %s: %d received, stalled for %v", s.Name, dir, st.Received, st.Stall.Round(time.Millisecond))
		}
	}
	if n := tp.B.Dropped(t); n == 0 {
		t.Error("fw-b dropped nothing: the streams broke elsewhere")
	} else {
		t.Logf("fw-b dropped %d packets of the old streams", n)
	}
}
