package kernel

import (
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

func TestTimeoutPolicy(t *testing.T) {
	p := TimeoutPolicy()
	est := flow.TCPInfo{State: flow.TCPEstablished}
	tests := []struct {
		name string
		f    flow.Flow
		want uint32
	}{
		{"busy TCP with unacknowledged data", flow.Flow{Key: flow.Key{Proto: flow.ProtoTCP}, TCP: est, Timeout: 299}, 300},
		{"idle TCP, an hour", flow.Flow{Key: flow.Key{Proto: flow.ProtoTCP}, TCP: est, Timeout: 428400}, 432000},
		{"TCP just refreshed", flow.Flow{Key: flow.Key{Proto: flow.ProtoTCP}, TCP: est, Timeout: 432000}, 432000},
		{"TCP time_wait", flow.Flow{Key: flow.Key{Proto: flow.ProtoTCP}, TCP: flow.TCPInfo{State: flow.TCPTimeWait}, Timeout: 100}, 120},
		{"UDP unreplied", flow.Flow{Key: flow.Key{Proto: flow.ProtoUDP}, Timeout: 25}, 30},
		{"UDP stream", flow.Flow{Key: flow.Key{Proto: flow.ProtoUDP}, Timeout: 100}, 120},
		{"ICMP", flow.Flow{Key: flow.Key{Proto: flow.ProtoICMP}, Timeout: 10}, 30},
		{"above every known value", flow.Flow{Key: flow.Key{Proto: flow.ProtoUDP}, Timeout: 5000}, 5000},
	}
	for _, tt := range tests {
		if got := p(&tt.f); got != tt.want {
			t.Errorf("%s: %d, want %d (sysctls at their defaults)", tt.name, got, tt.want)
		}
	}
}
