// Package kernel is the only package of ctsyncd that speaks netlink. It reads
// the conntrack table (streamed dumps) and its events (a raw netlink socket,
// so that each event keeps the port id of the socket that caused it), and
// converts between the kernel's flows and package flow's compact record.
//
// It is not a cache and keeps no state of its own beyond its sockets. Other
// packages see it through small interfaces declared where they are used, so
// that they are tested with fakes and without root.
//
// Concurrency: a Listener is read by one goroutine (Run) and may be closed
// from any other; Close interrupts a blocked read. Dump opens its own socket
// and may run concurrently with a Listener.
package kernel
