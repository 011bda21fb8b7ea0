package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// stat is a metric's median, min, max over runs.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Runs   int     `json:"runs"`
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func statOf(v []float64) stat {
	return stat{Median: median(v), Min: slices.Min(v), Max: slices.Max(v), Runs: len(v)}
}

type key struct{ daemon, metric string }

// readCSV reads a results CSV (daemon,n|bg,run,metric,value) into values
// per daemon and metric, the rows whose second column is n (n < 0: all);
// it also returns the last row's second column.
func readCSV(r io.Reader, n int) (map[key][]float64, int, error) {
	rows, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return nil, 0, fmt.Errorf("read results: %w", err)
	}
	vals := map[key][]float64{}
	last := 0
	for i, row := range rows {
		if i == 0 || len(row) != 5 {
			continue
		}
		rn, err := strconv.Atoi(row[1])
		if err != nil || (n >= 0 && rn != n) {
			continue
		}
		v, err := strconv.ParseFloat(row[4], 64)
		if err != nil {
			continue
		}
		last = rn
		k := key{row[0], row[3]}
		vals[k] = append(vals[k], v)
	}
	return vals, last, nil
}

// thousands formats v rounded to an integer with comma separators.
func thousands(v float64) string {
	s := strconv.FormatFloat(v, 'f', 0, 64) // rounds half to even, like Python's format
	var b strings.Builder
	if t, ok := strings.CutPrefix(s, "-"); ok {
		b.WriteByte('-')
		s = t
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// summary writes summary.json and table.md from runs.csv (and takeover.csv
// if present) under out, and returns the table.
func summary(out string, n int, daemons []string) (string, error) {
	f, err := os.Open(out + "/runs.csv")
	if err != nil {
		return "", err
	}
	defer f.Close()
	vals, _, err := readCSV(f, n)
	if err != nil {
		return "", err
	}
	summ := map[string]map[string]stat{}
	for k, v := range vals {
		if summ[k.daemon] == nil {
			summ[k.daemon] = map[string]stat{}
		}
		summ[k.daemon][k.metric] = statOf(v)
	}
	js, _ := json.MarshalIndent(map[string]any{"n": n, "results": summ}, "", "  ")
	if err := os.WriteFile(out+"/summary.json", append(js, '\n'), 0o644); err != nil {
		return "", err
	}
	var tk map[key][]float64
	bg := 0
	if f, err := os.Open(out + "/takeover.csv"); err == nil {
		tk, bg, err = readCSV(f, -1)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	t := table(n, daemons, vals, summ, tk, bg)
	return t, os.WriteFile(out+"/table.md", []byte(t), 0o644)
}

var tableRows = []struct{ label, metric, kernel string }{
	{"runs converged exactly (of runs)", "converged", ""},
	{"event overruns at the sender (sum over runs)", "event_overrun", ""},
	{"replication time (s)", "replicate_s", ""},
	{"replication rate (flows/s)", "replicate_flows_per_s", ""},
	{"CPU s / 100k flows, sender", "cpu_sender_s_per_100k", ""},
	{"CPU s / 100k flows, receiver", "cpu_receiver_s_per_100k", ""},
	{"… of which in the kernel (system time), sender", "cpu_sender_sys_s_per_100k", ""},
	{"… of which in the kernel (system time), receiver", "cpu_receiver_sys_s_per_100k", ""},
	{"wire bytes / flow (both directions)", "wire_bytes_per_flow", ""},
	{"RSS bytes / flow, internal (fwA)", "rss_internal_bytes_per_flow", ""},
	{"RSS bytes / flow, external (fwB)", "rss_external_bytes_per_flow", ""},
	{"RSS after, sender (MiB)", "rss_sender_mib", ""},
	{"RSS after, receiver (MiB)", "rss_receiver_mib", ""},
	{"commits that finished (of runs)", "commit_ok", ""},
	{"commit time (s)", "commit_s", "commit_s"},
	{"commit rate (flows/s)", "commit_flows_per_s", "commit_flows_per_s"},
	{"commit CPU s, receiver process", "commit_cpu_receiver_s", ""},
	{"machine load (1-min average) at the run's start", "load1_before", "load1_before"},
}

// table renders the tables of a run: the main one, the stepped rates, the
// takeover. The layout is the one BENCHMARKS.md quotes.
func table(n int, daemons []string, vals map[key][]float64, summ map[string]map[string]stat, tk map[key][]float64, bg int) string {
	cell := func(d, m string) string {
		s, ok := summ[d][m]
		if !ok {
			return "—"
		}
		f := func(x float64) string { return strconv.FormatFloat(x, 'g', 3, 64) }
		if s.Median >= 1000 {
			f = thousands
		}
		return fmt.Sprintf("%s [%s..%s]", f(s.Median), f(s.Min), f(s.Max))
	}
	ratio := func(m string) string {
		a, ok1 := summ["ctsyncd"][m]
		b, ok2 := summ["conntrackd"][m]
		if !ok1 || !ok2 || b.Median == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f", a.Median/b.Median)
	}
	total := func(d, m string) string {
		s := vals[key{d, m}]
		if len(s) == 0 {
			return "—"
		}
		sum := 0.0
		for _, v := range s {
			sum += v
		}
		return fmt.Sprintf("%.0f/%d", sum, len(s))
	}
	// The ceiling without an event listener: a column of its own in the
	// results that have it (older harnesses did not measure it).
	quiet := len(summ["kernel-1sock-quiet"]) > 0
	quietHdr, quietSep, quietEmpty := "", "", ""
	if quiet {
		quietHdr, quietSep, quietEmpty = " kernel ceiling 1 socket, no event listener |", " --- |", " |"
	}
	var l []string
	l = append(l, fmt.Sprintf("N = %s flows; median [min..max]; ratio = ctsyncd / conntrackd (both SCHED_OTHER);", thousands(float64(n))),
		"conntrackd (RR) = conntrackd on the SCHED_RR 99 it picks by default, for reference",
		"",
		"| metric | ctsyncd | conntrackd | ratio | conntrackd (RR) | kernel ceiling 1 socket | kernel ceiling 2 sockets |"+quietHdr,
		"| --- | --- | --- | --- | --- | --- | --- |"+quietSep)
	for _, r := range tableRows {
		k1, k2, k3 := "", "", ""
		if r.kernel != "" {
			k1, k2, k3 = cell("kernel-1sock", r.kernel), cell("kernel-2sock", r.kernel), cell("kernel-1sock-quiet", r.kernel)
		}
		if quiet {
			k2 += " | " + k3
		}
		switch r.metric {
		case "converged", "event_overrun", "commit_ok":
			l = append(l, fmt.Sprintf("| %s | %s | %s | | %s | | |%s", r.label, total("ctsyncd", r.metric), total("conntrackd", r.metric), total("conntrackd_rr", r.metric), quietEmpty))
			continue
		case "cpu_sender_sys_s_per_100k", "cpu_receiver_sys_s_per_100k":
			if len(vals[key{"ctsyncd", r.metric}]) == 0 && len(vals[key{"conntrackd", r.metric}]) == 0 {
				continue // results of an older harness
			}
		case "load1_before":
			if len(vals[key{"ctsyncd", r.metric}]) == 0 {
				continue // results of an older harness
			}
			l = append(l, fmt.Sprintf("| %s | %s | %s | | %s | %s | %s |", r.label, cell("ctsyncd", r.metric), cell("conntrackd", r.metric), cell("conntrackd_rr", r.metric), k1, k2))
			continue
		}
		l = append(l, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s |", r.label, cell("ctsyncd", r.metric), cell("conntrackd", r.metric), ratio(r.metric), cell("conntrackd_rr", r.metric), k1, k2))
	}
	var steps []int
	for k := range vals {
		if _, r, ok := strings.Cut(k.daemon, "@"); ok {
			if v, err := strconv.Atoi(r); err == nil && !slices.Contains(steps, v) {
				steps = append(steps, v)
			}
		}
	}
	slices.Sort(steps)
	if len(steps) > 0 {
		hdr := "| rate (flows/s) |"
		sep := "| --- |"
		for _, d := range daemons {
			hdr += " " + d + " converged, lag s, overruns |"
			sep += " --- |"
		}
		l = append(l, "", "Stepped rate: N flows created at a fixed pace; converged = exact count on fwB within STEP_TIMEOUT",
			"after the last create; lag = last create to exact convergence (one run per cell)", "", hdr, sep)
		for _, rate := range steps {
			row := []string{}
			for _, d := range daemons {
				k := fmt.Sprintf("%s@%d", d, rate)
				c := vals[key{k, "converged"}]
				if len(c) == 0 {
					row = append(row, "—")
					continue
				}
				lag := vals[key{k, "lag_s"}]
				ov := 0.0
				for _, v := range vals[key{k, "event_overrun"}] {
					ov += v
				}
				got := vals[key{k, "external_flows"}]
				if len(got) == 0 {
					got = []float64{0}
				}
				if len(lag) > 0 {
					conv := "yes"
					if slices.Min(c) != 1 {
						conv = fmt.Sprintf("NO (%d of %d)", int(slices.Min(got)), n)
					}
					row = append(row, fmt.Sprintf("%s, %.2f s, %.0f", conv, median(lag), ov))
				} else {
					row = append(row, fmt.Sprintf("NO (%.0f of %d), —, %.0f", slices.Min(got), n, ov))
				}
			}
			l = append(l, fmt.Sprintf("| %s | %s |", thousands(float64(rate)), strings.Join(row, " | ")))
		}
		l = append(l, pacedCPU(steps, daemons, vals)...)
	}
	l = append(l, clusterTable(vals)...)
	if tk != nil {
		l = append(l, "", fmt.Sprintf("Takeover: live TCP stream, %s idle background flows; stall = largest gap at the server", thousands(float64(bg))),
			"(median [min..max]); none = no daemon (control: the stream must break)", "",
			"| | stall (s) | stream survived | VIP move + commit command (s) |", "| --- | --- | --- | --- |")
		f := func(v []float64) string {
			if len(v) == 0 {
				return "—"
			}
			return fmt.Sprintf("%.3f [%.3f..%.3f]", median(v), slices.Min(v), slices.Max(v))
		}
		for _, d := range []string{"ctsyncd", "conntrackd", "none"} {
			st := tk[key{d, "stall_s"}]
			if len(st) == 0 {
				continue
			}
			al := tk[key{d, "stream_alive"}]
			sum := 0.0
			for _, v := range al {
				sum += v
			}
			l = append(l, fmt.Sprintf("| %s | %s | %.0f/%d | %s |", d, f(st), sum, len(al), f(tk[key{d, "commit_cmd_s"}])))
		}
	}
	return strings.Join(l, "\n") + "\n"
}

// pacedCPU is the table of CPU seconds per 100k flows, sender / receiver,
// at each stepped rate (one run per cell), with ctsyncd's ratio to
// conntrackd.
func pacedCPU(steps []int, daemons []string, vals map[key][]float64) []string {
	found := false
	for _, d := range daemons {
		for _, r := range steps {
			found = found || len(vals[key{fmt.Sprintf("%s@%d", d, r), "cpu_sender_s_per_100k"}]) > 0
		}
	}
	if !found {
		return nil // results of an older harness
	}
	get := func(d string, rate int, m string) (float64, bool) {
		v := vals[key{fmt.Sprintf("%s@%d", d, rate), m}]
		if len(v) == 0 {
			return 0, false
		}
		return median(v), true
	}
	hdr := "| rate (flows/s) |"
	sep := "| --- |"
	for _, d := range daemons {
		hdr += " " + d + " sender / receiver |"
		sep += " --- |"
	}
	hdr += " ratio ctsyncd / conntrackd |"
	sep += " --- |"
	l := []string{"", "CPU s per 100k flows at the stepped rates, sender / receiver (one run per cell)", "", hdr, sep}
	for _, rate := range steps {
		row := fmt.Sprintf("| %s |", thousands(float64(rate)))
		for _, d := range daemons {
			a, ok1 := get(d, rate, "cpu_sender_s_per_100k")
			b, ok2 := get(d, rate, "cpu_receiver_s_per_100k")
			if !ok1 || !ok2 {
				row += " — |"
				continue
			}
			row += fmt.Sprintf(" %.3g / %.3g |", a, b)
		}
		ratio := " — |"
		as, ok1 := get("ctsyncd", rate, "cpu_sender_s_per_100k")
		ar, ok2 := get("ctsyncd", rate, "cpu_receiver_s_per_100k")
		bs, ok3 := get("conntrackd", rate, "cpu_sender_s_per_100k")
		br, ok4 := get("conntrackd", rate, "cpu_receiver_s_per_100k")
		if ok1 && ok2 && ok3 && ok4 && bs > 0 && br > 0 {
			ratio = fmt.Sprintf(" %.2f / %.2f |", as/bs, ar/br)
		}
		l = append(l, row+ratio)
	}
	return l
}

// clusterTable is the table of the cluster runs: per transport and size,
// convergence, time, CPU per node and bytes on the wire per change.
func clusterTable(vals map[key][]float64) []string {
	type ck struct {
		tr string
		k  int
	}
	var cs []ck
	for k := range vals {
		var c ck
		if _, err := fmt.Sscanf(strings.ReplaceAll(k.daemon, "-", " "), "cluster %s %d", &c.tr, &c.k); err == nil && !slices.Contains(cs, c) {
			cs = append(cs, c)
		}
	}
	if len(cs) == 0 {
		return nil
	}
	slices.SortFunc(cs, func(a, b ck) int {
		if a.tr != b.tr {
			return strings.Compare(a.tr, b.tr)
		}
		return a.k - b.k
	})
	f := func(v []float64, format string) string {
		if len(v) == 0 {
			return "—"
		}
		return fmt.Sprintf(format+" ["+format+".."+format+"]", median(v), slices.Min(v), slices.Max(v))
	}
	l := []string{"", "Clusters: every node creates N/size flows at once; converged = every node's external cache holds the",
		"others' flows; per change = per flow created somewhere; bytes = what all nodes sent (median [min..max])", "",
		"| transport | nodes | converged (of runs) | time (s) | CPU s / 100k changes, per node | wire bytes / change | RSS per node (MiB) |",
		"| --- | --- | --- | --- | --- | --- | --- |"}
	for _, c := range cs {
		d := fmt.Sprintf("cluster-%s-%d", c.tr, c.k)
		conv := vals[key{d, "converged"}]
		sum := 0.0
		for _, v := range conv {
			sum += v
		}
		l = append(l, fmt.Sprintf("| %s | %d | %.0f/%d | %s | %s | %s | %s |", c.tr, c.k, sum, len(conv),
			f(vals[key{d, "replicate_s"}], "%.3g"), f(vals[key{d, "cpu_node_s_per_100k"}], "%.3g"),
			f(vals[key{d, "wire_bytes_per_change"}], "%.1f"), f(vals[key{d, "rss_node_mib"}], "%.1f")))
	}
	return l
}
