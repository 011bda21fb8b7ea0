package main

import (
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A chart is well-formed SVG with one line and one legend entry per series,
// its points inside the plot area.
func TestChartSVG(t *testing.T) {
	c := chart{title: "a <b> & c", xlabel: "flows", ylabel: "s", logX: true, series: []series{
		{name: "one", x: []float64{1e5, 1e6, 4e6}, y: []float64{0.9, 9, 40}},
		{name: "two", x: []float64{1e5, 1e6}, y: []float64{0.5, 6}},
	}}
	out := c.svg()
	d := xml.NewDecoder(strings.NewReader(out))
	lines := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, out)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			lines++
		}
	}
	if lines != 2 {
		t.Errorf("%d polylines, want 2", lines)
	}
	for _, w := range []string{"a &lt;b&gt; &amp; c", ">one<", ">two<", ">4M<", ">100k<"} {
		if !strings.Contains(out, w) {
			t.Errorf("no %q in the chart", w)
		}
	}
}

// -plot writes the scaling charts from result sets' summaries.
func TestPlotScaling(t *testing.T) {
	dir := t.TempDir()
	set := filepath.Join(dir, "set")
	os.MkdirAll(set, 0o755)
	b, err := os.ReadFile(filepath.Join("testdata", "n100k", "runs.csv"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(set, "runs.csv"), b, 0o644)
	if _, err := summary(set, 100000, []string{"ctsyncd", "conntrackd"}); err != nil {
		t.Fatal(err)
	}
	if err := plotScaling(filepath.Join(dir, "out"), []string{set}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"scaling-commit.svg", "scaling-cpu.svg", "scaling-rss.svg"} {
		if b, err := os.ReadFile(filepath.Join(dir, "out", f)); err != nil || !strings.Contains(string(b), "<polyline") {
			t.Errorf("%s: %v", f, err)
		}
	}
}
