package conntrack

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// Errors of a Handle's operations. Kernel errors are *kernel.OpError values
// wrapping the errno: errors.Is(err, unix.EPERM) works; a missing entry
// matches both ErrNotFound and unix.ENOENT, an existing one ErrExists and
// unix.EEXIST.
var (
	ErrNotFound = errors.New("no such conntrack entry")
	ErrExists   = errors.New("conntrack entry exists")
	// ErrOverrun is the error value Watch yields when the kernel dropped
	// events (ENOBUFS); the watch goes on, but changes were missed.
	ErrOverrun = fmt.Errorf("conntrack events lost: %w", kernel.ErrOverrun)
)

// bothErr matches a sentinel of this package and the kernel's error.
type bothErr struct {
	sentinel error
	err      error
}

func (e *bothErr) Error() string   { return e.err.Error() }
func (e *bothErr) Unwrap() []error { return []error{e.sentinel, e.err} }

func wrapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOENT):
		return &bothErr{ErrNotFound, err}
	case errors.Is(err, unix.EEXIST):
		return &bothErr{ErrExists, err}
	}
	return err
}

// Options configure Open.
type Options struct {
	// NetNS is the network namespace whose table to use: a name under
	// /run/netns (as `ip netns add` makes) or a path to a namespace file
	// (/proc/PID/ns/net). Empty means the calling process's namespace.
	NetNS string
	// DeleteBatch is the number of deletes DeleteMatching sends per system
	// call; 0 means kernel.DefaultWriterBatch.
	DeleteBatch int
}

// Handle is an open conntrack table. Its methods may be called from
// several goroutines. Close it when done.
type Handle struct {
	opts  Options
	nsfd  int // 0: the calling thread's namespace
	table *kernel.Table

	// mu guards writer, opened by the first batched operation.
	mu     sync.Mutex
	writer *kernel.Writer
}

// Open opens the conntrack table of the current or a named namespace.
// It needs CAP_NET_ADMIN in that namespace.
func Open(opts Options) (*Handle, error) {
	h := &Handle{opts: opts}
	if opts.NetNS != "" {
		path := opts.NetNS
		if !strings.Contains(path, "/") {
			path = "/run/netns/" + path
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", opts.NetNS, err)
		}
		h.nsfd = fd
	}
	t, err := kernel.OpenTable(kernel.TableOptions{NetNS: h.nsfd})
	if err != nil {
		h.closeNS()
		return nil, fmt.Errorf("open conntrack table: %w", err)
	}
	h.table = t
	return h, nil
}

func (h *Handle) closeNS() {
	if h.nsfd > 0 {
		unix.Close(h.nsfd)
		h.nsfd = 0
	}
}

// Close closes the handle's sockets. List and Watch run on sockets of their
// own, which their context (or the end of the loop) closes. Safe to call
// twice.
func (h *Handle) Close() error {
	err := h.table.Close()
	h.mu.Lock()
	if h.writer != nil {
		if werr := h.writer.Close(); err == nil {
			err = werr
		}
		h.writer = nil
	}
	h.mu.Unlock()
	h.closeNS()
	return err
}

// errStop ends a dump when the consumer of an iterator stops.
var errStop = errors.New("stop")

// List streams the flows that match f. The *Flow is reused: it is valid
// until the loop body returns (copy it to keep it). Memory stays flat
// whatever the table's size. Filters the kernel supports are applied by
// the kernel (see the package documentation); all of f is checked here.
// An error ends the sequence with (nil, err).
func (h *Handle) List(ctx context.Context, f Filter) iter.Seq2[*Flow, error] {
	return func(yield func(*Flow, error) bool) {
		err := kernel.DumpFiltered(ctx, h.nsfd, f.dumpFilter(), func(fl *flow.Flow) error {
			if !f.Match(fl) {
				return nil
			}
			if !yield(fl, nil) {
				return errStop
			}
			return nil
		})
		if err != nil && err != errStop {
			yield(nil, fmt.Errorf("list conntrack table: %w", err))
		}
	}
}

// Count returns the number of flows that match f. With the zero filter it
// asks the kernel for the table's size (one request, as conntrack -C);
// otherwise it counts a filtered dump.
func (h *Handle) Count(ctx context.Context, f Filter) (int, error) {
	if f.IsZero() {
		s, err := h.table.Stats(ctx)
		if err != nil {
			return 0, fmt.Errorf("count conntrack entries: %w", err)
		}
		return int(s.Entries), nil
	}
	n := 0
	for _, err := range h.List(ctx, f) {
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Get reads the flow with key's original tuple and zone.
func (h *Handle) Get(ctx context.Context, key flow.Key) (Flow, error) {
	fl, err := h.table.Get(ctx, key)
	return fl, wrapErr(err)
}

// Create creates fl with fl.Timeout seconds to live. A reply tuple that
// is not the inverse of the original one is created as NAT (SNAT when its
// destination differs from the original source, DNAT when its source
// differs from the original destination; needs nf_nat in the namespace).
// The status bits SEEN_REPLY, ASSURED and FIXED_TIMEOUT are taken from
// fl.Status, the others are the kernel's. TCP flows get BE_LIBERAL window
// tracking (the kernel has no window data for them). Mark, zone, labels
// and helper are set as fl says.
func (h *Handle) Create(ctx context.Context, fl *Flow) error {
	return wrapErr(h.table.Create(ctx, fl))
}

// Change is what Update and UpdateMatching change in a flow.
type Change = kernel.Change

// Update applies c to the flow with key's original tuple and zone.
func (h *Handle) Update(ctx context.Context, key flow.Key, c Change) error {
	return wrapErr(h.table.Update(ctx, key, c))
}

// UpdateMatching applies c to every flow that matches f, one request per
// flow as conntrack -U does, and returns how many it updated. A status
// change only sets bits (the old status is kept, as the kernel cannot clear
// SEEN_REPLY or ASSURED). Flows that vanish meanwhile are skipped.
func (h *Handle) UpdateMatching(ctx context.Context, f Filter, c Change) (int, error) {
	type target struct {
		key    flow.Key
		status uint32
	}
	var todo []target
	for fl, err := range h.List(ctx, f) {
		if err != nil {
			return 0, err
		}
		todo = append(todo, target{fl.Key, fl.Status})
	}
	n := 0
	for _, t := range todo {
		cc := c
		if cc.SetStatus {
			cc.Status |= t.status
		}
		err := h.table.Update(ctx, t.key, cc)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("update %s: %w", KeyString(&t.key), err)
		}
		n++
	}
	return n, nil
}

// Delete deletes the flow with key's original tuple and zone.
func (h *Handle) Delete(ctx context.Context, key flow.Key) error {
	return wrapErr(h.table.Delete(ctx, key))
}

// DeleteMatching deletes every flow that matches f and returns how many it
// deleted. The matching flows are listed first (filtered in the kernel
// where it can), then deleted in batches of Options.DeleteBatch requests a
// system call, without a round trip per flow. Flows that vanish meanwhile
// are not counted. The zero filter deletes every flow (Flush is faster but
// does not count).
func (h *Handle) DeleteMatching(ctx context.Context, f Filter) (int, error) {
	var keys []flow.Key
	for fl, err := range h.List(ctx, f) {
		if err != nil {
			return 0, err
		}
		keys = append(keys, fl.Key)
	}
	if len(keys) == 0 {
		return 0, nil
	}
	w, err := h.batchWriter()
	if err != nil {
		return 0, err
	}
	res, err := w.Delete(ctx, keys)
	n := 0
	var first error
	for i := range res {
		switch {
		case res[i].Op == kernel.Deleted:
			n++
		case errors.Is(res[i].Err, unix.ENOENT):
		case first == nil:
			first = res[i].Err
		}
	}
	if err != nil {
		return n, fmt.Errorf("delete conntrack entries: %w", err)
	}
	if first != nil {
		return n, fmt.Errorf("delete conntrack entries: %w", first)
	}
	return n, nil
}

func (h *Handle) batchWriter() (*kernel.Writer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.writer != nil {
		return h.writer, nil
	}
	w, err := kernel.NewWriter(kernel.WriterOptions{Sockets: 1, Batch: h.opts.DeleteBatch, NetNS: h.nsfd})
	if err != nil {
		return nil, fmt.Errorf("open conntrack writer: %w", err)
	}
	h.writer = w
	return w, nil
}

// Flush deletes every flow of the table, both families, all zones.
func (h *Handle) Flush(ctx context.Context) error {
	for _, fam := range []uint8{flow.FamilyIPv4, flow.FamilyIPv6} {
		if err := h.table.Flush(ctx, fam); err != nil {
			return err
		}
	}
	return nil
}

// Stats are the table's size figures.
type Stats = kernel.GlobalStats

// CPUStats are one CPU's conntrack counters.
type CPUStats = kernel.CPUStats

// Stats reads the number of entries and the table's limit (MaxEntries
// needs Linux 4.18).
func (h *Handle) Stats(ctx context.Context) (Stats, error) { return h.table.Stats(ctx) }

// StatsPerCPU reads each CPU's counters as `conntrack -S` prints them
// (Linux 3.17).
func (h *Handle) StatsPerCPU(ctx context.Context) ([]CPUStats, error) {
	return h.table.StatsPerCPU(ctx)
}

// dumpFilter is the part of f the kernel can filter in a dump.
func (f *Filter) dumpFilter() kernel.DumpFilter {
	df := kernel.DumpFilter{Family: f.family(), Status: f.Status}
	if f.Mark.Valid {
		df.HasMark, df.Mark, df.MarkMask = true, f.Mark.Value, f.markMask()
	}
	if f.Zone.Valid {
		df.HasZone, df.Zone = true, f.Zone.Value
	}
	df.Orig = tupleFilter(f.Proto, f.OrigSrc, f.OrigDst, f.OrigSrcPort, f.OrigDstPort)
	df.Reply = tupleFilter(f.Proto, f.ReplySrc, f.ReplyDst, f.ReplySrcPort, f.ReplyDstPort)
	if f.Proto != 0 && isICMP(f.Proto) {
		t, c, id := kernel.FilterICMPType, kernel.FilterICMPCode, kernel.FilterICMPID
		if f.Proto == flow.ProtoICMPv6 {
			t, c, id = kernel.FilterICMPv6Type, kernel.FilterICMPv6Code, kernel.FilterICMPv6ID
		}
		if f.ICMPType.Valid {
			df.Orig.Flags |= t
			df.Orig.Tuple.DstPort |= uint16(f.ICMPType.Value) << 8
		}
		if f.ICMPCode.Valid {
			df.Orig.Flags |= c
			df.Orig.Tuple.DstPort |= uint16(f.ICMPCode.Value)
		}
		if f.ICMPID.Valid {
			df.Orig.Flags |= id
			df.Orig.Tuple.SrcPort = f.ICMPID.Value
		}
	}
	return df
}

// tupleFilter is the kernel's exact-match tuple filter for one direction:
// single IPv4 addresses (not networks), the protocol, and ports of
// protocols that have them.
//
// IPv6 addresses are not pushed: the kernel's CTA_FILTER compares them
// inverted (ctnetlink_filter_match_tuple tests !ipv6_addr_cmp, which is
// true on equality), so a dump filtered by an IPv6 address returns every
// flow except the matching ones (seen on Linux 6.18, found by
// TestKernelListMatchesConntrack).
func tupleFilter(proto uint8, src, dst netip.Prefix, sport, dport Opt[uint16]) kernel.TupleFilter {
	var t kernel.TupleFilter
	if src.IsValid() && src.IsSingleIP() && src.Addr().Is4() {
		t.Flags |= kernel.FilterIPSrc
		t.Tuple.Src = flow.AddrFrom(src.Addr())
	}
	if dst.IsValid() && dst.IsSingleIP() && dst.Addr().Is4() {
		t.Flags |= kernel.FilterIPDst
		t.Tuple.Dst = flow.AddrFrom(dst.Addr())
	}
	if proto != 0 {
		t.Flags |= kernel.FilterProtoNum
		t.Proto = proto
		if hasPorts(proto) {
			if sport.Valid {
				t.Flags |= kernel.FilterSrcPort
				t.Tuple.SrcPort = sport.Value
			}
			if dport.Valid {
				t.Flags |= kernel.FilterDstPort
				t.Tuple.DstPort = dport.Value
			}
		}
	}
	return t
}
