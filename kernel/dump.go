package kernel

import (
	"context"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Netfilter message types (NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*).
const (
	subsysCTNetlink = 1 // NFNL_SUBSYS_CTNETLINK
	msgCTNew        = 0 // IPCTNL_MSG_CT_NEW
	msgCTGet        = 1 // IPCTNL_MSG_CT_GET
	msgCTDelete     = 2 // IPCTNL_MSG_CT_DELETE
)

// DumpOptions configure Dump.
type DumpOptions struct {
	// NetNS, when non-zero, is a file descriptor of the network namespace
	// to dump (tests); 0 means the calling thread's namespace.
	NetNS int
}

// Dump streams the conntrack table (both families, all zones) to fn, one
// flow at a time; f is reused after fn returns. Memory stays flat whatever
// the table's size. It returns ctx's error if ctx ends it.
func Dump(ctx context.Context, opts DumpOptions, fn func(f *flow.Flow)) error {
	var f flow.Flow
	return dumpRaw(ctx, opts, func(m netlink.Message) error {
		if !decodeFlow(m, &f) {
			return fmt.Errorf("conntrack dump: %w", ErrMalformed)
		}
		fn(&f)
		return nil
	})
}

// dumpRaw streams the dump's netlink messages to fn; their data alias a
// buffer that is reused after fn returns.
func dumpRaw(ctx context.Context, opts DumpOptions, fn func(m netlink.Message) error) error {
	return dumpRawType(ctx, opts, ctType(msgCTGet), fn)
}

// dumpRawType is dumpRaw for a GET of the given message type (flows or
// expectations).
func dumpRawType(ctx context.Context, opts DumpOptions, typ uint16, fn func(m netlink.Message) error) error {
	s, err := dialNetfilter(opts.NetNS, 0)
	if err != nil {
		return err
	}
	defer s.close()
	stop := context.AfterFunc(ctx, func() { s.close() })
	defer stop()
	_ = s.setReadBuffer(8 << 20)

	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(typ),
			Flags: netlink.Request | netlink.Dump,
		},
		// struct nfgenmsg: family AF_UNSPEC (both), version 0, res_id 0.
		Data: []byte{unix.AF_UNSPEC, 0, 0, 0},
	}
	sent, err := s.conn.Send(req)
	if err != nil {
		return &OpError{Op: "dump", Err: err}
	}
	done := false
	handle := func(m netlink.Message) error {
		if m.Header.Sequence != sent.Header.Sequence {
			return nil
		}
		switch m.Header.Type {
		case netlink.Done:
			done = true
			return nil
		case netlink.Error:
			if e := errnoOf(m); e != 0 {
				return &OpError{Op: "dump", Err: e}
			}
			done = true
			return nil
		}
		return fn(m)
	}
	for !done {
		if err := s.recv(handle); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
	return nil
}
