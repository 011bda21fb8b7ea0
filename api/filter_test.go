package api

import (
	"net/url"
	"testing"

	"github.com/ctsyncd/ctsyncd/flow"
)

func TestParseFlowFilter(t *testing.T) {
	flows := testFlows(40)
	for _, c := range []struct {
		query   string
		origin  string
		want    func(*flow.Flow) bool
		wantErr string // param
	}{
		{"proto=udp", "", func(f *flow.Flow) bool { return f.Proto == flow.ProtoUDP }, ""},
		{"proto=tcp&dport=82", "", func(f *flow.Flow) bool { return f.Proto == flow.ProtoTCP && f.Orig.DstPort == 82 }, ""},
		{"src=10.0.0.0/28", "", func(f *flow.Flow) bool { return f.Orig.Src[3] < 16 }, ""},
		{"origin=fw-b", "fw-b", func(*flow.Flow) bool { return true }, ""},
		{"origin=fw-b", "fw-a", func(*flow.Flow) bool { return false }, ""},
		{"dport=http", "", nil, "dport"},
		{"src=10.0.0.300", "", nil, "src"},
		{"colour=red", "", nil, "colour"},
		{"origin=a%20b", "", nil, "origin"},
		{"proto=icmp&dport=80", "", nil, "proto"},
	} {
		q, _ := url.ParseQuery(c.query)
		f, err := ParseFlowFilter(q)
		if c.wantErr != "" {
			pe, ok := err.(*ParamError)
			if !ok || pe.Param != c.wantErr {
				t.Errorf("%s: error %v, want one naming %s", c.query, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.query, err)
		}
		if f.Empty() {
			t.Errorf("%s: empty filter", c.query)
		}
		n := 0
		for i := range flows {
			got := f.Match(&flows[i], c.origin)
			if got != c.want(&flows[i]) {
				t.Fatalf("%s: flow %d: match %v", c.query, i, got)
			}
			if got {
				n++
			}
		}
		if n == 0 && c.origin != "fw-a" {
			t.Errorf("%s: matched nothing (a useless case)", c.query)
		}
	}
	f, err := ParseFlowFilter(url.Values{})
	if err != nil || !f.Empty() {
		t.Errorf("empty query: %v %v", f, err)
	}
}
