package daemon

import "github.com/prometheus/client_golang/prometheus"

// Metrics of inject mode and first-packet defer (docs/active-active.md),
// read from the same counters as `ctsyncctl stats`.
var (
	dDeferPackets = desc("defer_packets_total", "First packets taken from the defer queue, by outcome (acked_in_time, timed_out, peer_lost, no_peer, passed).", "outcome")
	dDeferPending = desc("defer_pending_packets", "First packets held now, waiting for the peers' acknowledgement or the timeout.")
	dDeferHold    = desc("defer_hold_seconds_total", "Time deferred packets were held, summed; divide by the released ones for the mean.")
	dInjectFlows  = desc("inject_changes_total", "Replicated changes in inject mode, by result (written, kept, deleted, kept_local, failed, coalesced, urgent).", "result")
	dInjectQueue  = desc("inject_pending_changes", "Replicated changes waiting to be written into the kernel.")
)

var aaDescs = []*prometheus.Desc{dDeferPackets, dDeferPending, dDeferHold, dInjectFlows, dInjectQueue}

// collectActiveActive adds the inject and defer metrics, when those run.
func (d *Daemon) collectActiveActive(ch chan<- prometheus.Metric) {
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	if df := d.deferrer; df != nil {
		s := df.stats()
		for _, o := range []struct {
			name string
			v    uint64
		}{{"acked_in_time", s.Acked}, {"timed_out", s.TimedOut}, {"peer_lost", s.PeerLost}, {"no_peer", s.NoPeer}, {"passed", s.Passed}} {
			counter(dDeferPackets, float64(o.v), o.name)
		}
		ch <- prometheus.MustNewConstMetric(dDeferPending, prometheus.GaugeValue, float64(s.Pending))
		counter(dDeferHold, float64(df.holdNanos.Load())/1e9)
	}
	if in := d.inject; in != nil {
		s := in.stats()
		for _, o := range []struct {
			name string
			v    uint64
		}{{"written", s.Written}, {"kept", s.Kept}, {"deleted", s.Deleted}, {"kept_local", s.KeptLocal},
			{"failed", s.Failed}, {"coalesced", s.Coalesced}, {"urgent", s.Urgent}} {
			counter(dInjectFlows, float64(o.v), o.name)
		}
		ch <- prometheus.MustNewConstMetric(dInjectQueue, prometheus.GaugeValue, float64(s.Pending))
	}
}
