package conntrack

import (
	"net/url"
	"os"
	"strings"
	"testing"
)

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }

// FuzzParseFilter feeds arbitrary option lines to the conntrack(8)-style
// parser and arbitrary queries to the key=value one: neither may panic, an
// error is one line, and an accepted filter renders to options that parse
// back to the same filter.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		"-p tcp --dport 22",
		"-s 10.0.0.0/8 -d 192.0.2.1 -r 172.16.0.1 -q 2001:db8::1",
		"-f ipv6 -p icmpv6 --icmp-type 128 --icmp-code 0 --icmp-id 7",
		"--state ESTABLISHED,TIME_WAIT -u ASSURED,SEEN_REPLY -m 0x10/0xf0 -w 7 -l 0,127 --helper ftp",
		"--orig-port-src=1 --reply-port-dst=2",
		"proto=tcp&dport=22&src=10.0.0.0/8",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if strings.ContainsAny(s, "&=") {
			if v, err := url.ParseQuery(s); err == nil {
				g, err := ParseFilterValues(v)
				check(t, s, g, err)
			}
		}
		g, err := ParseFilter(strings.Fields(s))
		check(t, s, g, err)
	})
}

func check(t *testing.T, in string, f Filter, err error) {
	t.Helper()
	if err != nil {
		if strings.Contains(err.Error(), "\n") {
			t.Fatalf("%q: error of several lines: %q", in, err)
		}
		return
	}
	g, err := ParseFilter(f.Args())
	if err != nil {
		t.Fatalf("%q: rendered %q does not parse: %v", in, f.Args(), err)
	}
	if g != f {
		t.Fatalf("%q: round trip %+v != %+v", in, g, f)
	}
	flows := testFlows()
	for i := range flows {
		f.Match(&flows[i])
	}
}
