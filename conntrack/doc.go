// Package conntrack is ctsyncd's public Go library for the Linux connection
// tracking table: list, search, count, watch, create, update and delete
// conntrack entries of the current or of a named network namespace, as
// conntrack(8) does, without a daemon.
//
// It is a thin, documented layer over package kernel, the one netlink codec
// ctsyncd has (the same zero-allocation decoder and batched encoder the
// daemon uses): a flow is a [flow.Flow], aliased here as [Flow].
//
//	h, err := conntrack.Open(conntrack.Options{})        // current namespace
//	defer h.Close()
//	f, _ := conntrack.ParseFilter([]string{"-p", "tcp", "--dport", "22"})
//	for fl, err := range h.List(ctx, f) { ... }          // streamed, flat memory
//	n, err := h.DeleteMatching(ctx, f)                    // batched deletes
//
// A [Filter] selects flows by family, protocol, original and reply
// addresses (CIDRs), ports, ICMP type/code/id, TCP state, status bits, mark
// with mask, zone, labels and helper. Its parsers take conntrack(8)'s option
// names ([ParseFilter]) or key=value pairs ([ParseFilterValues], as in an
// HTTP query). Whatever the kernel can filter itself (family, mark, status,
// zone and exact tuple fields, depending on its version; probed once per
// process) is pushed into the dump request; everything is checked again in
// user space, so results never depend on the kernel's version.
//
// Kernel versions: listing, get, create, update, delete, flush, events and
// statistics work on any kernel with ctnetlink (Linux 3.x and later);
// kernel-side filtering needs Linux 3.1 (mark), 4.20 (family), 5.10
// (CTA_FILTER: IPv4 addresses, protocol, ports, ICMP fields; IPv6 addresses
// are filtered here, as the kernel compares them inverted), 5.15 (status) and
// 6.8 (zone); on older kernels the same filters run in user space.
//
// Concurrency: a [Handle] may be used from several goroutines; each
// operation opens what it needs (List and Watch their own sockets), so a
// long listing does not block a delete. Nothing is cached between calls.
package conntrack
