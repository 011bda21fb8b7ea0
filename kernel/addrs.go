package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// WatchAddrs reports the namespace's local addresses (all interfaces, VIPs
// included) to fn: once with the current set, then again whenever an
// address is added or removed, until ctx ends. netnsFD 0 means the calling
// thread's namespace. fn is called from WatchAddrs' goroutine.
//
// It subscribes to rtnetlink's address groups before it dumps the
// addresses, on the same socket, so that no change falls between; if the
// kernel drops address events (ENOBUFS), it dumps again.
func WatchAddrs(ctx context.Context, netnsFD int, fn func([]netip.Addr)) error {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{
		NetNS:  netnsFD,
		Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR,
	})
	if err != nil {
		return &OpError{Op: "subscribe to addresses", Err: err}
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer func() {
		if stop() {
			c.Close()
		}
	}()
	_ = c.SetReadBuffer(1 << 20)

	w := addrSet{}
	dump := func() error {
		clear(w)
		_, err := c.Send(netlink.Message{
			Header: netlink.Header{Type: unix.RTM_GETADDR, Flags: netlink.Request | netlink.Dump},
			Data:   make([]byte, unix.SizeofIfAddrmsg), // AF_UNSPEC: both families
		})
		return err
	}
	if err := dump(); err != nil {
		return &OpError{Op: "dump addresses", Err: err}
	}
	var last []netip.Addr
	for {
		msgs, err := c.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				if err := dump(); err != nil {
					return &OpError{Op: "dump addresses", Err: err}
				}
				continue
			}
			return fmt.Errorf("address watch: %w", &OpError{Op: "receive", Err: err})
		}
		for _, m := range msgs {
			w.apply(m)
		}
		if now := w.addrs(); last == nil || !slices.Equal(now, last) {
			last = now
			fn(now)
		}
	}
}

// addrSet holds the addresses per interface: the same address on two
// interfaces stays local until both lost it.
type addrSet map[ifAddr]struct{}

type ifAddr struct {
	index uint32
	addr  netip.Addr
}

// apply takes an RTM_NEWADDR or RTM_DELADDR message; others are ignored.
func (s addrSet) apply(m netlink.Message) {
	t := m.Header.Type
	if t != unix.RTM_NEWADDR && t != unix.RTM_DELADDR {
		return
	}
	a, ok := parseAddrMsg(m.Data)
	if !ok {
		return
	}
	if t == unix.RTM_NEWADDR {
		s[a] = struct{}{}
	} else {
		delete(s, a)
	}
}

// addrs returns the distinct addresses, sorted (never nil).
func (s addrSet) addrs() []netip.Addr {
	out := make([]netip.Addr, 0, len(s))
	for a := range s {
		if !slices.Contains(out, a.addr) {
			out = append(out, a.addr)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// parseAddrMsg decodes struct ifaddrmsg and its attributes: the interface
// and the local address (IFA_LOCAL, which on a point-to-point IPv4 link
// differs from IFA_ADDRESS, the peer; else IFA_ADDRESS).
func parseAddrMsg(b []byte) (ifAddr, bool) {
	if len(b) < unix.SizeofIfAddrmsg {
		return ifAddr{}, false
	}
	index := binary.NativeEndian.Uint32(b[4:8])
	var local, address netip.Addr
	ad, err := netlink.NewAttributeDecoder(b[unix.SizeofIfAddrmsg:])
	if err != nil {
		return ifAddr{}, false
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.IFA_LOCAL:
			local, _ = netip.AddrFromSlice(ad.Bytes())
		case unix.IFA_ADDRESS:
			address, _ = netip.AddrFromSlice(ad.Bytes())
		}
	}
	if ad.Err() != nil {
		return ifAddr{}, false
	}
	a := local
	if !a.IsValid() {
		a = address
	}
	if !a.IsValid() {
		return ifAddr{}, false
	}
	return ifAddr{index: index, addr: a.Unmap()}, true
}
