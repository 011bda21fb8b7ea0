package daemon

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/flow"
)

// The defer and inject counters reach the metrics.
func TestMetricsActiveActive(t *testing.T) {
	q := &fakeQueue{}
	df := newTestDeferrer(q, &fakeSender{up: 1, ack: true}, time.Hour, 10)
	df.packet(pkt(1, testTCP(1, flow.TCPSynSent)))
	k := &fakeInjectKernel{table: map[flow.Key]flow.Flow{}}
	in := newInjector(k, slog.New(slog.DiscardHandler), 0, nil)
	in.applied("fw-a", []cache.Change{{Flow: testTCP(2, flow.TCPSynSent)}}, true)
	d := &Daemon{deferrer: df, inject: in}
	ch := make(chan prometheus.Metric, 64)
	d.collectActiveActive(ch)
	close(ch)
	got := map[string]float64{}
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		name := m.Desc().String()
		name = name[strings.Index(name, `"`)+1:]
		name = name[:strings.Index(name, `"`)]
		for _, l := range pb.Label {
			name += "/" + l.GetValue()
		}
		switch {
		case pb.Counter != nil:
			got[name] = pb.Counter.GetValue()
		case pb.Gauge != nil:
			got[name] = pb.Gauge.GetValue()
		}
	}
	for name, want := range map[string]float64{
		"ctsyncd_defer_packets_total/acked_in_time": 1, "ctsyncd_defer_packets_total/timed_out": 0,
		"ctsyncd_defer_pending_packets": 0, "ctsyncd_inject_changes_total/written": 1,
		"ctsyncd_inject_changes_total/urgent": 1, "ctsyncd_inject_pending_changes": 0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
}
