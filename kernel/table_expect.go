package kernel

import (
	"context"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
)

// GetExpect reads the expectation with k's expected tuple and zone. A
// missing one is an *OpError wrapping unix.ENOENT.
func (t *Table) GetExpect(ctx context.Context, k flow.ExpectKey) (flow.Expect, error) {
	var e flow.Expect
	if err := validKey(&flow.Key{Family: k.Family}); err != nil {
		return e, &OpError{Op: "get expectation", Err: err}
	}
	found := false
	err := t.request(ctx, "get expectation", func(b []byte, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendExpectKeyMsg(b, msgExpGet, &k, seq, fl)
	}, func(m netlink.Message) error {
		if !decodeExpect(m, &e) {
			return &OpError{Op: "get expectation", Err: ErrMalformed}
		}
		found = true
		return nil
	})
	if err == nil && !found {
		err = &OpError{Op: "get expectation", Err: unix.ENOENT}
	}
	return e, err
}
