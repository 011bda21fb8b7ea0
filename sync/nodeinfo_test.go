package sync

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// A ruleset with more parts than a datagram holds is sent truncated, and
// marked so.
func TestNodeInfoTruncated(t *testing.T) {
	info := &NodeInfo{Version: "x", Ruleset: bytes.Repeat([]byte{1}, rulesetSumLen), Parts: map[string][partHashLen]byte{}}
	for i := range 300 {
		info.Parts[fmt.Sprintf("chain inet filter chain-number-%03d", i)] = [partHashLen]byte{byte(i)}
	}
	b := appendNodeInfo(nil, info, 1300)
	if len(b) > 1300 {
		t.Fatalf("body of %d bytes over its budget", len(b))
	}
	var m message
	if err := decodeNodeInfo(b, &m); err != nil {
		t.Fatal(err)
	}
	if !m.Info.Truncated || len(m.Info.Parts) == 0 || len(m.Info.Parts) >= 300 {
		t.Errorf("truncated %v with %d parts", m.Info.Truncated, len(m.Info.Parts))
	}
	// Bad input: a non-printable version, too many parts.
	bad := appendNodeInfo(nil, &NodeInfo{Version: "a\x1bb"}, 1300)
	if err := decodeNodeInfo(bad, &m); err == nil {
		t.Error("a version with an escape decoded")
	}
	if err := decodeNodeInfo([]byte{0, 0, 0, 0, 0xff, 0xff}, &m); err == nil {
		t.Error("65535 parts decoded")
	}
}

// Two nodes learn each other's NODE_INFO, and a change is sent at once.
func TestNodeInfoExchanged(t *testing.T) {
	net := NewMemNetwork(1)
	a := start(t, net, testOptions("a", &testKey), nil)
	b := start(t, net, testOptions("b", &testKey), nil)
	sum := bytes.Repeat([]byte{7}, rulesetSumLen)
	a.n.SetInfo(NodeInfo{Version: "ctsyncd a", Caps: []string{"expect"}, Ruleset: sum,
		Parts: map[string][partHashLen]byte{"chain inet filter forward": {1}}})
	eventually(t, 10*time.Second, "b to hold a's info", func() bool {
		i, ok := b.n.PeerInfo()["a"]
		return ok && i.Version == "ctsyncd a" && bytes.Equal(i.Ruleset, sum) && i.Parts["chain inet filter forward"] == [partHashLen]byte{1}
	})
	a.n.SetInfo(NodeInfo{Version: "ctsyncd a", Ruleset: sum, Parts: map[string][partHashLen]byte{"chain inet filter forward": {2}}})
	eventually(t, 5*time.Second, "b to hold a's new info", func() bool {
		return b.n.PeerInfo()["a"].Parts["chain inet filter forward"] == [partHashLen]byte{2}
	})
}
