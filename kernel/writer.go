package kernel

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
)

// WriterOptions configure a Writer. Zero values take the defaults.
type WriterOptions struct {
	// Sockets is the number of netlink sockets written in parallel, one
	// goroutine each during an operation. Default 2. The kernel runs
	// ctnetlink's NEW, GET and DELETE under the nfnetlink subsystem mutex,
	// so more sockets only overlap user-space work (encoding, decoding)
	// with the kernel's: measured on 2 vCPUs, a large update (EEXIST, read
	// back, update) ran ~25 % faster with 2 sockets than with 1. Creates
	// always go out on the first socket alone: with two, the second spent
	// its time spinning on that mutex (a third of a 200k-flow commit's
	// CPU, in the kernel's mutex_spin_on_owner) and the commit was no
	// faster.
	Sockets int
	// ParallelCreates spreads creates over all Sockets as well (ctgen's
	// kernel-ceiling runs compare both ways); the daemon leaves it off.
	ParallelCreates bool
	// Batch is the number of messages per sendmsg. Only the last message
	// of a batch asks for an ACK; failures come back as NLMSG_ERROR with
	// the failing request's sequence number. Default 256, at most
	// MaxWriterBatch: every reply of a batch (an error, or a GET's answer,
	// each taking a few KiB of receive buffer) must fit in the socket's
	// receive buffer at once.
	Batch int
	// NetNS, when non-zero, is a file descriptor of the network namespace
	// to write into (tests); 0 means the calling thread's namespace.
	NetNS int
	// MinTimeout is the floor, in seconds, of the timeouts Commit writes.
	// Default 30.
	MinTimeout uint32
	// KeepNewerTCP makes Commit leave an existing TCP entry alone (Kept)
	// when the flow's state is behind the entry's in the TCP state machine
	// (tcpBehind): inject mode, where a peer's older report of a flow must
	// not undo what this kernel has seen since.
	KeepNewerTCP bool
}

// Defaults of WriterOptions.
const (
	DefaultWriterSockets    = 2
	DefaultWriterBatch      = 256
	DefaultWriterMinTimeout = 30
	MaxWriterBatch          = 1024
)

// Op is what a write did to one flow.
type Op uint8

// Outcomes of a write.
const (
	Created  Op = iota + 1 // a new entry was created
	Updated                // an existing entry with the same NAT was updated
	Replaced               // an existing entry with another reply tuple/NAT was deleted and created anew
	Deleted                // the entry was deleted
	Failed                 // nothing was written; Result.Err says why
	Kept                   // an existing entry ahead of the flow was left alone (KeepNewerTCP)
)

func (o Op) String() string {
	switch o {
	case Created:
		return "created"
	case Updated:
		return "updated"
	case Replaced:
		return "replaced"
	case Deleted:
		return "deleted"
	case Failed:
		return "failed"
	case Kept:
		return "kept"
	}
	return "unknown"
}

// Result is the outcome for one flow. Err is set when Op is Failed; it is an
// *OpError wrapping the errno, so errors.Is(err, unix.EEXIST) works.
// ENOBUFS means the reply was lost and the outcome is unknown.
type Result struct {
	Key flow.Key
	Op  Op
	Err error
}

// Writer creates, updates and deletes conntrack entries in batches over
// several netlink sockets. Its methods may be called from any goroutine;
// operations run one at a time. Close interrupts a running operation.
type Writer struct {
	opts  WriterOptions
	socks []*writeSocket

	dumpThreshold int // see the constant; tests lower it

	// opMu serializes operations: each socket is used by one round at a
	// time and keeps its own sequence numbers.
	opMu sync.Mutex

	// closeOnce guards closing the sockets, which Close may do while an
	// operation runs.
	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

// NewWriter opens the writer's sockets.
func NewWriter(opts WriterOptions) (*Writer, error) {
	opts = opts.withDefaults()
	var socks []*writeSocket
	for range opts.Sockets {
		s, err := dialWriteSocket(opts.NetNS)
		if err != nil {
			for _, s := range socks {
				s.s.close()
			}
			return nil, err
		}
		socks = append(socks, s)
	}
	return newWriterOn(opts, socks), nil
}

func (opts WriterOptions) withDefaults() WriterOptions {
	if opts.Sockets <= 0 {
		opts.Sockets = DefaultWriterSockets
	}
	if opts.Batch <= 0 {
		opts.Batch = DefaultWriterBatch
	}
	opts.Batch = min(opts.Batch, MaxWriterBatch)
	if opts.MinTimeout == 0 {
		opts.MinTimeout = DefaultWriterMinTimeout
	}
	return opts
}

// newWriterOn makes a Writer over open sockets (tests pass fakes); opts
// must have their defaults applied.
func newWriterOn(opts WriterOptions, socks []*writeSocket) *Writer {
	return &Writer{opts: opts, socks: socks, closed: make(chan struct{}), dumpThreshold: dumpThreshold}
}

// PortIDs returns the netlink port ids of the writer's sockets. Events the
// writer causes carry one of them (Event.PortID), so that the event reader
// can tell them from changes made by traffic or other programs.
func (w *Writer) PortIDs() []uint32 {
	ids := make([]uint32, len(w.socks))
	for i, s := range w.socks {
		ids[i] = s.s.portID()
	}
	return ids
}

// Close closes the sockets; a running operation returns. Safe to call twice.
func (w *Writer) Close() error {
	w.closeOnce.Do(func() {
		close(w.closed)
		for _, s := range w.socks {
			if err := s.s.close(); err != nil && w.closeErr == nil {
				w.closeErr = err
			}
		}
	})
	return w.closeErr
}

// begin starts an operation: it takes the operation lock and checks that
// the writer is open.
func (w *Writer) begin() error {
	w.opMu.Lock()
	select {
	case <-w.closed:
		w.opMu.Unlock()
		return ErrClosed
	default:
		return nil
	}
}

// roundErr maps a round's error to what callers see.
func (w *Writer) roundErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	select {
	case <-w.closed:
		return ErrClosed
	default:
	}
	return err
}

// codeResult fills r from a round's code for it.
func codeResult(r *Result, op string, ok Op, code int32, cause error) {
	switch {
	case code == 0:
		r.Op, r.Err = ok, nil
	case code == codePending:
		if cause == nil {
			cause = ErrClosed
		}
		r.Op, r.Err = Failed, &OpError{Op: op, Err: cause}
	default:
		r.Op, r.Err = Failed, &OpError{Op: op, Err: unix.Errno(code)}
	}
}

// failAll marks res[idx...] Failed because the operation ended with cause.
func failAll(res []Result, idx []int, op string, cause error) {
	for _, i := range idx {
		codeResult(&res[i], op, 0, codePending, cause)
	}
}

// validKey checks what the kernel cannot be asked about at all.
func validKey(k *flow.Key) error {
	if k.Family != flow.FamilyIPv4 && k.Family != flow.FamilyIPv6 {
		return fmt.Errorf("address family %d: %w", k.Family, unix.EAFNOSUPPORT)
	}
	return nil
}

// commitTimeout is the timeout to write for a flow reported age ago.
func (w *Writer) commitTimeout(t uint32, age time.Duration) uint32 {
	v := int64(t) - int64(age/time.Second)
	if v < int64(w.opts.MinTimeout) {
		return w.opts.MinTimeout
	}
	if v > 1<<31 {
		v = 1 << 31
	}
	return uint32(v)
}

// Commit writes flows into the kernel table. Each flow is created; when it
// already exists (EEXIST) the existing entry is read back: if its reply
// tuple or NAT differs, it is deleted and created anew (Replaced), otherwise
// updated (Updated) with the status bits the kernel only lets grow kept.
// Timeouts are max(MinTimeout, Timeout - age[i]); age may be nil. TCP flows
// are written with BE_LIBERAL in both directions.
//
// Results are in input order, one per flow. The error is non-nil when ctx
// ended the commit or a socket failed; the flows it left unsettled are
// Failed with that cause, and their state is unknown (a batch already sent
// is applied by the kernel even when its replies are not read): a second
// Commit of the same flows settles them and does no harm.
func (w *Writer) Commit(ctx context.Context, flows []flow.Flow, age []time.Duration) ([]Result, error) {
	if err := w.begin(); err != nil {
		return nil, err
	}
	defer w.opMu.Unlock()

	res := make([]Result, len(flows))
	timeouts := make([]uint32, len(flows))
	todo := make([]int, 0, len(flows))
	for i := range flows {
		f := &flows[i]
		res[i].Key = f.Key
		if err := validKey(&f.Key); err != nil {
			res[i].Op, res[i].Err = Failed, &OpError{Op: "create", Err: err}
			continue
		}
		var a time.Duration
		if age != nil && i < len(age) {
			a = age[i]
		}
		timeouts[i] = w.commitTimeout(f.Timeout, a)
		todo = append(todo, i)
	}

	// Round 1: create everything, exclusively.
	exists, err := w.create(ctx, flows, timeouts, todo, res, Created)
	if err != nil {
		failAll(res, exists, "update", err)
	}
	if err != nil || len(exists) == 0 {
		return res, err
	}

	// Round 2: read the entries that exist.
	cur, found, codes, rerr := w.readExisting(ctx, flows, exists)
	rerr = w.roundErr(ctx, rerr)
	var (
		upd      []int    // flows to update
		updState []uint32 // their status words
		repl     []int    // flows to delete and create
		again    []int    // flows gone meanwhile: create
	)
	for k, i := range exists {
		switch {
		case codes[k] == 0 && found[k]:
			if w.opts.KeepNewerTCP && tcpBehind(&flows[i], &cur[k]) {
				res[i].Op = Kept
				continue
			}
			if sameNAT(&flows[i], &cur[k]) {
				upd = append(upd, i)
				// SEEN_REPLY and ASSURED can only be set, never cleared.
				keep := cur[k].Status & (flow.StatusSeenReply | flow.StatusAssured)
				updState = append(updState, commitStatus(&flows[i])|keep)
			} else {
				repl = append(repl, i)
			}
		case codes[k] == int32(unix.ENOENT):
			again = append(again, i)
		case codes[k] == 0:
			res[i].Op, res[i].Err = Failed, &OpError{Op: "get", Err: ErrMalformed}
		default:
			codeResult(&res[i], "get", 0, codes[k], rerr)
		}
	}
	if rerr != nil {
		failAll(res, upd, "update", rerr)
		failAll(res, repl, "create", rerr)
		failAll(res, again, "create", rerr)
		return res, rerr
	}

	// Round 3: delete the entries to replace and update the others.
	nu := len(upd)
	codes, rerr = w.round(ctx, nu+len(repl), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		if k < nu {
			f := &flows[upd[k]]
			return appendUpdate(b, f, updState[k], timeouts[upd[k]], seq, fl)
		}
		return appendKeyMsg(b, msgCTDelete, &flows[repl[k-nu]].Key, seq, fl)
	}, nil)
	rerr = w.roundErr(ctx, rerr)
	recreate := make([]int, 0, len(repl)+len(again))
	var replaced []bool
	for k, i := range upd {
		if codes[k] == int32(unix.ENOENT) {
			recreate = append(recreate, i)
			replaced = append(replaced, false)
			continue
		}
		codeResult(&res[i], "update", Updated, codes[k], rerr)
	}
	for k, i := range repl {
		c := codes[nu+k]
		if c == 0 || c == int32(unix.ENOENT) {
			recreate = append(recreate, i)
			replaced = append(replaced, true)
			continue
		}
		codeResult(&res[i], "delete", 0, c, rerr)
	}
	for _, i := range again {
		recreate = append(recreate, i)
		replaced = append(replaced, false)
	}
	if rerr != nil {
		failAll(res, recreate, "create", rerr)
		return res, rerr
	}

	// Round 4: create the replaced and vanished entries. An EEXIST now
	// means another writer raced us: report it.
	exists, err = w.create(ctx, flows, timeouts, recreate, res, Created)
	for k, i := range recreate {
		if replaced[k] && res[i].Op == Created {
			res[i].Op = Replaced
		}
	}
	for _, i := range exists {
		res[i].Op, res[i].Err = Failed, &OpError{Op: "create", Err: unix.EEXIST}
	}
	return res, err
}

// dumpThreshold is the number of existing entries from which Commit reads
// the whole table in one dump rather than one GET per entry: the kernel
// answers a GET with a reply of its own (~5 µs each, measured), while a
// dump packs dozens of entries per message.
const dumpThreshold = 20000

// readExisting reads the kernel's entries for flows[exists...]. codes[k] is
// 0 when found (found[k] set, cur[k] filled) or ENOENT.
func (w *Writer) readExisting(ctx context.Context, flows []flow.Flow, exists []int) (cur []flow.Flow, found []bool, codes []int32, err error) {
	cur = make([]flow.Flow, len(exists))
	found = make([]bool, len(exists))
	if len(exists) < w.dumpThreshold {
		codes, err = w.round(ctx, len(exists), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
			return appendKeyMsg(b, msgCTGet, &flows[exists[k]].Key, seq, fl)
		}, func(k int, m netlink.Message) {
			found[k] = decodeFlow(m, &cur[k])
		})
		return cur, found, codes, err
	}
	want := make(map[flow.Key]int, len(exists))
	for k, i := range exists {
		want[flows[i].Key] = k
	}
	var f flow.Flow
	err = w.dump(ctx, func(m netlink.Message) {
		if !decodeFlow(m, &f) {
			return
		}
		if k, ok := want[f.Key]; ok {
			cur[k], found[k] = f, true
			return
		}
		// An entry whose reply tuple is our original tuple blocks the
		// create as well (a GET by tuple finds it too): it is replaced.
		rk := f.Key
		rk.Orig = f.Reply
		if k, ok := want[rk]; ok && !found[k] {
			cur[k], found[k] = f, true
		}
	})
	codes = make([]int32, len(exists))
	for k := range codes {
		switch {
		case err != nil:
			codes[k] = codePending
		case !found[k]:
			codes[k] = int32(unix.ENOENT)
		}
	}
	return cur, found, codes, err
}

// create runs one round of exclusive creates over flows[idx...]. It fills
// res (ok on success, Failed otherwise) except for EEXIST, whose indexes it
// returns.
func (w *Writer) create(ctx context.Context, flows []flow.Flow, timeouts []uint32, idx []int, res []Result, ok Op) ([]int, error) {
	// One socket: creates serialize on the subsystem mutex (see Sockets).
	socks := w.socks[:1]
	if w.opts.ParallelCreates {
		socks = w.socks
	}
	codes, err := w.roundOn(ctx, socks, w.opts.Batch, len(idx), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		i := idx[k]
		return appendCreate(b, &flows[i], timeouts[i], seq, fl|netlink.Create|netlink.Excl)
	}, nil)
	err = w.roundErr(ctx, err)
	var exists []int
	for k, i := range idx {
		if codes[k] == int32(unix.EEXIST) {
			exists = append(exists, i)
			continue
		}
		codeResult(&res[i], "create", ok, codes[k], err)
	}
	return exists, err
}

// Update updates existing entries only (purge uses it to cap timeouts):
// status, timeout, mark, TCP state (liberal) and sequence adjustment. Each
// flow's Timeout is written as is (no floor); 0 leaves the timeout alone. A
// flow that does not exist fails with ENOENT. When the kernel refuses the
// status word (EBUSY: its entry has SEEN_REPLY or ASSURED, which cannot be
// cleared) the entry is read and the update retried with those bits kept.
func (w *Writer) Update(ctx context.Context, flows []flow.Flow) ([]Result, error) {
	if err := w.begin(); err != nil {
		return nil, err
	}
	defer w.opMu.Unlock()

	res := make([]Result, len(flows))
	todo := make([]int, 0, len(flows))
	for i := range flows {
		res[i].Key = flows[i].Key
		if err := validKey(&flows[i].Key); err != nil {
			res[i].Op, res[i].Err = Failed, &OpError{Op: "update", Err: err}
			continue
		}
		todo = append(todo, i)
	}
	codes, err := w.round(ctx, len(todo), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		f := &flows[todo[k]]
		return appendUpdate(b, f, commitStatus(f), f.Timeout, seq, fl)
	}, nil)
	err = w.roundErr(ctx, err)
	var busy []int
	for k, i := range todo {
		if codes[k] == int32(unix.EBUSY) {
			busy = append(busy, i)
			continue
		}
		codeResult(&res[i], "update", Updated, codes[k], err)
	}
	if err != nil || len(busy) == 0 {
		for _, i := range busy {
			codeResult(&res[i], "update", 0, int32(unix.EBUSY), nil)
		}
		return res, err
	}

	cur := make([]flow.Flow, len(busy))
	found := make([]bool, len(busy))
	codes, err = w.round(ctx, len(busy), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendKeyMsg(b, msgCTGet, &flows[busy[k]].Key, seq, fl)
	}, func(k int, m netlink.Message) {
		found[k] = decodeFlow(m, &cur[k])
	})
	err = w.roundErr(ctx, err)
	var retry []int
	var status []uint32
	for k, i := range busy {
		if codes[k] != 0 || !found[k] {
			if codes[k] == 0 {
				codes[k] = int32(unix.EBUSY)
			}
			codeResult(&res[i], "update", 0, codes[k], err)
			continue
		}
		retry = append(retry, i)
		status = append(status, commitStatus(&flows[i])|cur[k].Status&(flow.StatusSeenReply|flow.StatusAssured))
	}
	if err != nil {
		failAll(res, retry, "update", err)
		return res, err
	}
	codes, err = w.round(ctx, len(retry), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		f := &flows[retry[k]]
		return appendUpdate(b, f, status[k], f.Timeout, seq, fl)
	}, nil)
	err = w.roundErr(ctx, err)
	for k, i := range retry {
		codeResult(&res[i], "update", Updated, codes[k], err)
	}
	return res, err
}

// Delete deletes entries by original tuple and zone. A key that does not
// exist fails with ENOENT.
func (w *Writer) Delete(ctx context.Context, keys []flow.Key) ([]Result, error) {
	if err := w.begin(); err != nil {
		return nil, err
	}
	defer w.opMu.Unlock()

	res := make([]Result, len(keys))
	todo := make([]int, 0, len(keys))
	for i := range keys {
		res[i].Key = keys[i]
		if err := validKey(&keys[i]); err != nil {
			res[i].Op, res[i].Err = Failed, &OpError{Op: "delete", Err: err}
			continue
		}
		todo = append(todo, i)
	}
	codes, err := w.round(ctx, len(todo), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendKeyMsg(b, msgCTDelete, &keys[todo[k]], seq, fl)
	}, nil)
	err = w.roundErr(ctx, err)
	for k, i := range todo {
		codeResult(&res[i], "delete", Deleted, codes[k], err)
	}
	return res, err
}

// Flush deletes every entry of the table, IPv4 and IPv6, all zones.
func (w *Writer) Flush(ctx context.Context) error {
	if err := w.begin(); err != nil {
		return err
	}
	defer w.opMu.Unlock()

	families := [...]uint8{flow.FamilyIPv4, flow.FamilyIPv6}
	// One socket, one batch: the families are flushed in order.
	codes, err := w.roundOn(ctx, w.socks[:1], len(families), len(families), func(b []byte, k int, seq uint32, fl netlink.HeaderFlags) []byte {
		return appendFlush(b, families[k], seq, fl)
	}, nil)
	if err = w.roundErr(ctx, err); err != nil {
		return &OpError{Op: "flush", Err: err}
	}
	for _, c := range codes {
		if c != 0 {
			return &OpError{Op: "flush", Err: unix.Errno(c)}
		}
	}
	return nil
}
