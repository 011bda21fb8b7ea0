package daemon

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ctsyncd/ctsyncd/failover"
)

// Metrics: most values already exist as the daemon's counters and
// snapshots (what `ctsyncctl stats` prints); the collector reads them at
// scrape time instead of instrumenting the hot paths twice. Only what
// has no snapshot (the commit duration histogram) is observed as it
// happens. docs/metrics.md lists every metric.

const ns = "ctsyncd"

// metrics is the daemon's Prometheus registry and the instruments that are
// observed as things happen.
type metrics struct {
	reg            *prometheus.Registry
	commitDuration prometheus.Histogram
	commitFlows    *prometheus.CounterVec
}

func newMetrics(d *Daemon) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.commitDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: ns, Name: "commit_duration_seconds",
		Help:    "Duration of commits of the external cache into the kernel table.",
		Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120},
	})
	m.commitFlows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "commit_flows_total",
		Help: "Flows committed into the kernel table, by result (created, updated, replaced, failed).",
	}, []string{"result"})
	for _, r := range []string{"created", "updated", "replaced", "failed"} {
		m.commitFlows.WithLabelValues(r)
	}
	m.reg.MustRegister(m.commitDuration, m.commitFlows, &collector{d: d},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// observeCommit records a finished commit.
func (m *metrics) observeCommit(rep *failover.Report) {
	if m == nil || rep == nil {
		return
	}
	m.commitDuration.Observe(rep.Seconds)
	m.commitFlows.WithLabelValues("created").Add(float64(rep.Created))
	m.commitFlows.WithLabelValues("updated").Add(float64(rep.Updated))
	m.commitFlows.WithLabelValues("replaced").Add(float64(rep.Replaced))
	m.commitFlows.WithLabelValues("failed").Add(float64(rep.Failed))
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(ns+"_"+name, help, labels, nil)
}

var (
	dBuildInfo      = desc("build_info", "Always 1; the labels say which ctsyncd runs.", "version", "node")
	dReady          = desc("ready", "1 once the initial dump is done and every live peer's table arrived in bulk (/readyz).")
	dRole           = desc("role", "1 for keepalived's last notified state of this node.", "role")
	dInternalFlows  = desc("internal_flows", "Flows of this node's kernel table held in the internal cache (after filters).")
	dPendingChanges = desc("internal_pending_changes", "Changes of the internal cache waiting to be replicated.")
	dExternalFlows  = desc("external_flows", "Flows peers replicated to this node, by origin node.", "origin")
	dEvents         = desc("kernel_events_total", "Conntrack events received from the kernel, by type (new, update, destroy).", "type")
	dEventsIgnored  = desc("kernel_events_ignored_total", "Kernel events not taken into the cache, by reason (own_write, filtered, malformed).", "reason")
	dOverruns       = desc("kernel_event_overruns_total", "Times the kernel dropped events (ENOBUFS); each forces a resync.")
	dReconciles     = desc("reconciles_total", "Dumps of the kernel table reconciled into the internal cache.")
	dReconFixed     = desc("reconcile_flows_total", "Flows a reconcile had to correct, by action (added, fixed, removed): events that were missed.", "action")
	dLastReconcile  = desc("last_reconcile_timestamp_seconds", "When the last reconcile with the kernel table started (Unix time).")
	dExtApplied     = desc("external_changes_applied_total", "Changes applied to the external cache.")
	dExtBulkRemoved = desc("external_bulk_removed_total", "External flows removed at the end of a bulk transfer (their origin no longer had them).")
	dExtTaken       = desc("external_committed_total", "External flows taken out of the cache by commits.")
	dMsgs           = desc("sync_messages_total", "Sync datagrams, by peer and direction (in, out).", "peer", "direction")
	dBytes          = desc("sync_bytes_total", "Sync datagram bytes, by peer and direction (in, out).", "peer", "direction")
	dFlowsIn        = desc("sync_flows_received_total", "Flow changes received from a peer and applied.", "peer")
	dAcks           = desc("sync_acks_total", "Acknowledgements, by peer and direction (in, out).", "peer", "direction")
	dNacks          = desc("sync_nacks_total", "Negative acknowledgements (loss reports), by peer and direction (in, out).", "peer", "direction")
	dResends        = desc("sync_resends_total", "Messages resent to a peer on its NACKs.", "peer")
	dBulks          = desc("sync_bulk_transfers_total", "Bulk transfers (whole tables), by peer and direction (sent, received).", "peer", "direction")
	dFullResyncs    = desc("sync_full_resyncs_total", "Gaps no NACK could repair, answered by a bulk.", "peer")
	dGapsSkipped    = desc("sync_gaps_skipped_total", "Gaps skipped because a bulk superseded them.", "peer")
	dDrops          = desc("sync_drops_total", "Sync datagrams dropped unapplied, by peer (or address) and reason.", "peer", "reason")
	dPeerUp         = desc("sync_peer_up", "1 while the peer has been heard from within sync.peer_timeout.", "peer")
	dPeerSeen       = desc("sync_peer_last_seen_age_seconds", "Seconds since the last authenticated datagram from the peer.", "peer")
	dLag            = desc("sync_replication_lag_seconds", "Age of the oldest message of this node the peer has not acknowledged.", "peer")
	dPending        = desc("sync_pending_messages", "Messages of this node the peer has not acknowledged.", "peer")
	dPeerRisk       = desc("sync_peer_flows_at_risk", "Flows of this node the peer has not acknowledged.", "peer")
	dAtRisk         = desc("flows_at_risk", "Flows of this node at least one known peer does not hold yet: what a takeover would lose now.")
	dQueue          = desc("sync_resend_queue_messages", "Sent messages kept for retransmission.")
	dLastSeq        = desc("sync_last_sequence", "Last sequence number of this node's replication stream.")
	dDigestsSent    = desc("sync_digest_rounds_total", "Digest rounds (this node's table summarized to its peers) sent.")
	dDigestBytes    = desc("sync_digest_bytes_total", "Bytes of digest datagrams sent.")
	dDigestsChecked = desc("sync_digests_checked_total", "Peers' digests compared with what this node holds of them, by origin.", "origin")
	dDriftBuckets   = desc("drift_buckets_total", "Digest buckets found to differ from their origin, by origin.", "origin")
	dDriftRepairs   = desc("drift_repairs_total", "Drift repairs that changed this node's copy of an origin's flows, by origin.", "origin")
	dDriftFlows     = desc("drift_repaired_flows_total", "Flows added, fixed or removed by drift repairs, by origin.", "origin")
	dDriftBulks     = desc("drift_bulk_requests_total", "Drifts too large for bucket repair, answered by asking the origin for a bulk.", "origin")
	dIntExpects     = desc("internal_expectations", "Conntrack expectations of this node held in the internal expectation cache.")
	dExtExpects     = desc("external_expectations", "Conntrack expectations peers replicated to this node.")
	dExpEvents      = desc("kernel_expectation_events_total", "Expectation events from the kernel, by type (new, destroy, own_write, filtered).", "type")
	dLinkUp         = desc("sync_link_up", "1 while a datagram arrived on the sync link within sync.peer_timeout (redundant links only).", "link")
	dLinkBytes      = desc("sync_link_bytes_total", "Bytes on a sync link, by direction (in, out).", "link", "direction")
	dLinkErrors     = desc("sync_link_send_errors_total", "Failed sends on a sync link.", "link")
	dDigestSeconds  = desc("sync_digest_last_duration_seconds", "CPU time of the last digest computation of this node's table.")
)

// collector reads the daemon's counters at scrape time.
type collector struct{ d *Daemon }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dBuildInfo, dReady, dRole, dInternalFlows, dPendingChanges, dExternalFlows,
		dEvents, dEventsIgnored, dOverruns, dReconciles, dReconFixed, dLastReconcile, dExtApplied, dExtBulkRemoved,
		dExtTaken, dMsgs, dBytes, dFlowsIn, dAcks, dNacks, dResends, dBulks, dFullResyncs, dGapsSkipped, dDrops,
		dPeerUp, dPeerSeen, dLag, dPending, dPeerRisk, dAtRisk, dQueue, dLastSeq, dDigestsSent, dDigestBytes,
		dDigestsChecked, dDriftBuckets, dDriftRepairs, dDriftFlows, dDriftBulks, dDigestSeconds,
		dIntExpects, dExtExpects, dExpEvents, dLinkUp, dLinkBytes, dLinkErrors} {
		ch <- d
	}
	for _, d := range aaDescs {
		ch <- d
	}
	for _, d := range policyDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	gauge(dBuildInfo, 1, d.version, d.cfg.Node.Name)
	gauge(dReady, b2f(d.ops.ready.Load()))
	if st := d.coord.State(); st != "" {
		gauge(dRole, 1, string(st))
	}
	is := d.internal.Stats()
	gauge(dInternalFlows, float64(is.Flows))
	gauge(dPendingChanges, float64(is.Dirty))
	ls := d.listener.Stats()
	counter(dEvents, d.evNew.Load(), "new")
	counter(dEvents, d.evUpdate.Load(), "update")
	counter(dEvents, d.evDestroy.Load(), "destroy")
	counter(dEventsIgnored, d.evOwn.Load()+ls.Own, "own_write")
	counter(dEventsIgnored, d.evFiltered.Load(), "filtered")
	counter(dEventsIgnored, ls.Malformed, "malformed")
	counter(dOverruns, ls.Overruns)
	counter(dReconciles, is.Reconciles)
	counter(dReconFixed, is.ReconAdded, "added")
	counter(dReconFixed, is.ReconFixed, "fixed")
	counter(dReconFixed, is.ReconGone, "removed")
	if r := d.lastRec.Load(); r != nil {
		gauge(dLastReconcile, float64(r.At.UnixNano())/1e9)
	}
	if d.iexp != nil {
		gauge(dIntExpects, float64(d.iexp.Len()))
		counter(dExpEvents, d.evExpNew.Load(), "new")
		counter(dExpEvents, d.evExpDestroy.Load(), "destroy")
		counter(dExpEvents, d.evExpOwn.Load(), "own_write")
		counter(dExpEvents, d.evExpFiltered.Load(), "filtered")
		if d.external != nil {
			gauge(dExtExpects, float64(d.external.ExpectLen()))
		}
	}
	d.collectActiveActive(ch)
	if d.node == nil {
		return
	}
	d.collectPolicy(ch)
	if d.links != nil {
		for _, l := range d.links.Status() {
			gauge(dLinkUp, b2f(l.Up), l.Name)
			counter(dLinkBytes, l.BytesIn, l.Name, "in")
			counter(dLinkBytes, l.BytesOut, l.Name, "out")
			counter(dLinkErrors, l.SendErrors, l.Name)
		}
	}
	es := d.external.Stats()
	for origin, n := range d.external.ByOrigin() {
		gauge(dExternalFlows, float64(n), origin)
	}
	counter(dExtApplied, es.Applied)
	counter(dExtBulkRemoved, es.BulkRemoved)
	counter(dExtTaken, es.Taken)
	risk := d.node.AtRisk()
	gauge(dAtRisk, float64(risk.Total))
	now := time.Now()
	for name, p := range d.node.Stats() {
		peer := name
		counter(dMsgs, p.MsgsIn, peer, "in")
		counter(dMsgs, p.MsgsOut, peer, "out")
		counter(dBytes, p.BytesIn, peer, "in")
		counter(dBytes, p.BytesOut, peer, "out")
		dr := p.Drops
		for _, x := range []struct {
			r string
			n uint64
		}{{"auth", dr.Auth}, {"malformed", dr.Malformed}, {"replay", dr.Replay}, {"old_epoch", dr.OldEpoch},
			{"unverified", dr.Unverified}, {"duplicate", dr.Duplicate}, {"window", dr.Window}} {
			counter(dDrops, x.n, peer, x.r)
		}
		if p.Name == "" {
			continue // a sender not identified: only traffic and drops
		}
		counter(dFlowsIn, p.FlowsIn, peer)
		counter(dAcks, p.AcksIn, peer, "in")
		counter(dAcks, p.AcksOut, peer, "out")
		counter(dNacks, p.NacksIn, peer, "in")
		counter(dNacks, p.NacksOut, peer, "out")
		counter(dResends, p.Resends, peer)
		counter(dBulks, p.BulksSent, peer, "sent")
		counter(dBulks, p.BulksReceived, peer, "received")
		counter(dFullResyncs, p.FullResyncs, peer)
		counter(dGapsSkipped, p.GapsSkipped, peer)
		gauge(dPeerUp, b2f(p.Up), peer)
		if !p.LastSeen.IsZero() {
			gauge(dPeerSeen, now.Sub(p.LastSeen).Seconds(), peer)
		}
		gauge(dLag, p.Lag.Seconds(), peer)
		gauge(dPending, float64(p.Pending), peer)
		gauge(dPeerRisk, float64(risk.ByPeer[name]), peer)
	}
	st := d.node.Status()
	gauge(dQueue, float64(st.Queued))
	gauge(dLastSeq, float64(st.LastSeq))
	ds := d.node.DriftStats()
	counter(dDigestsSent, ds.RoundsSent)
	counter(dDigestBytes, ds.BytesSent)
	gauge(dDigestSeconds, ds.LastDigestSeconds)
	for origin, o := range ds.ByOrigin {
		counter(dDigestsChecked, o.Checked, origin)
		counter(dDriftBuckets, o.Buckets, origin)
		counter(dDriftRepairs, o.Repairs, origin)
		counter(dDriftFlows, o.Flows, origin)
		counter(dDriftBulks, o.BulkRequests, origin)
	}
}
