package kernel

import (
	"bytes"
	"encoding/binary"

	"github.com/mdlayher/netlink"

	"github.com/ctsyncd/ctsyncd/flow"
)

// decodeFlow decodes a ctnetlink flow message (an event or a dump record)
// into f without allocating, except for the rare attributes kept in
// flow.Extra. It replaces ti-mo's decoder on the hot paths (events, dumps),
// where ti-mo's allocations per attribute were most of the CPU; it is
// checked against ti-mo (internal/timoconv) on real tables in the kernel tier
// and by fuzzing. ok is false when the message has no usable original tuple.
func decodeFlow(m netlink.Message, f *flow.Flow) bool {
	*f = flow.Flow{}
	if len(m.Data) < 4 {
		return false
	}
	var (
		x                   flow.Extra
		haveOrig, haveReply bool
		replyProto          uint8
	)
	for b := m.Data[4:]; len(b) > 0; {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return false
		}
		b = rest
		switch typ {
		case ctaTupleOrig:
			haveOrig = decodeTuple(p, &f.Orig, &f.Proto)
		case ctaTupleReply:
			haveReply = decodeTuple(p, &f.Reply, &replyProto)
		case ctaStatus:
			f.Status = be32(p)
		case ctaTimeout:
			f.Timeout = be32(p)
		case ctaMark:
			f.Mark = be32(p)
		case ctaZone:
			if len(p) >= 2 {
				f.Zone = binary.BigEndian.Uint16(p)
			}
		case ctaProtoinfo:
			decodeProtoinfo(p, f, &x)
		case ctaHelp:
			forAttrs(p, func(typ uint16, p []byte) {
				if typ == ctaHelpName {
					if i := bytes.IndexByte(p, 0); i >= 0 {
						p = p[:i]
					}
					x.Helper = string(p)
				}
			})
		case ctaLabels:
			copy(x.Labels[:], p)
		case ctaSeqAdjOrig:
			x.SeqAdjOrig = decodeSeqAdj(p)
		case ctaSeqAdjReply:
			x.SeqAdjReply = decodeSeqAdj(p)
		case ctaSynproxy:
			forAttrs(p, func(typ uint16, p []byte) {
				switch typ {
				case 1: // CTA_SYNPROXY_ISN
					x.SynProxy.ISN = be32(p)
				case 2: // CTA_SYNPROXY_ITS
					x.SynProxy.ITS = be32(p)
				case 3: // CTA_SYNPROXY_TSOFF
					x.SynProxy.TSOff = be32(p)
				}
			})
		}
	}
	if !haveOrig {
		return false
	}
	if m.Data[0] == flow.FamilyIPv6 {
		f.Family = flow.FamilyIPv6
	} else {
		f.Family = flow.FamilyIPv4
	}
	if !haveReply {
		f.Reply = f.Orig.Invert(f.Proto)
	}
	if !x.IsZero() {
		e := x // only flows with extras cost an allocation
		f.Extra = &e
	}
	return true
}

func be32(p []byte) uint32 {
	if len(p) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(p)
}

// forAttrs calls fn for each attribute of a nested attribute's payload.
func forAttrs(b []byte, fn func(typ uint16, p []byte)) {
	for len(b) > 0 {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return
		}
		fn(typ, p)
		b = rest
	}
}

func decodeProtoinfo(b []byte, f *flow.Flow, x *flow.Extra) {
	forAttrs(b, func(typ uint16, p []byte) {
		switch typ {
		case ctaProtoinfoTCP:
			forAttrs(p, func(typ uint16, p []byte) {
				if len(p) < 1 {
					return
				}
				switch typ {
				case ctaTCPState:
					f.TCP.State = p[0]
				case ctaTCPWScaleOrig:
					f.TCP.WScaleOrig = p[0]
				case ctaTCPWScaleReply:
					f.TCP.WScaleRep = p[0]
				case ctaTCPFlagsOrig: // struct nf_ct_tcp_flags {u8 flags; u8 mask;}
					f.TCP.FlagsOrig = p[0]
				case ctaTCPFlagsReply:
					f.TCP.FlagsRep = p[0]
				}
			})
		case ctaProtoinfoSCTP:
			forAttrs(p, func(typ uint16, p []byte) {
				switch typ {
				case ctaSCTPState:
					if len(p) >= 1 {
						x.SCTP.State = p[0]
					}
				case ctaSCTPVTagOrig:
					x.SCTP.VTagOriginal = be32(p)
				case ctaSCTPVTagReply:
					x.SCTP.VTagReply = be32(p)
				}
			})
		case ctaProtoinfoDCCP:
			forAttrs(p, func(typ uint16, p []byte) {
				switch typ {
				case ctaDCCPState:
					if len(p) >= 1 {
						x.DCCP.State = p[0]
					}
				case ctaDCCPRole:
					if len(p) >= 1 {
						x.DCCP.Role = p[0]
					}
				case ctaDCCPHandshakeSeq:
					if len(p) >= 8 {
						x.DCCP.HandshakeSeq = binary.BigEndian.Uint64(p)
					}
				}
			})
		}
	})
}

func decodeSeqAdj(b []byte) flow.SeqAdj {
	var s flow.SeqAdj
	forAttrs(b, func(typ uint16, p []byte) {
		switch typ {
		case ctaSeqAdjCorrectionPos:
			s.CorrectionPos = be32(p)
		case ctaSeqAdjOffsetBefore:
			s.OffsetBefore = int32(be32(p))
		case ctaSeqAdjOffsetAfter:
			s.OffsetAfter = int32(be32(p))
		}
	})
	return s
}

// eventType tells a conntrack event's kind from its netlink header.
func eventType(h netlink.Header) (EventType, bool) {
	if h.Type>>8 != subsysCTNetlink {
		return 0, false
	}
	switch h.Type & 0xff {
	case msgCTNew:
		if h.Flags&(netlink.Create|netlink.Excl) != 0 {
			return EventNew, true
		}
		return EventUpdate, true
	case msgCTDelete:
		return EventDestroy, true
	}
	return 0, false
}
