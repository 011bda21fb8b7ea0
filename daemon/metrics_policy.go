package daemon

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the sync policy (docs/sync-policy.md): the ruleset guard,
// delayed sync and the flow log.
var (
	dRulesetSame    = desc("ruleset_same", "1 while no live peer's nftables ruleset digest differs from this node's (failover.ruleset_interval).")
	dRulesetDiffers = desc("ruleset_differing_parts", "Tables, chains and sets of the ruleset that differ from the peer's (0 when the same).", "peer")
	dMinAgeWaiting  = desc("min_age_waiting_flows", "New flows not replicated yet because they are younger than sync.min_age.")
	dMinAgeNever    = desc("min_age_never_sent_total", "Flows destroyed before sync.min_age: neither they nor their destroys were sent.")
	dFlowLogLines   = desc("flow_log_lines_total", "Lines written to the flow log (log.flows), and lines lost to write errors.", "result")
)

var policyDescs = []*prometheus.Desc{dRulesetSame, dRulesetDiffers, dMinAgeWaiting, dMinAgeNever, dFlowLogLines}

// collectPolicy adds the sync policy metrics of what is configured.
func (d *Daemon) collectPolicy(ch chan<- prometheus.Metric) {
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	if rs := d.rulesetStatus(); rs != nil {
		same := 0.0
		if rs.Same {
			same = 1
		}
		gauge(dRulesetSame, same)
		for peer, info := range d.node.PeerInfo() {
			if len(info.Ruleset) > 0 {
				gauge(dRulesetDiffers, float64(len(rs.Differ[peer])), peer)
			}
		}
	}
	if d.cfg.Sync.MinAge.Duration > 0 && d.internal != nil {
		is := d.internal.Stats()
		gauge(dMinAgeWaiting, float64(is.Young))
		counter(dMinAgeNever, is.NeverSent)
	}
	if d.flowLog != nil {
		lines, errs := d.flowLog.Stats()
		counter(dFlowLogLines, lines, "written")
		counter(dFlowLogLines, errs, "lost")
	}
}
