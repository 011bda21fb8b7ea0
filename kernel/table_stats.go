package kernel

import (
	"context"
	"encoding/binary"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Statistics messages (enum cntl_msg_types) and attributes.
const (
	msgCTGetStatsCPU = 4 // IPCTNL_MSG_CT_GET_STATS_CPU
	msgCTGetStats    = 5 // IPCTNL_MSG_CT_GET_STATS

	ctaStatsGlobalEntries    = 1 // CTA_STATS_GLOBAL_ENTRIES
	ctaStatsGlobalMaxEntries = 2 // CTA_STATS_GLOBAL_MAX_ENTRIES
)

// GlobalStats are the table's size figures (IPCTNL_MSG_CT_GET_STATS).
type GlobalStats struct {
	Entries    uint32 // entries in the table (all zones, both families)
	MaxEntries uint32 // nf_conntrack_max; 0 before Linux 4.18
}

// CPUStats are one CPU's conntrack counters (IPCTNL_MSG_CT_GET_STATS_CPU,
// enum ctattr_stats_cpu), as `conntrack -S` prints them. Counters the
// kernel no longer keeps read 0.
type CPUStats struct {
	CPU           uint16
	Found         uint32 // CTA_STATS_FOUND
	Invalid       uint32 // CTA_STATS_INVALID
	Insert        uint32 // CTA_STATS_INSERT
	InsertFailed  uint32 // CTA_STATS_INSERT_FAILED
	Drop          uint32 // CTA_STATS_DROP
	EarlyDrop     uint32 // CTA_STATS_EARLY_DROP
	Error         uint32 // CTA_STATS_ERROR
	SearchRestart uint32 // CTA_STATS_SEARCH_RESTART
	ClashResolve  uint32 // CTA_STATS_CLASH_RESOLVE (Linux 5.11)
	ChainTooLong  uint32 // CTA_STATS_CHAIN_TOOLONG (Linux 5.15)
}

// Stats reads the table's global figures (Linux 4.18 for MaxEntries).
func (t *Table) Stats(ctx context.Context) (GlobalStats, error) {
	var g GlobalStats
	err := t.request(ctx, "stats", func(b []byte, seq uint32, fl netlink.HeaderFlags) []byte {
		e := msgEncoder{b}
		m := e.begin(ctType(msgCTGetStats), fl, seq, unix.AF_UNSPEC)
		e.end(m)
		return e.b
	}, func(m netlink.Message) error {
		if len(m.Data) < 4 {
			return &OpError{Op: "stats", Err: ErrMalformed}
		}
		forAttrs(m.Data[4:], func(typ uint16, p []byte) {
			switch typ {
			case ctaStatsGlobalEntries:
				g.Entries = be32(p)
			case ctaStatsGlobalMaxEntries:
				g.MaxEntries = be32(p)
			}
		})
		return nil
	})
	return g, err
}

// StatsPerCPU reads each CPU's counters (Linux 3.17), in CPU order.
func (t *Table) StatsPerCPU(ctx context.Context) ([]CPUStats, error) {
	e := msgEncoder{}
	m := e.begin(ctType(msgCTGetStatsCPU), netlink.Request|netlink.Dump, dumpSeq, unix.AF_UNSPEC)
	e.end(m)
	var out []CPUStats
	err := dumpOn(ctx, t.netns, "stats", e.b, func(m netlink.Message) error {
		if len(m.Data) < 4 {
			return &OpError{Op: "stats", Err: ErrMalformed}
		}
		// struct nfgenmsg: res_id (big endian) is the CPU.
		s := CPUStats{CPU: binary.BigEndian.Uint16(m.Data[2:4])}
		forAttrs(m.Data[4:], func(typ uint16, p []byte) {
			v := be32(p)
			switch typ {
			case 2:
				s.Found = v
			case 4:
				s.Invalid = v
			case 8:
				s.Insert = v
			case 9:
				s.InsertFailed = v
			case 10:
				s.Drop = v
			case 11:
				s.EarlyDrop = v
			case 12:
				s.Error = v
			case 13:
				s.SearchRestart = v
			case 14:
				s.ClashResolve = v
			case 15:
				s.ChainTooLong = v
			}
		})
		out = append(out, s)
		return nil
	})
	return out, err
}
