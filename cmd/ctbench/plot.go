package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// series is one line of a chart: y over x.
type series struct {
	name string
	x, y []float64
}

// chart is a line chart rendered as a small standalone SVG.
type chart struct {
	title, xlabel, ylabel string
	logX                  bool
	series                []series
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"}

// niceTicks returns about n round tick values covering [lo, hi].
func niceTicks(lo, hi float64, n int) []float64 {
	if hi <= lo {
		hi = lo + 1
	}
	step := math.Pow(10, math.Floor(math.Log10((hi-lo)/float64(n))))
	for _, m := range []float64{1, 2, 5, 10} {
		if (hi-lo)/(step*m) <= float64(n) {
			step *= m
			break
		}
	}
	var t []float64
	for v := math.Floor(lo/step) * step; v <= hi+step/2; v += step {
		t = append(t, v)
	}
	return t
}

func fmtTick(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6 && math.Mod(v, 1e6) == 0:
		return fmt.Sprintf("%gM", v/1e6)
	case a >= 1e3 && math.Mod(v, 1e3) == 0:
		return fmt.Sprintf("%gk", v/1e3)
	default:
		return strings.TrimSuffix(fmt.Sprintf("%.3g", v), ".0")
	}
}

// svg renders the chart.
func (c *chart) svg() string {
	const w, h, ml, mr, mt, mb = 640, 380, 70, 160, 40, 50
	pw, ph := float64(w-ml-mr), float64(h-mt-mb)
	xmin, xmax, ymax := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range c.series {
		for i := range s.x {
			xmin, xmax, ymax = min(xmin, s.x[i]), max(xmax, s.x[i]), max(ymax, s.y[i])
		}
	}
	if math.IsInf(xmin, 0) {
		xmin, xmax = 0, 1
	}
	fx := func(x float64) float64 {
		if c.logX {
			if xmax == xmin {
				return ml + pw/2
			}
			return ml + pw*(math.Log10(x)-math.Log10(xmin))/(math.Log10(xmax)-math.Log10(xmin))
		}
		if xmax == xmin {
			return ml + pw/2
		}
		return ml + pw*(x-xmin)/(xmax-xmin)
	}
	yt := niceTicks(0, ymax*1.05, 5)
	ytop := yt[len(yt)-1]
	fy := func(y float64) float64 { return mt + ph*(1-y/ytop) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14" font-weight="bold">%s</text>`+"\n", ml, esc(c.title))
	for _, v := range yt {
		y := fy(v)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", ml, y, ml+pw, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", ml-6, y+4, fmtTick(v))
	}
	var xt []float64
	for _, s := range c.series {
		for _, x := range s.x {
			if !slices.Contains(xt, x) {
				xt = append(xt, x)
			}
		}
	}
	for _, x := range xt {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", fx(x), mt+ph+18, fmtTick(x))
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", ml, mt+ph, ml+pw, mt+ph)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%.1f" stroke="black"/>`+"\n", ml, mt, ml, mt+ph)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", ml+pw/2, h-10, esc(c.xlabel))
	fmt.Fprintf(&b, `<text transform="translate(16,%.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", mt+ph/2, esc(c.ylabel))
	for i, s := range c.series {
		col := palette[i%len(palette)]
		var pts []string
		for j := range s.x {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", fx(s.x[j]), fy(s.y[j])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		for j := range s.x {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`+"\n", fx(s.x[j]), fy(s.y[j]), col)
		}
		ly := mt + 10 + 20*i
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="2"/>`+"\n", ml+pw+12, ly, ml+pw+32, ly, col)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n", ml+pw+38, ly+4, esc(s.name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// plotScaling reads the summary.json of several result sets (one N each)
// and writes the scaling charts, as SVG, into dir: commit time, CPU per
// 100k flows and RSS per flow over N for ctsyncd, conntrackd and the
// kernel.
func plotScaling(dir string, sets []string) error {
	type sum struct {
		N       int                        `json:"n"`
		Results map[string]map[string]stat `json:"results"`
	}
	var sums []sum
	for _, s := range sets {
		b, err := os.ReadFile(filepath.Join(s, "summary.json"))
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		var v sum
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("plot: %s: %w", s, err)
		}
		sums = append(sums, v)
	}
	slices.SortFunc(sums, func(a, b sum) int { return a.N - b.N })
	line := func(name, daemon, metric string, scale float64) series {
		s := series{name: name}
		for _, v := range sums {
			if _, pairs := v.Results["ctsyncd"]; !pairs {
				continue // a set of cluster runs only
			}
			if st, ok := v.Results[daemon][metric]; ok {
				s.x = append(s.x, float64(v.N))
				s.y = append(s.y, st.Median*scale)
			}
		}
		return s
	}
	keep := func(ss ...series) []series {
		var out []series
		for _, s := range ss {
			if len(s.x) > 0 {
				out = append(out, s)
			}
		}
		return out
	}
	charts := map[string]chart{
		"scaling-commit.svg": {title: "Commit time (median)", xlabel: "flows", ylabel: "seconds", logX: true, series: keep(
			line("ctsyncd", "ctsyncd", "commit_s", 1), line("conntrackd", "conntrackd", "commit_s", 1),
			line("conntrackd (RR)", "conntrackd_rr", "commit_s", 1),
			line("kernel, 1 socket", "kernel-1sock", "commit_s", 1), line("kernel, 2 sockets", "kernel-2sock", "commit_s", 1),
			line("kernel, no listener", "kernel-1sock-quiet", "commit_s", 1))},
		"scaling-cpu.svg": {title: "CPU seconds per 100k replicated flows (median)", xlabel: "flows", ylabel: "CPU s / 100k flows", logX: true, series: keep(
			line("ctsyncd sender", "ctsyncd", "cpu_sender_s_per_100k", 1), line("ctsyncd receiver", "ctsyncd", "cpu_receiver_s_per_100k", 1),
			line("conntrackd sender", "conntrackd", "cpu_sender_s_per_100k", 1), line("conntrackd receiver", "conntrackd", "cpu_receiver_s_per_100k", 1),
			line("conntrackd RR sender", "conntrackd_rr", "cpu_sender_s_per_100k", 1), line("conntrackd RR receiver", "conntrackd_rr", "cpu_receiver_s_per_100k", 1))},
		"scaling-rss.svg": {title: "Resident memory after replication (median)", xlabel: "flows", ylabel: "MiB", logX: true, series: keep(
			line("ctsyncd sender", "ctsyncd", "rss_sender_mib", 1), line("ctsyncd receiver", "ctsyncd", "rss_receiver_mib", 1),
			line("conntrackd sender", "conntrackd", "rss_sender_mib", 1), line("conntrackd receiver", "conntrackd", "rss_receiver_mib", 1),
			line("conntrackd RR sender", "conntrackd_rr", "rss_sender_mib", 1), line("conntrackd RR receiver", "conntrackd_rr", "rss_receiver_mib", 1))},
	}
	// Clusters: per-node CPU and bytes per change over the number of nodes,
	// one line per transport, from the last set that has cluster runs.
	for _, v := range sums {
		byTr := map[string][2]series{}
		var trs []string
		for d, m := range v.Results {
			var tr string
			var k int
			if _, err := fmt.Sscanf(strings.ReplaceAll(d, "-", " "), "cluster %s %d", &tr, &k); err != nil {
				continue
			}
			if !slices.Contains(trs, tr) {
				trs = append(trs, tr)
			}
			p := byTr[tr]
			if st, ok := m["cpu_node_s_per_100k"]; ok {
				p[0].x, p[0].y = append(p[0].x, float64(k)), append(p[0].y, st.Median)
			}
			if st, ok := m["wire_bytes_per_change"]; ok {
				p[1].x, p[1].y = append(p[1].x, float64(k)), append(p[1].y, st.Median)
			}
			byTr[tr] = p
		}
		if len(trs) == 0 {
			continue
		}
		slices.Sort(trs)
		cpu := chart{title: fmt.Sprintf("Cluster: CPU per node per 100k changes (%s flows)", fmtTick(float64(v.N))), xlabel: "nodes", ylabel: "CPU s / 100k changes"}
		wire := chart{title: fmt.Sprintf("Cluster: bytes on the wire per change (%s flows)", fmtTick(float64(v.N))), xlabel: "nodes", ylabel: "bytes / change"}
		for _, tr := range trs {
			for i, c := range []*chart{&cpu, &wire} {
				sr := byTr[tr][i]
				sr.name = tr
				ord := make([]int, len(sr.x))
				for j := range ord {
					ord[j] = j
				}
				slices.SortFunc(ord, func(a, b int) int { return int(sr.x[a] - sr.x[b]) })
				var xs, ys []float64
				for _, j := range ord {
					xs, ys = append(xs, sr.x[j]), append(ys, sr.y[j])
				}
				sr.x, sr.y = xs, ys
				c.series = append(c.series, sr)
			}
		}
		charts["cluster-cpu.svg"], charts["cluster-bytes.svg"] = cpu, wire
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, c := range charts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(c.svg()), 0o644); err != nil {
			return err
		}
	}
	return nil
}
