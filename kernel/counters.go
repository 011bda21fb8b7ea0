package kernel

import (
	"encoding/binary"

	"github.com/mdlayher/netlink"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Accounting attributes of a ctnetlink flow message.
const (
	ctaCountersOrig  = 9  // CTA_COUNTERS_ORIG
	ctaCountersReply = 10 // CTA_COUNTERS_REPLY
	ctaTimestamp     = 20 // CTA_TIMESTAMP

	ctaCountersPackets   = 1 // CTA_COUNTERS_PACKETS (be64)
	ctaCountersBytes     = 2 // CTA_COUNTERS_BYTES (be64)
	ctaCounters32Packets = 3 // CTA_COUNTERS32_PACKETS (be32, old kernels)
	ctaCounters32Bytes   = 4 // CTA_COUNTERS32_BYTES

	ctaTimestampStart = 1 // CTA_TIMESTAMP_START (be64 ns)
	ctaTimestampStop  = 2 // CTA_TIMESTAMP_STOP
)

// decodeCounters reads the accounting attributes of a flow message (the
// kernel puts them in DESTROY events and in dumps) into c, without
// allocating. Attributes the kernel did not send leave their fields zero.
func decodeCounters(m netlink.Message, c *flow.Counters) {
	*c = flow.Counters{}
	if len(m.Data) < 4 {
		return
	}
	for b := m.Data[4:]; len(b) > 0; {
		typ, p, rest, ok := nextAttr(b)
		if !ok {
			return
		}
		b = rest
		switch typ {
		case ctaCountersOrig:
			c.HaveAcct = true
			decodeCounterPair(p, &c.OrigPackets, &c.OrigBytes)
		case ctaCountersReply:
			c.HaveAcct = true
			decodeCounterPair(p, &c.ReplyPackets, &c.ReplyBytes)
		case ctaTimestamp:
			forAttrs(p, func(typ uint16, p []byte) {
				if len(p) < 8 {
					return
				}
				switch typ {
				case ctaTimestampStart:
					c.Start = int64(binary.BigEndian.Uint64(p))
				case ctaTimestampStop:
					c.Stop = int64(binary.BigEndian.Uint64(p))
				}
			})
		}
	}
}

func decodeCounterPair(b []byte, packets, bytes *uint64) {
	forAttrs(b, func(typ uint16, p []byte) {
		switch {
		case (typ == ctaCountersPackets || typ == ctaCountersBytes) && len(p) >= 8:
			v := binary.BigEndian.Uint64(p)
			if typ == ctaCountersPackets {
				*packets = v
			} else {
				*bytes = v
			}
		case typ == ctaCounters32Packets && len(p) >= 4:
			*packets = uint64(binary.BigEndian.Uint32(p))
		case typ == ctaCounters32Bytes && len(p) >= 4:
			*bytes = uint64(binary.BigEndian.Uint32(p))
		}
	})
}
