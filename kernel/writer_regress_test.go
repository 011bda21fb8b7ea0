package kernel

import (
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

func TestTCPBehind(t *testing.T) {
	mk := func(proto, st uint8) *flow.Flow {
		return &flow.Flow{Key: flow.Key{Proto: proto}, TCP: flow.TCPInfo{State: st}}
	}
	tcp := flow.ProtoTCP
	for _, c := range []struct {
		f, cur *flow.Flow
		want   bool
	}{
		{mk(tcp, flow.TCPSynSent), mk(tcp, flow.TCPSynRecv), true},
		{mk(tcp, flow.TCPSynRecv), mk(tcp, flow.TCPEstablished), true},
		{mk(tcp, flow.TCPEstablished), mk(tcp, flow.TCPSynRecv), false},
		{mk(tcp, flow.TCPFinWait), mk(tcp, flow.TCPCloseWait), false},
		{mk(tcp, flow.TCPCloseWait), mk(tcp, flow.TCPFinWait), false},
		{mk(tcp, flow.TCPEstablished), mk(tcp, flow.TCPTimeWait), true},
		{mk(tcp, 0), mk(tcp, flow.TCPEstablished), false},
		{mk(tcp, 42), mk(tcp, flow.TCPEstablished), false},
		{mk(flow.ProtoUDP, 0), mk(flow.ProtoUDP, 0), false},
	} {
		if got := tcpBehind(c.f, c.cur); got != c.want {
			t.Errorf("%s over %s: behind %v, want %v", flow.TCPStateName(c.f.TCP.State), flow.TCPStateName(c.cur.TCP.State), got, c.want)
		}
	}
}
