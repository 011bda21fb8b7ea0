package kernel

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// groupNftables is NFNLGRP_NFTABLES: nf_tables announces every change of
// the ruleset (tables, chains, rules, sets) to it.
const groupNftables = 7

// WatchRuleset calls fn after every change of the nftables ruleset in the
// caller's network namespace (or the one of netnsFD when it is non-zero),
// until ctx ends. Changes come in bursts (one message per rule of an `nft
// -f`): fn is called once per batch of messages read, never concurrently.
// A receive buffer overrun also calls fn: a change may have been missed.
func WatchRuleset(ctx context.Context, netnsFD int, fn func()) error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return &OpError{Op: "watch ruleset: dial", Err: err}
	}
	defer c.Close()
	if err := c.JoinGroup(groupNftables); err != nil {
		return &OpError{Op: "watch ruleset: join NFNLGRP_NFTABLES", Err: err}
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		_, err := c.Receive()
		switch {
		case err == nil, errors.Is(err, unix.ENOBUFS):
			fn()
		case ctx.Err() != nil, errors.Is(err, net.ErrClosed):
			return nil
		default:
			return fmt.Errorf("watch ruleset: %w", err)
		}
	}
}
