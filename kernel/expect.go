package kernel

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Expectations live in their own ctnetlink subsystem
// (NFNL_SUBSYS_CTNETLINK_EXP) with the same tuple encoding as flows, so
// this file reuses decodeTuple (writer_decode.go) and msgEncoder.tuple
// (writer_encode.go).

// Message types of the expectation subsystem.
const (
	subsysCTNetlinkExp = 2 // NFNL_SUBSYS_CTNETLINK_EXP
	msgExpNew          = 0 // IPCTNL_MSG_EXP_NEW
	msgExpGet          = 1 // IPCTNL_MSG_EXP_GET
	msgExpDelete       = 2 // IPCTNL_MSG_EXP_DELETE
)

// enum ctattr_expect and ctattr_expect_nat.
const (
	ctaExpectMaster   = 1  // CTA_EXPECT_MASTER
	ctaExpectTuple    = 2  // CTA_EXPECT_TUPLE
	ctaExpectMask     = 3  // CTA_EXPECT_MASK
	ctaExpectTimeout  = 4  // CTA_EXPECT_TIMEOUT
	ctaExpectID       = 5  // CTA_EXPECT_ID
	ctaExpectHelpName = 6  // CTA_EXPECT_HELP_NAME
	ctaExpectZone     = 7  // CTA_EXPECT_ZONE
	ctaExpectFlags    = 8  // CTA_EXPECT_FLAGS
	ctaExpectClass    = 9  // CTA_EXPECT_CLASS
	ctaExpectNAT      = 10 // CTA_EXPECT_NAT
	ctaExpectFn       = 11 // CTA_EXPECT_FN

	ctaExpectNATDir   = 1 // CTA_EXPECT_NAT_DIR
	ctaExpectNATTuple = 2 // CTA_EXPECT_NAT_TUPLE
)

// Multicast groups of expectation events as a legacy bitmask (group g is
// bit g-1).
const (
	groupExpNew     = 0x08 // NFNLGRP_CONNTRACK_EXP_NEW (4)
	groupExpDestroy = 0x20 // NFNLGRP_CONNTRACK_EXP_DESTROY (6)
)

func expType(msg uint8) uint16 { return subsysCTNetlinkExp<<8 | uint16(msg) }

// names interns helper and expectfn names: there are a handful of them, so
// decoding an expectation allocates no string after the first of each.
var names struct {
	sync.RWMutex
	m map[string]string
}

func internName(p []byte) string {
	if i := bytes.IndexByte(p, 0); i >= 0 {
		p = p[:i]
	}
	if len(p) == 0 {
		return ""
	}
	names.RLock()
	s, ok := names.m[string(p)] // no allocation for the lookup
	names.RUnlock()
	if ok {
		return s
	}
	names.Lock()
	defer names.Unlock()
	if names.m == nil {
		names.m = map[string]string{}
	}
	if s, ok := names.m[string(p)]; ok {
		return s
	}
	if len(names.m) >= 256 { // a hostile stream of names: stop interning
		return string(p)
	}
	s = string(p)
	names.m[s] = s
	return s
}

// decodeExpect decodes an expectation message (an event or a dump record)
// into e. ok is false when the expected or the master tuple is missing.
// The kernel does not report the zone (CTA_EXPECT_ZONE is only read): e.Zone
// is set when the message carries it, else 0; the zone is the master's.
func decodeExpect(m netlink.Message, e *flow.Expect) bool {
	*e = flow.Expect{}
	if len(m.Data) < 4 {
		return false
	}
	var haveTuple, haveMaster bool
	var maskProto uint8
	for b := m.Data[4:]; len(b) > 0; {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return false
		}
		b = rest
		switch typ {
		case ctaExpectTuple:
			haveTuple = decodeTuple(p, &e.Tuple, &e.Proto)
		case ctaExpectMask:
			decodeTuple(p, &e.Mask, &maskProto)
		case ctaExpectMaster:
			haveMaster = decodeTuple(p, &e.Master, &e.MasterProto)
		case ctaExpectTimeout:
			e.Timeout = be32(p)
		case ctaExpectFlags:
			e.Flags = be32(p)
		case ctaExpectClass:
			e.Class = be32(p)
		case ctaExpectZone:
			if len(p) >= 2 {
				e.Zone = uint16(p[0])<<8 | uint16(p[1])
			}
		case ctaExpectHelpName:
			e.Helper = internName(p)
		case ctaExpectFn:
			e.Fn = internName(p)
		case ctaExpectNAT:
			var natProto uint8
			forAttrs(p, func(typ uint16, p []byte) {
				switch typ {
				case ctaExpectNATDir:
					e.NAT.Dir = be32(p)
				case ctaExpectNATTuple:
					e.HasNAT = decodeTuple(p, &e.NAT.Tuple, &natProto)
				}
			})
		}
	}
	if !haveTuple || !haveMaster {
		return false
	}
	if m.Data[0] == flow.FamilyIPv6 {
		e.Family = flow.FamilyIPv6
	} else {
		e.Family = flow.FamilyIPv4
	}
	return true
}

// expectEventType tells an expectation event's kind from its header.
func expectEventType(h netlink.Header) (EventType, bool) {
	if h.Type>>8 != subsysCTNetlinkExp {
		return 0, false
	}
	switch h.Type & 0xff {
	case msgExpNew:
		if h.Flags&(netlink.Create|netlink.Excl) != 0 {
			return EventNew, true
		}
		return EventUpdate, true
	case msgExpDelete:
		return EventDestroy, true
	}
	return 0, false
}

// appendExpect appends an IPCTNL_MSG_EXP_NEW for e. With NLM_F_CREATE it
// creates the expectation: the kernel looks up the master by e.Master in
// e.Zone (ENOENT when it is missing; EOPNOTSUPP when the master has no
// helper) and takes the timeout from the master helper's policy, ignoring
// CTA_EXPECT_TIMEOUT. Without NLM_F_CREATE it changes an existing
// expectation's timeout to timeout seconds (0: leave it). The helper name
// is sent only with a class other than 0: the kernel accepts a class only
// together with a helper, and the helper named on create is attached to the
// expected connection when it comes (the kernel's own FTP expectations
// attach none).
func appendExpect(b []byte, e *flow.Expect, timeout uint32, seq uint32, flags netlink.HeaderFlags) []byte {
	enc := msgEncoder{b}
	m := enc.begin(expType(msgExpNew), flags, seq, e.Family)
	enc.tuple(ctaExpectMaster, e.Family, e.MasterProto, &e.Master)
	enc.tuple(ctaExpectTuple, e.Family, e.Proto, &e.Tuple)
	enc.tuple(ctaExpectMask, e.Family, e.Proto, &e.Mask)
	if e.Zone != 0 {
		enc.be16(ctaExpectZone, e.Zone)
	}
	if timeout != 0 {
		enc.be32(ctaExpectTimeout, timeout)
	}
	enc.be32(ctaExpectFlags, e.Flags&^flow.ExpectUserspace)
	if e.Class != 0 && e.Helper != "" {
		enc.be32(ctaExpectClass, e.Class)
		enc.str(ctaExpectHelpName, e.Helper)
	}
	if e.Fn != "" {
		enc.str(ctaExpectFn, e.Fn)
	}
	if e.HasNAT {
		n := enc.nest(ctaExpectNAT)
		enc.be32(ctaExpectNATDir, e.NAT.Dir)
		enc.tuple(ctaExpectNATTuple, e.Family, e.MasterProto, &e.NAT.Tuple)
		enc.unnest(n)
	}
	enc.end(m)
	return enc.b
}

// appendExpectKeyMsg appends a GET or DELETE naming one expectation by its
// expected tuple and zone.
func appendExpectKeyMsg(b []byte, msg uint8, k *flow.ExpectKey, seq uint32, flags netlink.HeaderFlags) []byte {
	enc := msgEncoder{b}
	m := enc.begin(expType(msg), flags, seq, k.Family)
	enc.tuple(ctaExpectTuple, k.Family, k.Proto, &k.Tuple)
	if k.Zone != 0 {
		enc.be16(ctaExpectZone, k.Zone)
	}
	enc.end(m)
	return enc.b
}

// DumpExpect streams the expectation table (both families) to fn; e is
// reused after fn returns. Zone is 0 in what it reports (the kernel does not
// say); callers that know the master's zone set it.
func DumpExpect(ctx context.Context, opts DumpOptions, fn func(e *flow.Expect)) error {
	var e flow.Expect
	return dumpRawType(ctx, opts, expType(msgExpGet), func(m netlink.Message) error {
		if !decodeExpect(m, &e) {
			return fmt.Errorf("expectation dump: %w", ErrMalformed)
		}
		fn(&e)
		return nil
	})
}

// ExpectResult is the outcome for one expectation, as Result is for flows.
// A create that fails with ENOENT (errors.Is(r.Err, unix.ENOENT)) found no
// master flow.
type ExpectResult struct {
	Key flow.ExpectKey
	Op  Op
	Err error
}

func codeExpectResult(r *ExpectResult, op string, ok Op, code int32, cause error) {
	var fr Result
	codeResult(&fr, op, ok, code, cause)
	r.Op, r.Err = fr.Op, fr.Err
}

// CreateExpect creates expectations, each after its master flow must
// exist in the kernel with a helper (commit masters first). An expectation
// that exists already has only its timeout changed (Updated). Each is
// written with the timeout max(MinTimeout, Timeout - age[i]); age may be
// nil. Results are in input order. A master that is missing fails with
// ENOENT, a master without a helper with EOPNOTSUPP.
func (w *Writer) CreateExpect(ctx context.Context, exps []flow.Expect, age []time.Duration) ([]ExpectResult, error) {
	if err := w.begin(); err != nil {
		return nil, err
	}
	defer w.opMu.Unlock()

	res := make([]ExpectResult, len(exps))
	timeouts := make([]uint32, len(exps))
	todo := make([]int, 0, len(exps))
	for i := range exps {
		e := &exps[i]
		res[i].Key = e.ExpectKey
		if err := validKey(&flow.Key{Family: e.Family}); err != nil {
			res[i].Op, res[i].Err = Failed, &OpError{Op: "create expectation", Err: err}
			continue
		}
		var a time.Duration
		if age != nil && i < len(age) {
			a = age[i]
		}
		timeouts[i] = w.commitTimeout(e.Timeout, a)
		todo = append(todo, i)
	}
	// Two messages per expectation, in order on one socket: the exclusive
	// create, then the timeout change (the create ignores the timeout).
	codes, err := w.roundOn(ctx, w.socks[:1], max(2, w.opts.Batch&^1), 2*len(todo), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		i := todo[k/2]
		if k%2 == 0 {
			return appendExpect(b, &exps[i], 0, seq, fl|netlink.Create|netlink.Excl)
		}
		return appendExpect(b, &exps[i], timeouts[i], seq, fl)
	}, nil)
	err = w.roundErr(ctx, err)
	for k, i := range todo {
		c, u := codes[2*k], codes[2*k+1]
		switch {
		case c == 0:
			codeExpectResult(&res[i], "create expectation", Created, u, err)
			if res[i].Op == Created || u == int32(unix.ETIME) {
				res[i].Op, res[i].Err = Created, nil
			}
		case c == int32(unix.EEXIST):
			codeExpectResult(&res[i], "update expectation", Updated, u, err)
		default:
			codeExpectResult(&res[i], "create expectation", 0, c, err)
		}
	}
	return res, err
}

// DeleteExpect deletes expectations by expected tuple and zone. One that
// does not exist fails with ENOENT.
func (w *Writer) DeleteExpect(ctx context.Context, keys []flow.ExpectKey) ([]ExpectResult, error) {
	if err := w.begin(); err != nil {
		return nil, err
	}
	defer w.opMu.Unlock()
	res := make([]ExpectResult, len(keys))
	todo := make([]int, 0, len(keys))
	for i := range keys {
		res[i].Key = keys[i]
		if err := validKey(&flow.Key{Family: keys[i].Family}); err != nil {
			res[i].Op, res[i].Err = Failed, &OpError{Op: "delete expectation", Err: err}
			continue
		}
		todo = append(todo, i)
	}
	codes, err := w.round(ctx, len(todo), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendExpectKeyMsg(b, msgExpDelete, &keys[todo[k]], seq, fl)
	}, nil)
	err = w.roundErr(ctx, err)
	for k, i := range todo {
		codeExpectResult(&res[i], "delete expectation", Deleted, codes[k], err)
	}
	return res, err
}

// FlushExpect deletes every expectation (both families, all zones).
func (w *Writer) FlushExpect(ctx context.Context) error {
	if err := w.begin(); err != nil {
		return err
	}
	defer w.opMu.Unlock()
	codes, err := w.roundOn(ctx, w.socks[:1], 1, 1, func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		enc := msgEncoder{b}
		m := enc.begin(expType(msgExpDelete), fl, seq, unix.AF_UNSPEC)
		enc.end(m)
		return enc.b
	}, nil)
	if err = w.roundErr(ctx, err); err != nil {
		return &OpError{Op: "flush expectations", Err: err}
	}
	if codes[0] != 0 {
		return &OpError{Op: "flush expectations", Err: unix.Errno(codes[0])}
	}
	return nil
}

// UpdateExpect changes the timeout of existing expectations to each one's
// Timeout as is (no floor; purge uses it to cap them). One that does not
// exist fails with ENOENT.
func (w *Writer) UpdateExpect(ctx context.Context, exps []flow.Expect) ([]ExpectResult, error) {
	if err := w.begin(); err != nil {
		return nil, err
	}
	defer w.opMu.Unlock()
	res := make([]ExpectResult, len(exps))
	todo := make([]int, 0, len(exps))
	for i := range exps {
		res[i].Key = exps[i].ExpectKey
		if err := validKey(&flow.Key{Family: exps[i].Family}); err != nil || exps[i].Timeout == 0 {
			if err == nil {
				err = unix.EINVAL
			}
			res[i].Op, res[i].Err = Failed, &OpError{Op: "update expectation", Err: err}
			continue
		}
		todo = append(todo, i)
	}
	codes, err := w.round(ctx, len(todo), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		e := &exps[todo[k]]
		return appendExpect(b, e, e.Timeout, seq, fl)
	}, nil)
	err = w.roundErr(ctx, err)
	for k, i := range todo {
		codeExpectResult(&res[i], "update expectation", Updated, codes[k], err)
	}
	return res, err
}
