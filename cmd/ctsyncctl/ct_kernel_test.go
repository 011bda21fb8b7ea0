//go:build kernel

package main

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// ct runs "ctsyncctl ct ARGS --netns NS" in-process.
func ct(t *testing.T, ns *netnstest.NS, args string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runCT(append(strings.Fields(args), "--netns", ns.Name), false, &out, &errb)
	return code, out.String(), errb.String()
}

func mustCT(t *testing.T, ns *netnstest.NS, args string) string {
	t.Helper()
	code, out, errs := ct(t, ns, args)
	if code != 0 {
		t.Fatalf("ct %s: exit %d: %s", args, code, errs)
	}
	return out
}

// ctool runs conntrack(8) in ns and returns its stdout.
func ctool(t *testing.T, ns *netnstest.NS, args string) string {
	t.Helper()
	cmd := ns.Cmd(append([]string{"conntrack"}, strings.Fields(args)...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("conntrack %s: %v\n%s", args, err, errb.String())
	}
	return out.String()
}

func count(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(ctool(t, ns, "-C")))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// norm drops the timeout (third field) and conntrack's use=N of each line
// and sorts the lines.
func norm(s string) []string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		f = append(f[:2:2], f[3:]...)
		if strings.HasPrefix(f[len(f)-1], "use=") {
			f = f[:len(f)-1]
		}
		lines = append(lines, strings.Join(f, " "))
	}
	slices.Sort(lines)
	return lines
}

// TestKernelCTVerbsAgainstConntrack creates, lists, updates and deletes
// flows with ctsyncctl ct and reads the table back with conntrack(8).
func TestKernelCTVerbsAgainstConntrack(t *testing.T) {
	netnstest.Need(t, "conntrack")
	ns := netnstest.New(t)
	ns.Nft(t, `table inet ctsyncd_nat {
	chain postrouting { type nat hook postrouting priority srcnat; }
	chain prerouting { type nat hook prerouting priority dstnat; }
}
`)
	// create
	for _, c := range []struct{ args, want string }{
		{"create -p tcp -s 10.1.0.1 -d 10.2.0.1 --sport 4000 --dport 443 --state ESTABLISHED -u SEEN_REPLY,ASSURED -m 7 -w 5 -t 1200",
			"ESTABLISHED src=10.1.0.1 dst=10.2.0.1 sport=4000 dport=443 src=10.2.0.1 dst=10.1.0.1 sport=443 dport=4000 [ASSURED] mark=7 zone=5"},
		{"create -p udp -s 10.1.0.2 -d 198.51.100.1 --sport 5000 --dport 53 -r 172.16.0.9 --reply-port-src 8053 -t 1200",
			"src=10.1.0.2 dst=198.51.100.1 sport=5000 dport=53 [UNREPLIED] src=172.16.0.9 dst=10.1.0.2 sport=8053 dport=5000 mark=0"},
		{"create -p tcp -s 10.1.0.3 -d 10.2.0.3 --sport 4001 --dport 80 -q 203.0.113.7 --reply-port-dst 30000 --state ESTABLISHED -u SEEN_REPLY -t 1200",
			"src=10.1.0.3 dst=10.2.0.3 sport=4001 dport=80 src=10.2.0.3 dst=203.0.113.7 sport=80 dport=30000 mark=0"},
		{"create -p icmp -s 10.1.0.4 -d 10.2.0.4 --icmp-type 8 --icmp-code 0 --icmp-id 77 -t 1200",
			"src=10.1.0.4 dst=10.2.0.4 type=8 code=0 id=77 [UNREPLIED] src=10.2.0.4 dst=10.1.0.4 type=0 code=0 id=77 mark=0"},
		{"create -p udp -s fd00::1 -d fd00::2 --sport 1 --dport 2 -m 3 -t 1200",
			"src=fd00::1 dst=fd00::2 sport=1 dport=2 [UNREPLIED] src=fd00::2 dst=fd00::1 sport=2 dport=1 mark=3"},
	} {
		out := mustCT(t, ns, c.args)
		if !strings.Contains(out, c.want) {
			t.Errorf("ct %s printed %q, want %q", c.args, out, c.want)
		}
		if got := ctool(t, ns, "-L"); !strings.Contains(got, c.want) {
			t.Errorf("after ct %s, conntrack -L has no %q:\n%s", c.args, c.want, got)
		}
	}
	if code, _, errs := ct(t, ns, "create -p icmp -s 10.1.0.4 -d 10.2.0.4 --icmp-type 8 --icmp-code 0 --icmp-id 77 -t 1200"); code != 1 || !strings.Contains(errs, "exists") {
		t.Errorf("second create: exit %d, %q", code, errs)
	}

	// list and get, as conntrack -L and -G print them
	for _, args := range []string{"", "-p tcp", "-f ipv6", "-w 5", "-m 7", "-u ASSURED", "-q 203.0.113.7"} {
		_, out, _ := ct(t, ns, "list "+args)
		want := ctool(t, ns, "-L "+args)
		if got, w := norm(out), norm(want); !slices.Equal(got, w) || len(w) == 0 {
			t.Errorf("list %s:\n%s\nconntrack -L:\n%s", args, strings.Join(got, "\n"), strings.Join(w, "\n"))
		}
	}
	_, out, _ := ct(t, ns, "list -o extended -f ipv6")
	if want := ctool(t, ns, "-L -o extended -f ipv6"); !slices.Equal(norm(out), norm(want)) {
		t.Errorf("list -o extended:\n%s\nconntrack:\n%s", out, want)
	}
	get := "-p tcp -s 10.1.0.3 -d 10.2.0.3 --sport 4001 --dport 80"
	if got, want := mustCT(t, ns, "get "+get), ctool(t, ns, "-G "+get); !slices.Equal(norm(got), norm(want)) {
		t.Errorf("get: %q, conntrack -G: %q", got, want)
	}
	if code, _, _ := ct(t, ns, "get -p tcp -s 10.9.0.1 -d 10.2.0.1 --sport 4000 --dport 443"); code != 1 {
		t.Errorf("get of a missing flow: exit %d", code)
	}
	_, out, _ = ct(t, ns, "list -p udp --json")
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil || v["proto"] != "udp" {
			t.Errorf("--json line %q: %v", l, err)
		}
		n++
	}
	if n != 2 {
		t.Errorf("list -p udp --json: %d lines", n)
	}
	if c := strings.TrimSpace(mustCT(t, ns, "count -p udp")); c != "2" {
		t.Errorf("count -p udp = %q", c)
	}

	// update: mark with a mask, timeout, status bits
	if out := mustCT(t, ns, "update -p tcp -s 10.1.0.0/24 -m 0x30/0xf0 -t 3000 -u ASSURED"); !strings.HasPrefix(out, "2 flow") {
		t.Errorf("update printed %q", out)
	}
	got := ctool(t, ns, "-L -p tcp")
	for _, w := range []string{"dport=4000 [ASSURED] mark=55 zone=5", "dport=30000 [ASSURED] mark=48"} {
		if !strings.Contains(got, w) {
			t.Errorf("after update, conntrack -L -p tcp has no %q:\n%s", w, got)
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
		if to, _ := strconv.Atoi(strings.Fields(l)[2]); to < 2900 || to > 3000 {
			t.Errorf("after update -t 3000: %s", l)
		}
	}

	// bad input changes nothing
	before := count(t, ns)
	for _, args := range []string{"delete", "flush", "delete -p tcp --dport x", "delete --bogus", "update -m 1 -p nosuch", "create -p tcp -s 10.7.0.1 -d 10.7.0.2 --sport 1 --dport 2 -t 60"} {
		if code, out, errs := ct(t, ns, args); code != 2 || out != "" || strings.Count(errs, "\n") != 1 {
			t.Errorf("ct %s: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	if n := count(t, ns); n != before {
		t.Fatalf("bad input changed the table: %d flows, were %d", n, before)
	}

	// delete by filter prints the count; flush --all empties the table
	if out := mustCT(t, ns, "delete -p udp"); out != "2 flow entries have been deleted.\n" {
		t.Errorf("delete -p udp printed %q", out)
	}
	if got := ctool(t, ns, "-L -p udp"); got != "" || count(t, ns) != before-2 {
		t.Errorf("after delete -p udp: %q, %d flows", got, count(t, ns))
	}
	mustCT(t, ns, "flush --all")
	if n := count(t, ns); n != 0 {
		t.Errorf("%d flows after flush --all", n)
	}
}

// expects lists the expectations of both families with conntrack(8),
// whose -L expect shows IPv4 only unless told -f ipv6.
func expects(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	return ctool(t, ns, "-L expect -f ipv4") + ctool(t, ns, "-L expect -f ipv6")
}

// normExpect drops the timeout (first field) of `conntrack -L expect`
// lines and sorts them.
func normExpect(s string) []string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			lines = append(lines, strings.Join(f[1:], " "))
		}
	}
	slices.Sort(lines)
	return lines
}

// TestKernelCTExpectAgainstConntrack creates expectations with ctsyncctl
// ct expect create on masters with the ftp helper and reads them back
// with conntrack -L expect; deletes and flushes them.
func TestKernelCTExpectAgainstConntrack(t *testing.T) {
	netnstest.Need(t, "conntrack")
	ns := netnstest.New(t)
	for _, m := range []string{
		"create -p tcp -s 10.1.0.1 -d 10.2.0.1 --sport 40000 --dport 21 --state ESTABLISHED -u SEEN_REPLY,ASSURED --helper ftp -t 3000",
		"create -p tcp -s 10.1.0.2 -d 10.2.0.1 --sport 40001 --dport 21 --state ESTABLISHED -u SEEN_REPLY,ASSURED --helper ftp -t 3000",
		"create -p tcp -s fd00::1 -d fd00::2 --sport 40002 --dport 21 --state ESTABLISHED -u SEEN_REPLY,ASSURED --helper ftp -t 3000",
		"create -p tcp -s 10.1.0.3 -d 10.2.0.1 --sport 40003 --dport 21 --state ESTABLISHED -u SEEN_REPLY,ASSURED -t 3000",
	} {
		mustCT(t, ns, m)
	}
	for _, c := range []struct{ args, want string }{
		{"expect create -p tcp -s 10.1.0.1 -d 10.2.0.1 --sport 40000 --dport 21 --tuple-src 10.1.0.1 --tuple-dst 10.2.0.1 --tuple-port-dst 50123 -t 300",
			"proto=6 src=10.1.0.1 dst=10.2.0.1 sport=0 dport=50123 mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=65535 dport=65535 master-src=10.1.0.1 master-dst=10.2.0.1 sport=40000 dport=21 class=0 helper=ftp"},
		{"expect create -p tcp -s 10.1.0.2 -d 10.2.0.1 --sport 40001 --dport 21 --tuple-src 10.1.0.2 --tuple-dst 10.2.0.1 --tuple-port-dst 50124 --mask-port-src 0 -t 300",
			"proto=6 src=10.1.0.2 dst=10.2.0.1 sport=0 dport=50124 mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 master-src=10.1.0.2 master-dst=10.2.0.1 sport=40001 dport=21 class=0 helper=ftp"},
		{"expect create -p tcp -s fd00::1 -d fd00::2 --sport 40002 --dport 21 --tuple-src fd00::1 --tuple-dst fd00::2 --tuple-port-dst 50125 -t 300",
			"proto=6 src=fd00::1 dst=fd00::2 sport=0 dport=50125 mask-src=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff mask-dst=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff sport=65535 dport=65535 master-src=fd00::1 master-dst=fd00::2 sport=40002 dport=21 class=0 helper=ftp"},
	} {
		mustCT(t, ns, c.args)
		if got := normExpect(expects(t, ns)); !slices.Contains(got, c.want) {
			t.Errorf("after ct %s, conntrack -L expect has no %q:\n%s", c.args, c.want, strings.Join(got, "\n"))
		}
	}
	_, out, _ := ct(t, ns, "expect list")
	if got, want := normExpect(out), normExpect(expects(t, ns)); !slices.Equal(got, want) || len(want) != 3 {
		t.Errorf("expect list:\n%s\nconntrack -L expect:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, out, _ := ct(t, ns, "expect list -f ipv6 --json"); strings.Count(out, "\n") != 1 || !strings.Contains(out, `"dport":50125`) {
		t.Errorf("expect list -f ipv6 --json: %q", out)
	}
	// A master without a helper, or none at all: exit 1.
	for _, args := range []string{
		"expect create -p tcp -s 10.1.0.3 -d 10.2.0.1 --sport 40003 --dport 21 --tuple-src 10.1.0.3 --tuple-dst 10.2.0.1 --tuple-port-dst 50126 -t 300",
		"expect create -p tcp -s 10.1.0.9 -d 10.2.0.1 --sport 40009 --dport 21 --tuple-src 10.1.0.9 --tuple-dst 10.2.0.1 --tuple-port-dst 50127 -t 300",
	} {
		if code, _, errs := ct(t, ns, args); code != 1 {
			t.Errorf("ct %s: exit %d, %q", args, code, errs)
		}
	}
	// Bad input: exit 2, nothing changed.
	for _, args := range []string{"expect delete", "expect flush", "expect delete -m 1", "expect create -p tcp -s 10.1.0.1 -d 10.2.0.1 --sport 40000 --dport 21 --tuple-src 10.1.0.1 -t 300", "expect list --tuple-src 1.2.3.4"} {
		if code, out, errs := ct(t, ns, args); code != 2 || out != "" || strings.Count(errs, "\n") != 1 {
			t.Errorf("ct %s: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	if n := len(normExpect(expects(t, ns))); n != 3 {
		t.Fatalf("bad input changed the expectations: %d left", n)
	}
	if out := mustCT(t, ns, "expect delete -f ipv4 -d 10.2.0.1"); out != "2 expectations have been deleted.\n" {
		t.Errorf("expect delete printed %q", out)
	}
	if got := normExpect(expects(t, ns)); len(got) != 1 || !strings.Contains(got[0], "fd00::2") {
		t.Errorf("after expect delete: %q", got)
	}
	mustCT(t, ns, "expect flush --all")
	if got := expects(t, ns); got != "" {
		t.Errorf("after expect flush --all: %q", got)
	}
}
