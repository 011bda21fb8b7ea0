package sync

// NODE_INFO (type 17): what a node tells its peers about itself beside the
// flows — its software version, the protocol features it has, and the
// digest of its netfilter ruleset (package ruleset), so that a standby
// whose ruleset differs from the master's is found before a failover.
//
// NODE_INFO is not a stream message: it is sent to every peer when a peer's
// epoch is accepted, when the node's info changes, and every
// nodeInfoEvery, so a lost one is made good soon. A peer that does not
// know the type ignores it (no flagStreamExt).
//
// Body (every length checked on decode):
//
//	version   1 byte length, text
//	caps      1 byte count, each 1 byte length, text
//	sum       1 byte length (0 or 32), bytes       the ruleset's digest
//	truncated 1 byte (0 or 1)                       parts left out to fit
//	parts     2 bytes count, each: 1 byte length, name, 8 bytes hash

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
)

// MsgNodeInfo carries a node's NodeInfo.
const MsgNodeInfo MsgType = 17

// nodeInfoEvery is how often a node repeats its NODE_INFO.
const nodeInfoEvery = 10 * time.Second

// Bounds of a NODE_INFO body.
const (
	maxInfoText   = 64  // version, a capability
	maxInfoCaps   = 32  // capabilities
	maxPartName   = 128 // a ruleset part's name
	maxInfoParts  = 512 // ruleset parts
	rulesetSumLen = 32
	partHashLen   = 8
	// maxInfoBody bounds a NODE_INFO body when no MTU is given.
	maxInfoBody = MaxDatagram
)

// NodeInfo is what a node announces about itself.
type NodeInfo struct {
	// Version is the node's software version ("ctsyncd 1.2.3").
	Version string `json:"version,omitempty"`
	// Caps are the protocol features the node has, e.g. "expect".
	Caps []string `json:"caps,omitempty"`
	// Ruleset is the digest of the node's netfilter ruleset; empty when
	// the node does not compare rulesets.
	Ruleset []byte `json:"-"`
	// Parts are the hashes of the ruleset's parts by name (tables,
	// chains, sets), so that peers can name what differs.
	Parts map[string][partHashLen]byte `json:"-"`
	// Truncated is set when parts were left out to fit a datagram: the
	// receiver then knows the rulesets differ but not every part that does.
	Truncated bool `json:"-"`
	// Received is when the info arrived (receiver's side).
	Received time.Time `json:"received,omitzero"`
}

func printableText(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r > unicode.MaxASCII }) < 0
}

// appendNodeInfo encodes info, leaving out ruleset parts (in name order,
// marking it truncated) so that the body stays within budget bytes.
func appendNodeInfo(b []byte, info *NodeInfo, budget int) []byte {
	start := len(b)
	b = appendName(b, info.Version, maxInfoText)
	caps := info.Caps[:min(len(info.Caps), maxInfoCaps)]
	b = append(b, byte(len(caps)))
	for _, c := range caps {
		b = appendName(b, c, maxInfoText)
	}
	if len(info.Ruleset) == rulesetSumLen {
		b = append(b, rulesetSumLen)
		b = append(b, info.Ruleset...)
	} else {
		b = append(b, 0)
	}
	names := slices.Sorted(maps.Keys(info.Parts))
	truncAt := len(b)
	b = append(b, 0, 0, 0) // truncated, count
	n := 0
	for _, name := range names {
		if len(name) > maxPartName || n == maxInfoParts || len(b)-start+1+len(name)+partHashLen > budget {
			b[truncAt] = 1
			continue
		}
		h := info.Parts[name]
		b = appendName(b, name, maxPartName)
		b = append(b, h[:]...)
		n++
	}
	if info.Truncated {
		b[truncAt] = 1
	}
	binary.BigEndian.PutUint16(b[truncAt+1:], uint16(n))
	return b
}

func (r *reader) text(max int) string {
	n := int(r.byte())
	if r.err == nil && n > max {
		r.err = fmt.Errorf("text of %d bytes, at most %d", n, max)
		return ""
	}
	s := string(r.take(n))
	if r.err == nil && !printableText(s) {
		r.err = fmt.Errorf("text %q is not printable ASCII", s)
	}
	return s
}

// decodeNodeInfo decodes a NODE_INFO body into m.Info.
func decodeNodeInfo(b []byte, m *message) error {
	r := &reader{b: b}
	info := &NodeInfo{Version: r.text(maxInfoText)}
	nc := int(r.byte())
	if r.err == nil && nc > maxInfoCaps {
		return fmt.Errorf("%d capabilities, at most %d", nc, maxInfoCaps)
	}
	for range nc {
		info.Caps = append(info.Caps, r.text(maxInfoText))
	}
	switch n := int(r.byte()); {
	case r.err != nil:
	case n == rulesetSumLen:
		info.Ruleset = slices.Clone(r.take(n))
	case n != 0:
		return fmt.Errorf("ruleset digest of %d bytes", n)
	}
	switch t := r.byte(); {
	case r.err != nil:
	case t > 1:
		return fmt.Errorf("truncated flag %d", t)
	default:
		info.Truncated = t == 1
	}
	np := int(r.u16())
	if r.err == nil && np > maxInfoParts {
		return fmt.Errorf("%d ruleset parts, at most %d", np, maxInfoParts)
	}
	if np > 0 {
		info.Parts = make(map[string][partHashLen]byte, np)
	}
	for range np {
		name := r.text(maxPartName)
		h := r.take(partHashLen)
		if r.err != nil {
			break
		}
		info.Parts[name] = [partHashLen]byte(h)
	}
	if r.err != nil {
		return r.err
	}
	if r.off != len(b) {
		return fmt.Errorf("%d trailing bytes", len(b)-r.off)
	}
	m.Info = info
	return nil
}

// SetInfo sets what this node announces and sends it to every peer now.
// info is not retained: it is copied.
func (n *Node) SetInfo(info NodeInfo) {
	info.Caps = slices.Clone(info.Caps)
	info.Ruleset = slices.Clone(info.Ruleset)
	info.Parts = maps.Clone(info.Parts)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.info = &info
	if n.running {
		n.sendInfo()
	}
}

// sendInfo sends this node's NODE_INFO to every peer, if it has one.
func (n *Node) sendInfo() {
	if n.info == nil {
		return
	}
	n.lastInfo = n.now()
	n.sendAll(&message{Type: MsgNodeInfo, Info: n.info, infoBudget: n.opt.MTU - HeaderLen - 64})
}

// receiveInfo keeps a peer's NODE_INFO.
func (n *Node) receiveInfo(pr *peer, m *message, now time.Time) {
	info := *m.Info
	info.Received = now
	pr.info = &info
}

// PeerInfo returns the NODE_INFO last received from each peer, by name.
func (n *Node) PeerInfo() map[string]NodeInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]NodeInfo, len(n.peers))
	for _, pr := range n.peers {
		if pr.info != nil && pr.name != "" {
			out[pr.name] = *pr.info
		}
	}
	return out
}
