//go:build cluster

package replication_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/daemontest"
)

const guardRuleset = `table inet filter {
	set blocked {
		type ipv4_addr
		elements = { 192.0.2.1 }
	}
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related counter accept
		iifname "lan0" tcp dport 22 ct state new accept
	}
}
`

type rulesetView struct {
	Ruleset struct {
		Digest string              `json:"digest"`
		Same   bool                `json:"same"`
		Differ map[string][]string `json:"differ"`
	} `json:"ruleset"`
	Warnings []string `json:"warnings"`
}

// TestClusterRulesetGuard: two nodes with the same ruleset agree (and B is
// ready); a rule added to A's forward chain makes both warn, naming the
// chain, and B, which requires the same ruleset, unready; removing it makes
// them agree and B ready again.
func TestClusterRulesetGuard(t *testing.T) {
	a, b := pair(t)
	a.ns.Nft(t, guardRuleset)
	b.ns.Nft(t, guardRuleset)
	key := writeKey(t)
	ready := filepath.Join(t.TempDir(), "ready")
	guard := "\n[failover]\nruleset_interval = \"5s\"\n"
	a.start(t, syncConfig("udp", a, []*node{b}, key)+guard)
	b.start(t, syncConfig("udp", b, []*node{a}, key)+guard+fmt.Sprintf("require_same_ruleset = true\nready_file = %q\n", ready)+
		"\n[metrics]\nlisten = \"127.0.0.1:9469\"\n")
	view := func(n *node) rulesetView {
		var v rulesetView
		n.proc.JSON(&v, "status")
		return v
	}
	readyFile := func() string {
		b, _ := os.ReadFile(ready)
		return strings.TrimSpace(string(b))
	}
	daemontest.WaitFor(t, converge, "both to agree and B to be ready", func() (bool, string) {
		va, vb := view(a), view(b)
		return va.Ruleset.Digest != "" && va.Ruleset.Digest == vb.Ruleset.Digest && va.Ruleset.Same && vb.Ruleset.Same && readyFile() == "0",
			fmt.Sprintf("A %+v, B %+v, ready file %q", va.Ruleset, vb.Ruleset, readyFile())
	})

	a.ns.Exec(t, "nft", "add", "rule", "inet", "filter", "forward", "iifname", "lan0", "tcp", "dport", "80", "accept")
	start := time.Now()
	for _, n := range []*node{a, b} {
		daemontest.WaitFor(t, 30*time.Second, n.name+" to warn about the forward chain", func() (bool, string) {
			v := view(n)
			return !v.Ruleset.Same && strings.Contains(strings.Join(v.Warnings, "\n"), "chain inet filter forward"), fmt.Sprintf("%+v", v)
		})
	}
	t.Logf("difference seen by both %v after the change; B: %v", time.Since(start).Round(time.Millisecond), view(b).Warnings)
	daemontest.WaitFor(t, 10*time.Second, "B unready", func() (bool, string) { return readyFile() == "1", readyFile() })
	if v := view(b); len(v.Ruleset.Differ["fw-a"]) != 1 {
		t.Errorf("B names %v as different, want only the forward chain", v.Ruleset.Differ)
	}
	if m := metricsOf(t, b); !strings.Contains(m, "\nctsyncd_ruleset_same 0\n") || !strings.Contains(m, `ctsyncd_ruleset_differing_parts{peer="fw-a"} 1`) {
		t.Errorf("B's metrics do not show the difference:\n%s", grepLines(m, "ctsyncd_ruleset"))
	}

	// Back to the same ruleset: the warning goes, B is ready again.
	a.ns.Exec(t, "nft", "flush", "ruleset")
	a.ns.Nft(t, guardRuleset)
	daemontest.WaitFor(t, 30*time.Second, "agreement and readiness again", func() (bool, string) {
		va, vb := view(a), view(b)
		return va.Ruleset.Same && vb.Ruleset.Same && len(vb.Warnings) == 0 && readyFile() == "0", fmt.Sprintf("A %+v B %+v %q", va, vb, readyFile())
	})
	if m := metricsOf(t, b); !strings.Contains(m, "\nctsyncd_ruleset_same 1\n") {
		t.Errorf("B's metrics still show a difference:\n%s", grepLines(m, "ctsyncd_ruleset"))
	}
	if !strings.Contains(b.proc.Logs(), "ruleset differs from a peer's") {
		t.Error("B logged no line about the difference")
	}
}

// metricsOf fetches the node's /metrics (its [metrics] listen is
// 127.0.0.1:9469), connecting from inside its namespace.
func metricsOf(t *testing.T, n *node) string {
	t.Helper()
	var conn net.Conn
	var err error
	n.ns.Do(t, func() { conn, err = net.DialTimeout("tcp", "127.0.0.1:9469", 5*time.Second) })
	if err != nil {
		t.Fatalf("%s: dial metrics: %v", n.name, err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
	resp, err := c.Get("http://127.0.0.1:9469/metrics")
	if err != nil {
		t.Fatalf("%s: /metrics: %v", n.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
