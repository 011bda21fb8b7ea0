package kernel

import (
	"context"
	"fmt"
	"net/netip"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// WatchAddrs reports the namespace's local addresses (all interfaces, VIPs
// included) to fn: once with the current set, then again whenever an
// address is added or removed, until ctx ends. netnsFD 0 means the calling
// thread's namespace. fn is called from WatchAddrs' goroutine.
func WatchAddrs(ctx context.Context, netnsFD int, fn func([]netip.Addr)) error {
	ch := make(chan vnl.AddrUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	errc := make(chan error, 1)
	opts := vnl.AddrSubscribeOptions{
		ListExisting:      true,
		ReceiveBufferSize: 1 << 20,
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default:
			}
		},
	}
	if netnsFD > 0 {
		h := netns.NsHandle(netnsFD)
		opts.Namespace = &h
	}
	if err := vnl.AddrSubscribeWithOptions(ch, done, opts); err != nil {
		return &OpError{Op: "subscribe to addresses", Err: err}
	}
	set := map[netip.Addr]int{} // address → number of interfaces holding it
	report := func() {
		out := make([]netip.Addr, 0, len(set))
		for a := range set {
			out = append(out, a)
		}
		fn(out)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("address watch: %w", err)
		case u, ok := <-ch:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("address watch: %w", ErrClosed)
			}
			a, ok := netip.AddrFromSlice(u.LinkAddress.IP)
			if !ok {
				continue
			}
			a = a.Unmap()
			if u.NewAddr {
				set[a]++
			} else if set[a] > 1 {
				set[a]--
			} else {
				delete(set, a)
			}
			// Report once a burst of updates (the initial listing) is read.
			if len(ch) == 0 {
				report()
			}
		}
	}
}
