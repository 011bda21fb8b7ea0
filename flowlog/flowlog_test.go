package flowlog

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

func udpFlow() *flow.Flow {
	f := &flow.Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoUDP}}
	f.Orig.Src = flow.AddrFrom(netip.MustParseAddr("10.0.0.1"))
	f.Orig.Dst = flow.AddrFrom(netip.MustParseAddr("10.0.1.1"))
	f.Orig.SrcPort, f.Orig.DstPort = 40000, 53
	f.Reply = f.Orig.Invert(f.Proto)
	f.Status = flow.StatusConfirmed | flow.StatusSeenReply
	f.Mark = 7
	return f
}

var at = time.Date(2026, 12, 1, 22, 0, 0, 0, time.UTC)

func TestLineExtended(t *testing.T) {
	c := &flow.Counters{HaveAcct: true, OrigPackets: 3, OrigBytes: 180, ReplyPackets: 2, ReplyBytes: 300,
		Start: at.Add(-90 * time.Second).UnixNano(), Stop: at.UnixNano()}
	b, err := Line(FormatExtended, at, udpFlow(), c)
	if err != nil {
		t.Fatal(err)
	}
	want := "2026-12-01T22:00:00Z [DESTROY] ipv4     2 udp      17 src=10.0.0.1 dst=10.0.1.1 sport=40000 dport=53 packets=3 bytes=180 " +
		"src=10.0.1.1 dst=10.0.0.1 sport=53 dport=40000 packets=2 bytes=300 mark=7 zone=0 delta-time=90"
	if string(b) != want {
		t.Errorf("got\n%s\nwant\n%s", b, want)
	}
	// Without accounting the counters are left out, not printed as zero.
	b, _ = Line(FormatExtended, at, udpFlow(), &flow.Counters{})
	if strings.Contains(string(b), "packets=") {
		t.Errorf("counters printed without accounting: %s", b)
	}
}

func TestLineJSON(t *testing.T) {
	c := &flow.Counters{HaveAcct: true, OrigPackets: 3, OrigBytes: 180}
	b, err := Line(FormatJSON, at, udpFlow(), c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{"event": "destroy", "proto": "udp", "dport": 53.0, "orig_packets": 3.0, "orig_bytes": 180.0, "reply_packets": 0.0, "mark": 7.0} {
		if m[k] != v {
			t.Errorf("%s = %v, want %v in %s", k, m[k], v, b)
		}
	}
}

// Reopen after a rename (what logrotate does) writes to a new file; lines
// written before are in the old one.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "flows.log")
	l, err := Open(p, FormatExtended)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Log(at, udpFlow(), &flow.Counters{})
	if err := os.Rename(p, p+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Log(at, udpFlow(), &flow.Counters{})
	l.Log(at, udpFlow(), &flow.Counters{})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{p + ".1": 1, p: 2} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(b), "\n"); n != want {
			t.Errorf("%s: %d lines, want %d", name, n, want)
		}
	}
	if lines, errs := l.Stats(); lines != 3 || errs != 0 {
		t.Errorf("stats %d lines %d errors", lines, errs)
	}
}

func TestOpenRefusesSymlinkAndBadFormat(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, nil, 0o600)
	link := filepath.Join(dir, "flows.log")
	os.Symlink(target, link)
	if _, err := Open(link, FormatExtended); err == nil {
		t.Error("opened the log through a symlink")
	}
	if _, err := Open(filepath.Join(dir, "x.log"), "csv"); err == nil || !strings.Contains(err.Error(), `"csv" is not one of`) {
		t.Errorf("bad format: %v", err)
	}
}
