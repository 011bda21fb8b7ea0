package kernel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
)

// nfnetlink_queue (linux/netfilter/nfnetlink_queue.h): a queue consumer
// binds a queue number with a CONFIG message, receives PACKET messages and
// answers each with a VERDICT naming the packet id.
const (
	nfqnlMsgPacket  = 0 // NFQNL_MSG_PACKET
	nfqnlMsgVerdict = 1 // NFQNL_MSG_VERDICT
	nfqnlMsgConfig  = 2 // NFQNL_MSG_CONFIG

	nfqaPacketHdr  = 1  // NFQA_PACKET_HDR: struct nfqnl_msg_packet_hdr
	nfqaVerdictHdr = 2  // NFQA_VERDICT_HDR: struct nfqnl_msg_verdict_hdr
	nfqaMark       = 3  // NFQA_MARK
	nfqaIfIndexIn  = 5  // NFQA_IFINDEX_INDEV
	nfqaIfIndexOut = 6  // NFQA_IFINDEX_OUTDEV
	nfqaPayload    = 10 // NFQA_PAYLOAD
	nfqaCT         = 11 // NFQA_CT: the packet's conntrack entry, CTA_* attributes
	nfqaCTInfo     = 12 // NFQA_CT_INFO: enum ip_conntrack_info
	nfqaCapLen     = 13 // NFQA_CAP_LEN

	nfqaCfgCmd    = 1 // NFQA_CFG_CMD: struct nfqnl_msg_config_cmd
	nfqaCfgParams = 2 // NFQA_CFG_PARAMS: struct nfqnl_msg_config_params
	nfqaCfgMaxLen = 3 // NFQA_CFG_QUEUE_MAXLEN
	nfqaCfgMask   = 4 // NFQA_CFG_MASK: which flags NFQA_CFG_FLAGS sets
	nfqaCfgFlags  = 5 // NFQA_CFG_FLAGS

	nfqnlCfgCmdBind   = 1 // NFQNL_CFG_CMD_BIND
	nfqnlCfgCmdUnbind = 2 // NFQNL_CFG_CMD_UNBIND

	nfqnlCopyPacket = 2 // NFQNL_COPY_PACKET

	// NFQA_CFG_F_FAIL_OPEN: when the queue is full, the kernel accepts
	// packets instead of dropping them. NFQA_CFG_F_CONNTRACK: packets come
	// with their conntrack entry (NFQA_CT).
	nfqaCfgFFailOpen  = 1
	nfqaCfgFConntrack = 2

	nfDrop   = 0 // NF_DROP
	nfAccept = 1 // NF_ACCEPT

	// ctInfoNew is IP_CT_NEW, ctInfoEstablishedReply IP_CT_ESTABLISHED_REPLY
	// (IP_CT_IS_REPLY + IP_CT_ESTABLISHED).
	ctInfoEstablished      = 0
	ctInfoNew              = 2
	ctInfoEstablishedReply = 3
)

// subsysQueue is NFNL_SUBSYS_QUEUE (linux/netfilter/nfnetlink.h).
const subsysQueue = 3

// queueMsgType is the netlink message type of an nfnetlink_queue message.
func queueMsgType(msg uint8) uint16 {
	return subsysQueue<<8 | uint16(msg)
}

// QueueConfig is what a CONFIG message sets on a bound queue.
type QueueConfig struct {
	// CopyRange is how many bytes of each packet are copied to user space
	// (copy mode NFQNL_COPY_PACKET). Default 128: enough for the headers.
	CopyRange uint32
	// MaxLen is how many packets the kernel holds for the queue before it
	// fails open. Default 4096.
	MaxLen uint32

	noConntrack bool // do not ask for NFQA_CT (the kernel cannot send it)
}

// QueuePacket is one packet a queue hands over. Payload aliases the
// socket's buffer: it is valid only during the callback.
type QueuePacket struct {
	ID     uint32 // the kernel's packet id, for the verdict
	Family uint8  // flow.FamilyIPv4 or flow.FamilyIPv6
	Hook   uint8  // netfilter hook number
	Mark   uint32
	InDev  uint32
	OutDev uint32
	CTInfo uint32 // enum ip_conntrack_info, when the kernel sent the entry
	// HasFlow: Flow is the packet's conntrack entry, as the kernel sent it
	// (NFQA_CT; its Timeout may be 0 before confirmation) or, on kernels
	// without it, as read from the headers (flowFromHeaders).
	HasFlow     bool
	FromHeaders bool
	Reply       bool // the packet travels in its flow's reply direction
	Flow        flow.Flow
	Payload     []byte
}

// appendQueueConfig appends one CONFIG message for queue num: a bind (or
// unbind) command, or with cmd 0 the copy parameters, queue length and the
// FAIL_OPEN and CONNTRACK flags.
func appendQueueConfig(b []byte, seq uint32, num uint16, cmd uint8, cfg QueueConfig) []byte {
	e := msgEncoder{b: b}
	start := e.begin(queueMsgType(nfqnlMsgConfig), netlink.Request|netlink.Acknowledge, seq, unix.AF_UNSPEC)
	binary.BigEndian.PutUint16(e.b[start+nlmsgHdrLen+2:], num) // res_id: the queue
	if cmd != 0 {
		// struct nfqnl_msg_config_cmd: command, pad, pf (big endian; unused
		// by BIND since Linux 3.8).
		e.hdr(nfqaCfgCmd, 4)
		e.b = append(e.b, cmd, 0, 0, 0)
	} else {
		// struct nfqnl_msg_config_params (packed, 5 bytes): copy_range, copy_mode.
		e.hdr(nfqaCfgParams, 5)
		e.b = binary.BigEndian.AppendUint32(e.b, cfg.CopyRange)
		e.b = append(e.b, nfqnlCopyPacket)
		e.pad()
		e.hdr(nfqaCfgMaxLen, 4)
		e.b = binary.BigEndian.AppendUint32(e.b, cfg.MaxLen)
		flags := uint32(nfqaCfgFFailOpen)
		if !cfg.noConntrack {
			flags |= nfqaCfgFConntrack
		}
		e.hdr(nfqaCfgFlags, 4)
		e.b = binary.BigEndian.AppendUint32(e.b, flags)
		e.hdr(nfqaCfgMask, 4)
		e.b = binary.BigEndian.AppendUint32(e.b, flags)
	}
	e.end(start)
	return e.b
}

// appendVerdict appends a VERDICT message for packet id of queue num.
func appendVerdict(b []byte, seq uint32, num uint16, id uint32, verdict uint32) []byte {
	e := msgEncoder{b: b}
	start := e.begin(queueMsgType(nfqnlMsgVerdict), netlink.Request, seq, unix.AF_UNSPEC)
	binary.BigEndian.PutUint16(e.b[start+nlmsgHdrLen+2:], num)
	e.hdr(nfqaVerdictHdr, 8)
	e.b = binary.BigEndian.AppendUint32(e.b, verdict)
	e.b = binary.BigEndian.AppendUint32(e.b, id)
	e.end(start)
	return e.b
}

// decodeQueuePacket decodes a PACKET message. It fails on a message that
// is not a PACKET of the queue subsystem or has no packet header.
func decodeQueuePacket(m netlink.Message, p *QueuePacket) error {
	*p = QueuePacket{}
	if uint16(m.Header.Type) != queueMsgType(nfqnlMsgPacket) {
		return fmt.Errorf("%w: message type %#x is not an nfqueue PACKET", ErrMalformed, uint16(m.Header.Type))
	}
	if len(m.Data) < 4 {
		return fmt.Errorf("%w: nfqueue PACKET without nfgenmsg", ErrMalformed)
	}
	family := m.Data[0]
	switch family {
	case unix.AF_INET:
		p.Family = flow.FamilyIPv4
	case unix.AF_INET6:
		p.Family = flow.FamilyIPv6
	default:
		p.Family = family
	}
	var haveHdr bool
	var ct []byte
	for b := m.Data[4:]; len(b) > 0; {
		typ, v, rest, ok := nextAttr(b)
		if !ok {
			return fmt.Errorf("%w: truncated nfqueue attribute", ErrMalformed)
		}
		b = rest
		switch typ {
		case nfqaPacketHdr:
			if len(v) < 7 {
				return fmt.Errorf("%w: short nfqueue packet header", ErrMalformed)
			}
			p.ID = binary.BigEndian.Uint32(v)
			p.Hook = v[6]
			haveHdr = true
		case nfqaMark:
			p.Mark = be32(v)
		case nfqaIfIndexIn:
			p.InDev = be32(v)
		case nfqaIfIndexOut:
			p.OutDev = be32(v)
		case nfqaPayload:
			p.Payload = v
		case nfqaCT:
			ct = v
		case nfqaCTInfo:
			p.CTInfo = be32(v)
		}
	}
	if !haveHdr {
		return fmt.Errorf("%w: nfqueue PACKET without packet header", ErrMalformed)
	}
	if ct != nil && (p.Family == flow.FamilyIPv4 || p.Family == flow.FamilyIPv6) {
		// The CTA_* attributes of NFQA_CT are those of a ctnetlink message;
		// decodeFlow wants them behind an nfgenmsg carrying the family.
		var buf [4]byte
		buf[0] = family
		msg := netlink.Message{Data: append(buf[:], ct...)}
		p.HasFlow = decodeFlow(msg, &p.Flow)
		p.Reply = p.HasFlow && p.CTInfo >= ctInfoEstablishedReply
	}
	if !p.HasFlow && p.Payload != nil {
		p.Flow, p.Reply, p.HasFlow = flowFromHeaders(p.Family, p.Payload)
		p.FromHeaders = p.HasFlow
	}
	return nil
}

// QueueOptions configure OpenQueue.
type QueueOptions struct {
	Num    uint16 // the queue number (the rule's --queue-num)
	Config QueueConfig
	// NetNS, when non-zero, is a file descriptor of the network namespace
	// whose queue is bound (tests); 0: the caller's.
	NetNS int
	// ReadBuffer is the socket's receive buffer; default 8 MiB.
	ReadBuffer int
}

// Queue is a bound nfnetlink_queue: Run hands over each packet, Verdict
// answers it. Verdict may be called from any goroutine.
type Queue struct {
	num  uint16
	s    *rawSocket
	mu   sync.Mutex // guards seq and out (verdicts)
	seq  uint32
	out  []byte
	once sync.Once

	conntrack bool // packets come with their conntrack entry
}

// Conntrack tells whether the kernel hands each packet's conntrack entry
// over (NFQA_CT); without it flows are read from the packet headers.
func (q *Queue) Conntrack() bool { return q.conntrack }

// ErrQueueUnsupported is returned by OpenQueue when the kernel has no
// nfnetlink_queue.
var ErrQueueUnsupported = errors.New("the kernel has no nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE, module nfnetlink_queue)")

// OpenQueue binds queue opts.Num, in copy mode with the FAIL_OPEN and
// CONNTRACK flags. A queue another process has bound fails with EBUSY.
func OpenQueue(opts QueueOptions) (*Queue, error) {
	if opts.Config.CopyRange == 0 {
		opts.Config.CopyRange = 128
	}
	if opts.Config.MaxLen == 0 {
		opts.Config.MaxLen = 4096
	}
	if opts.ReadBuffer == 0 {
		opts.ReadBuffer = 8 << 20
	}
	s, err := dialNetfilter(opts.NetNS, 0)
	if err != nil {
		return nil, err
	}
	if err := s.setReadBuffer(opts.ReadBuffer); err != nil {
		s.close()
		return nil, err
	}
	// A full receive buffer must not be reported as an error on reads:
	// the kernel fails open; ENOBUFS is then only noise.
	_ = s.conn.SetOption(netlink.NoENOBUFS, true)
	q := &Queue{num: opts.Num, s: s, seq: uint32(time.Now().UnixNano())}
	if err := q.config(nfqnlCfgCmdBind, opts.Config); err != nil {
		s.close()
		switch {
		case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("bind NFQUEUE %d: the queue is bound by another process: %w", opts.Num, err)
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EPROTONOSUPPORT):
			return nil, fmt.Errorf("bind NFQUEUE %d: %w: %v", opts.Num, ErrQueueUnsupported, err)
		}
		return nil, fmt.Errorf("bind NFQUEUE %d: %w", opts.Num, err)
	}
	err = q.config(0, opts.Config)
	q.conntrack = err == nil
	if errors.Is(err, unix.EOPNOTSUPP) {
		// No ctnetlink glue (CONFIG_NETFILTER_NETLINK_GLUE_CT): no NFQA_CT.
		opts.Config.noConntrack = true
		err = q.config(0, opts.Config)
	}
	if err != nil {
		q.Close()
		return nil, fmt.Errorf("configure NFQUEUE %d (copy mode, fail-open, conntrack): %w", opts.Num, err)
	}
	return q, nil
}

// config sends one CONFIG message and waits for its acknowledgement.
func (q *Queue) config(cmd uint8, cfg QueueConfig) error {
	q.mu.Lock()
	q.seq++
	seq := q.seq
	b := appendQueueConfig(nil, seq, q.num, cmd, cfg)
	q.mu.Unlock()
	if err := q.send(b); err != nil {
		return err
	}
	for {
		var code unix.Errno
		done := false
		err := q.s.recv(func(m netlink.Message) error {
			if m.Header.Type == netlink.Error && m.Header.Sequence == seq {
				code, done = errnoOf(m), true
			}
			return nil
		})
		if err != nil {
			return err
		}
		if done {
			if code != 0 {
				return code
			}
			return nil
		}
	}
}

func (q *Queue) send(b []byte) error {
	var serr error
	err := q.s.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN && serr != unix.EWOULDBLOCK
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return &OpError{Op: "nfqueue send", Err: err}
	}
	return nil
}

// Accept releases packet id: the packet continues as if the queue rule had
// accepted it. ctsyncd never drops a queued packet.
func (q *Queue) Accept(id uint32) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seq++
	q.out = appendVerdict(q.out[:0], q.seq, q.num, id, nfAccept)
	return q.send(q.out)
}

// Run reads packets until ctx ends or the socket fails, calling fn for
// each on the reading goroutine; fn must not block. A message that does
// not decode is skipped. Run returns nil when ctx ended.
func (q *Queue) Run(ctx context.Context, fn func(p *QueuePacket)) error {
	stop := context.AfterFunc(ctx, func() { _ = q.s.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var p QueuePacket
	for {
		err := q.s.recv(func(m netlink.Message) error {
			if decodeQueuePacket(m, &p) == nil {
				fn(&p)
			}
			return nil
		})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, ErrOverrun) {
			return fmt.Errorf("nfqueue %d: %w", q.num, err)
		}
	}
}

// Close unbinds the queue and closes the socket. Packets still queued are
// accepted by the kernel (the queue is gone and the rule's --queue-bypass
// applies to later ones).
func (q *Queue) Close() error {
	var err error
	q.once.Do(func() {
		q.mu.Lock()
		q.seq++
		b := appendQueueConfig(nil, q.seq, q.num, nfqnlCfgCmdUnbind, QueueConfig{})
		q.mu.Unlock()
		_ = q.send(b)
		err = q.s.close()
	})
	return err
}

// QueueTargets are the ways this kernel can send packets to a queue.
type QueueTargets struct {
	Xtables  bool // the xtables NFQUEUE target (iptables, iptables-legacy)
	Nftables bool // nftables' queue expression (nft_queue)
}

// ProbeQueueTargets reports which rule front-ends can feed a queue: the
// xtables target when it is registered (/proc/net/ip_tables_targets) or its
// module exists, nftables' queue expression when nft_queue is loaded,
// built in or installed as a module.
func ProbeQueueTargets() QueueTargets {
	var t QueueTargets
	if b, err := os.ReadFile("/proc/net/ip_tables_targets"); err == nil {
		for _, l := range strings.Fields(string(b)) {
			if l == "NFQUEUE" {
				t.Xtables = true
			}
		}
	}
	if _, err := os.Stat("/sys/module/nft_queue"); err == nil {
		t.Nftables = true
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		rel := string(bytes.TrimRight(uts.Release[:], "\x00"))
		for _, f := range []string{"modules.dep", "modules.builtin"} {
			b, err := os.ReadFile("/lib/modules/" + rel + "/" + f)
			if err != nil {
				continue
			}
			t.Xtables = t.Xtables || bytes.Contains(b, []byte("/xt_NFQUEUE.ko"))
			t.Nftables = t.Nftables || bytes.Contains(b, []byte("/nft_queue.ko"))
		}
	}
	return t
}
