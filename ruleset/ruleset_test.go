package ruleset

import (
	"slices"
	"strings"
	"testing"
)

const base = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "inet", "name": "filter", "handle": 1}},
{"set": {"family": "inet", "name": "blocked", "table": "filter", "type": "ipv4_addr", "handle": 2, "elem": ["192.0.2.1"]}},
{"set": {"family": "inet", "name": "seen", "table": "filter", "type": "ipv4_addr", "handle": 5, "flags": ["dynamic"], "elem": ["198.51.100.7"]}},
{"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
{"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 3, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lan0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}},
{"table": {"family": "ip", "name": "nat", "handle": 2}},
{"chain": {"family": "ip", "table": "nat", "name": "post", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
{"rule": {"family": "ip", "table": "nat", "chain": "post", "handle": 2, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lan1"}}, {"snat": {"addr": "10.0.2.100"}}]}}]}`

func parse(t *testing.T, js string, ignore ...string) Digest {
	t.Helper()
	d, err := Parse([]byte(js), ignore)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSameRulesetSameDigest(t *testing.T) {
	a := parse(t, base)
	// Other handles, counter values and dynamic set contents: the same ruleset.
	r := strings.NewReplacer(`"handle": 3`, `"handle": 17`, `"packets": 0, "bytes": 0`, `"packets": 912, "bytes": 81234`,
		`"198.51.100.7"`, `"203.0.113.9"`)
	b := parse(t, r.Replace(base))
	if !a.Equal(b) || len(Diff(a, b)) != 0 {
		t.Errorf("equal rulesets differ: %v", Diff(a, b))
	}
	if len(a.Parts) != 6 {
		t.Errorf("%d parts, want 6 (2 tables, 2 chains, 2 sets): %v", len(a.Parts), a.Parts)
	}
}

func TestDiffNamesTheChain(t *testing.T) {
	a := parse(t, base)
	cases := []struct {
		name, from, to string
		want           []string
	}{
		{"a rule changed", `"right": 22}`, `"right": 2222}`, []string{"chain inet filter forward"}},
		{"the policy changed", `"policy": "drop"`, `"policy": "accept"`, []string{"chain inet filter forward"}},
		{"a static set's element", `"192.0.2.1"`, `"192.0.2.2"`, []string{"set inet filter blocked"}},
		{"a NAT address", `"10.0.2.100"`, `"10.0.2.101"`, []string{"chain ip nat post"}},
	}
	for _, c := range cases {
		b := parse(t, strings.Replace(base, c.from, c.to, 1))
		if a.Equal(b) {
			t.Errorf("%s: digests equal", c.name)
		}
		if got := Diff(a, b); !slices.Equal(got, c.want) {
			t.Errorf("%s: Diff = %v, want %v", c.name, got, c.want)
		}
	}
	// A table only one side has.
	b := parse(t, base, "ip nat")
	if got := Diff(a, b); !slices.Equal(got, []string{"chain ip nat post", "table ip nat"}) {
		t.Errorf("ignored table: Diff = %v", got)
	}
}

func TestParseBadJSON(t *testing.T) {
	if _, err := Parse([]byte("not json"), nil); err == nil {
		t.Error("no error")
	}
}
