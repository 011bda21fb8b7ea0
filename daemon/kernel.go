package daemon

import (
	"context"
	"net/netip"

	"github.com/ctsyncd/ctsyncd/failover"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// Kernel is everything the daemon asks of the kernel: subscribe to
// conntrack events, read the table, write it, watch the local addresses.
// The real one (Options.Kernel nil) is package kernel in the daemon's
// namespace; the daemon's root-free tests use a fake table
// (kernel_fake_test.go), the kernel tier the real thing.
type Kernel interface {
	// Listen subscribes to conntrack events (before the first dump, so
	// that no change falls between).
	Listen(opts kernel.ListenOptions) (Events, error)
	// EnsureEvents turns on the namespace's conntrack event delivery.
	EnsureEvents() error
	// NewWriter opens the table writer.
	NewWriter(opts kernel.WriterOptions) (TableWriter, error)
	// Dump and DumpExpect read the whole table (flows, expectations).
	Dump(ctx context.Context, opts kernel.DumpOptions, fn func(*flow.Flow)) error
	DumpExpect(ctx context.Context, opts kernel.DumpOptions, fn func(*flow.Expect)) error
	// WatchAddrs reports the local addresses, then every change, until ctx
	// ends.
	WatchAddrs(ctx context.Context, netnsFD int, fn func([]netip.Addr)) error
}

// Events is a subscription to conntrack events (*kernel.Listener).
type Events interface {
	// Run delivers events to h (and to its kernel.ExpectHandler, if it is
	// one) on the calling goroutine until ctx ends.
	Run(ctx context.Context, h kernel.Handler) error
	// IgnorePorts drops the events caused by these netlink ports (the
	// daemon's own writes), in the kernel where it can.
	IgnorePorts(ports []uint32)
	KernelFiltered() bool
	// PauseNew leaves (true) or rejoins (false) the NEW events: while no
	// socket listens to them the kernel does not build them, and a
	// commit's creates cost about half as much.
	PauseNew(pause bool) error
	ReadBuffer() int
	Stats() kernel.ListenerStats
	Close() error
}

// TableWriter writes the conntrack table (*kernel.Writer).
type TableWriter interface {
	failover.Writer
	failover.Deleter
	failover.ExpectWriter
	Flush(ctx context.Context) error
	FlushExpect(ctx context.Context) error
	// PortIDs are the netlink ports the writer's events carry.
	PortIDs() []uint32
	Close() error
}

// osKernel is the real Kernel: package kernel.
type osKernel struct{}

var (
	_ Kernel      = osKernel{}
	_ Events      = (*kernel.Listener)(nil)
	_ TableWriter = (*kernel.Writer)(nil)
)

func (osKernel) Listen(opts kernel.ListenOptions) (Events, error) {
	l, err := kernel.Listen(opts)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (osKernel) EnsureEvents() error { return kernel.EnsureEvents() }

func (osKernel) NewWriter(opts kernel.WriterOptions) (TableWriter, error) {
	w, err := kernel.NewWriter(opts)
	if err != nil {
		return nil, err
	}
	return w, nil
}

func (osKernel) Dump(ctx context.Context, opts kernel.DumpOptions, fn func(*flow.Flow)) error {
	return kernel.Dump(ctx, opts, fn)
}

func (osKernel) DumpExpect(ctx context.Context, opts kernel.DumpOptions, fn func(*flow.Expect)) error {
	return kernel.DumpExpect(ctx, opts, fn)
}

func (osKernel) WatchAddrs(ctx context.Context, netnsFD int, fn func([]netip.Addr)) error {
	return kernel.WatchAddrs(ctx, netnsFD, fn)
}
