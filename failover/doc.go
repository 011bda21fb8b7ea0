// Package failover is what an HA node does when keepalived moves the virtual
// addresses: Commit writes the flows peers replicated (the external cache)
// into this node's kernel, traffic-carrying flows first, before a takeover's
// first retransmissions arrive; Purge caps the kernel timeouts of the flows
// this node no longer owns after it loses mastership; ParseNotify and
// Coordinator turn keepalived's notify calls, which may overlap and arrive
// out of order, into one transition at a time, the newest winning; and
// WriteReady maintains the file keepalived's track_file reads so that a node
// that has not finished its initial sync runs at a lower priority.
//
// Package failover is not a kernel adapter and not a sync transport: it
// sees the kernel through the small Writer interface and DumpFunc (satisfied
// by *kernel.Writer and kernel.Dump), and the rest of the daemon through the
// Actions interface, so that its logic is tested without root. It does not
// talk to keepalived either: the daemon's control server passes the notify
// arguments that `ctsyncctl keepalived TYPE NAME STATE [PRIORITY]` received.
//
// Concurrency: Commit and Purge are plain functions that may run
// concurrently with updates of the external cache (its methods are safe for
// concurrent use); the caller must not run two of them at once against the
// same kernel, which is what Coordinator is for. A Coordinator's methods are
// safe for concurrent use; it runs at most one action at a time on a
// goroutine it owns, which Close stops and waits for.
package failover
