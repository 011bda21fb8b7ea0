package conntrack

import (
	"errors"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

func v4(s string) [16]byte { return flow.AddrFrom(netip.MustParseAddr(s)) }

// testFlows is a small table: TCP, UDP, ICMP, IPv6, SNAT, DNAT, zone, mark,
// labels and a helper.
func testFlows() []Flow {
	tcp := Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP,
		Orig: flow.Tuple{Src: v4("10.0.0.1"), Dst: v4("192.0.2.1"), SrcPort: 40000, DstPort: 22}},
		Status: flow.StatusAssured | flow.StatusSeenReply | flow.StatusConfirmed, Mark: 0x11,
		TCP: flow.TCPInfo{State: flow.TCPEstablished}}
	tcp.Reply = tcp.Orig.Invert(tcp.Proto)

	snat := tcp
	snat.Orig.Src, snat.Orig.SrcPort, snat.Orig.DstPort = v4("10.0.0.2"), 40001, 80
	snat.Reply = flow.Tuple{Src: v4("192.0.2.1"), Dst: v4("203.0.113.1"), SrcPort: 80, DstPort: 1024}
	snat.Status |= flow.StatusSrcNAT
	snat.TCP.State = flow.TCPTimeWait
	snat.Mark = 0x21

	udp := Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoUDP, Zone: 7,
		Orig: flow.Tuple{Src: v4("10.0.1.1"), Dst: v4("198.51.100.1"), SrcPort: 5000, DstPort: 53}},
		Status: flow.StatusConfirmed}
	udp.Reply = flow.Tuple{Src: v4("172.16.0.1"), Dst: v4("10.0.1.1"), SrcPort: 8053, DstPort: 5000}
	udp.Status |= flow.StatusDstNAT

	icmp := Flow{Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoICMP,
		Orig: flow.Tuple{Src: v4("10.0.0.1"), Dst: v4("192.0.2.9"), SrcPort: 77, DstPort: 8 << 8}},
		Status: flow.StatusSeenReply}
	icmp.Reply = icmp.Orig.Invert(icmp.Proto)

	v6 := Flow{Key: flow.Key{Family: flow.FamilyIPv6, Proto: flow.ProtoTCP,
		Orig: flow.Tuple{Src: flow.AddrFrom(netip.MustParseAddr("2001:db8::1")), Dst: flow.AddrFrom(netip.MustParseAddr("2001:db8:1::1")), SrcPort: 1234, DstPort: 21}},
		TCP: flow.TCPInfo{State: flow.TCPSynSent}, Extra: &flow.Extra{Helper: "ftp"}}
	v6.Reply = v6.Orig.Invert(v6.Proto)
	v6.Extra.Labels[0] = 0x05 // bits 0 and 2
	return []Flow{tcp, snat, udp, icmp, v6}
}

func TestFilterMatch(t *testing.T) {
	flows := testFlows()
	cases := []struct {
		args string
		want string // indexes of the matching flows
	}{
		{"", "01234"},
		{"-p tcp", "014"},
		{"-p tcp --dport 22", "0"},
		{"--dport 22", "0"},
		{"-f ipv6", "4"},
		{"-f ipv4", "0123"},
		{"-s 10.0.0.0/24", "013"},
		{"-s 10.0.0.1", "03"},
		{"-d 192.0.2.1", "01"},
		{"-r 172.16.0.0/12", "2"},
		{"-q 203.0.113.1", "1"},
		{"--reply-port-dst 1024", "1"},
		{"--reply-port-src 8053", "2"},
		{"--sport 5000 -p udp", "2"},
		{"-p icmp --icmp-type 8", "3"},
		{"--icmp-id 77", "3"},
		{"--icmp-type 0", ""},
		{"--state ESTABLISHED", "0"},
		{"--state established,time_wait", "01"},
		{"--state SYN_SENT", "4"},
		{"-u ASSURED", "01"},
		{"-u SEEN_REPLY", "013"},
		{"-u SRC_NAT", "1"},
		{"-u DST_NAT", "2"},
		{"-m 0x11", "0"},
		{"-m 1/0xf", "01"},
		{"-m 0", "234"},
		{"-w 7", "2"},
		{"-w 0", "0134"},
		{"-l 2", "4"},
		{"-l 0,2", "4"},
		{"-l 1", ""},
		{"--helper ftp", "4"},
		{"-s 2001:db8::/32", "4"},
		{"-s 2001:db8::/32 -p tcp --dport 21", "4"},
		{"--orig-src=10.0.0.2 --orig-port-dst=80", "1"},
	}
	for _, c := range cases {
		var args []string
		if c.args != "" {
			args = strings.Fields(c.args)
		}
		f, err := ParseFilter(args)
		if err != nil {
			t.Errorf("ParseFilter(%q): %v", c.args, err)
			continue
		}
		var got strings.Builder
		for i := range flows {
			if f.Match(&flows[i]) {
				got.WriteByte(byte('0' + i))
			}
		}
		if got.String() != c.want {
			t.Errorf("%q matched flows %q, want %q", c.args, got.String(), c.want)
		}
		// The rendered options parse back to the same filter.
		g, err := ParseFilter(f.Args())
		if err != nil || g != f {
			t.Errorf("%q: Args() = %q parses to %+v, %v", c.args, f.Args(), g, err)
		}
	}
}

func TestParseFilterErrors(t *testing.T) {
	cases := []struct {
		args   string
		sent   error
		option string
	}{
		{"--bogus 1", ErrUnknownOption, "--bogus"},
		{"-p", ErrMissingValue, "-p"},
		{"-p nosuch", ErrBadValue, "-p"},
		{"-p 0", ErrBadValue, "-p"},
		{"--dport 65536", ErrBadValue, "--dport"},
		{"--dport -1", ErrBadValue, "--dport"},
		{"-s 10.0.0.300", ErrBadValue, "-s"},
		{"-s 10.0.0.0/33", ErrBadValue, "-s"},
		{"-s ::ffff:10.0.0.1", ErrBadValue, "-s"},
		{"-f ipv5", ErrBadValue, "-f"},
		{"--state OPEN", ErrBadValue, "--state"},
		{"-u NOPE", ErrBadValue, "-u"},
		{"-m x", ErrBadValue, "-m"},
		{"-m 1/0", ErrBadValue, "-m"},
		{"-m 1/0x100000000", ErrBadValue, "-m"},
		{"-w 70000", ErrBadValue, "-w"},
		{"-l 128", ErrBadValue, "-l"},
		{"-l nosuchlabel", ErrBadValue, "-l"},
		{"--helper a/b", ErrBadValue, "--helper"},
		{"-p tcp -p udp", ErrDuplicate, "-p"},
		{"-s 10.0.0.1 --src 10.0.0.2", ErrDuplicate, "--src"},
		{"-f ipv6 -s 10.0.0.1", ErrConflict, "--orig-src"},
		{"-s 10.0.0.1 -d ::1", ErrConflict, "--orig-dst"},
		{"-p icmp --dport 1", ErrConflict, "--proto"},
		{"-p tcp --icmp-type 8", ErrConflict, "--proto"},
		{"-p udp --state ESTABLISHED", ErrConflict, "--proto"},
		{"-p icmp -s ::1", ErrConflict, "--proto"},
		{"tcp", ErrUnknownOption, "tcp"},
	}
	for _, c := range cases {
		_, err := ParseFilter(strings.Fields(c.args))
		var oe *OptionError
		if !errors.As(err, &oe) || !errors.Is(err, c.sent) || oe.Option != c.option {
			t.Errorf("ParseFilter(%q) = %v, want an *OptionError for %s wrapping %v", c.args, err, c.option, c.sent)
			continue
		}
		if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), c.option) {
			t.Errorf("ParseFilter(%q): error %q is not one line naming %s", c.args, err, c.option)
		}
	}
}

func TestParseFilterValues(t *testing.T) {
	q, _ := url.ParseQuery("proto=tcp&src=10.0.0.0/8&dport=22&state=ESTABLISHED&mark=0x11&zone=0&reply_dst=10.0.0.1")
	f, err := ParseFilterValues(q)
	if err != nil {
		t.Fatal(err)
	}
	want, err := ParseFilter(strings.Fields("-p tcp -s 10.0.0.0/8 --dport 22 --state ESTABLISHED -m 0x11 -w 0 -q 10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if f != want {
		t.Fatalf("values gave %v, options %v", f, want)
	}
	g, err := ParseFilterPairs(strings.Fields("proto=tcp src=10.0.0.0/8 dport=22 state=ESTABLISHED mark=0x11 zone=0 reply-dst=10.0.0.1"))
	if err != nil || g != want {
		t.Fatalf("pairs gave %v, %v; want %v", g, err, want)
	}
	for _, q := range []string{"proto=tcp&proto=udp", "bogus=1", "dport=x", "src=1.2.3.4&family=ipv6"} {
		v, _ := url.ParseQuery(q)
		if _, err := ParseFilterValues(v); err == nil {
			t.Errorf("ParseFilterValues(%q) accepted", q)
		}
	}
	if _, err := ParseFilterPairs([]string{"proto"}); !errors.Is(err, ErrMissingValue) {
		t.Errorf("pair without '=': %v", err)
	}
}

func TestFilterSetKeepsOnError(t *testing.T) {
	var f Filter
	if err := f.Set("--proto", "tcp"); err != nil {
		t.Fatal(err)
	}
	if err := f.Set("-p", "nope"); err == nil {
		t.Fatal("bad protocol accepted")
	}
	if f.Proto != flow.ProtoTCP {
		t.Fatalf("failed Set changed the filter: %+v", f)
	}
	if n, ok := FilterOptionName("dport"); !ok || n != "orig-port-dst" {
		t.Fatalf("FilterOptionName(dport) = %q, %v", n, ok)
	}
}

func TestLabelsFromConnlabelConf(t *testing.T) {
	dir := t.TempDir()
	old := ConnlabelConf
	ConnlabelConf = dir + "/connlabel.conf"
	t.Cleanup(func() { ConnlabelConf = old })
	if err := writeFile(ConnlabelConf, "# comment\n0 eth0-in\n5 vip\n"); err != nil {
		t.Fatal(err)
	}
	l, err := ParseLabels("vip,1")
	if err != nil {
		t.Fatal(err)
	}
	if l[0] != 1<<5|1<<1 {
		t.Fatalf("labels %x", l)
	}
}
