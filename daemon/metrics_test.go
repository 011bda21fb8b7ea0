package daemon

import (
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsDocumented: docs/metrics.md lists exactly the metrics the
// daemon exports.
func TestMetricsDocumented(t *testing.T) {
	ch := make(chan *prometheus.Desc, 256)
	(&collector{}).Describe(ch)
	close(ch)
	var code []string
	fq := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range ch {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read the name of %s", d)
		}
		code = append(code, m[1])
	}
	code = append(code, "ctsyncd_commit_duration_seconds", "ctsyncd_commit_flows_total")
	b, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	var doc []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(ctsyncd_[a-z_]+)` \\|").FindAllStringSubmatch(string(b), -1) {
		doc = append(doc, m[1])
	}
	slices.Sort(code)
	slices.Sort(doc)
	for _, n := range code {
		if !slices.Contains(doc, n) {
			t.Errorf("%s is exported but not in docs/metrics.md", n)
		}
	}
	for _, n := range doc {
		if !slices.Contains(code, n) {
			t.Errorf("docs/metrics.md lists %s, which is not exported", n)
		}
	}
}
