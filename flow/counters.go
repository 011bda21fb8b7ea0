package flow

import "time"

// Counters are a flow's accounting figures as the kernel reports them in a
// DESTROY event: packets and bytes per direction (CTA_COUNTERS_ORIG/REPLY,
// only with net.netfilter.nf_conntrack_acct=1) and the start and stop times
// (CTA_TIMESTAMP, only with nf_conntrack_timestamp=1). Zero means not
// reported.
type Counters struct {
	OrigPackets, OrigBytes   uint64
	ReplyPackets, ReplyBytes uint64
	// Start and Stop are wall-clock times in Unix nanoseconds.
	Start, Stop int64
	// HaveAcct is set when the kernel reported packet and byte counters.
	HaveAcct bool
}

// Duration is Stop-Start when both times were reported, else 0.
func (c *Counters) Duration() time.Duration {
	if c.Start == 0 || c.Stop == 0 || c.Stop < c.Start {
		return 0
	}
	return time.Duration(c.Stop - c.Start)
}
