package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The tables are rendered from the CSV exactly as BENCHMARKS.md quotes them:
// testdata/n100k is a run of the former shell harness (runs.csv,
// takeover.csv) with the table.md it printed.
func TestSummaryRendersTheQuotedTable(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"runs.csv", "takeover.csv"} {
		b, err := os.ReadFile(filepath.Join("testdata", "n100k", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(filepath.Join("testdata", "n100k", "table.md"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := summary(dir, 100000, []string{"ctsyncd", "conntrackd", "conntrackd_rr"})
	if err != nil {
		t.Fatal(err)
	}
	// The table of CPU at the stepped rates is new; the rest is the same.
	const paced = "\nCPU s per 100k flows at the stepped rates"
	i := strings.Index(got, paced)
	j := strings.Index(got, "\nTakeover:")
	if i < 0 || j < i {
		t.Fatalf("no table of CPU at the stepped rates:\n%s", got)
	}
	if !strings.Contains(got[i:j], "| 25,000 | 0.7 / 0.33 | 0.51 / 0.2 | 0.84 / 0.38 | 1.37 / 1.65 |") {
		t.Errorf("CPU at the stepped rates:\n%s", got[i:j])
	}
	if got = got[:i] + got[j:]; got != string(want) {
		t.Errorf("table differs:\n--- got\n%s\n--- want\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "summary.json")); err != nil {
		t.Errorf("summary.json not written: %v", err)
	}
}

func TestThousands(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 83250.5: "83,250", 1234567.4: "1,234,567", -4321: "-4,321"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
}

// A run with the ceiling without an event listener gets a column for it,
// filled on the commit rows; one without (above) renders as before.
func TestSummaryQuietCeilingColumn(t *testing.T) {
	dir := t.TempDir()
	csv := "daemon,n,run,metric,value\n" +
		"ctsyncd,1000,1,converged,1\n" +
		"ctsyncd,1000,1,commit_ok,1\n" +
		"ctsyncd,1000,1,commit_s,0.5\n" +
		"kernel-1sock,1000,1,commit_s,0.9\n" +
		"kernel-2sock,1000,1,commit_s,1.0\n" +
		"kernel-1sock-quiet,1000,1,commit_s,0.45\n"
	if err := os.WriteFile(filepath.Join(dir, "runs.csv"), []byte(csv), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := summary(dir, 1000, []string{"ctsyncd"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| kernel ceiling 1 socket | kernel ceiling 2 sockets | kernel ceiling 1 socket, no event listener |",
		"| commit time (s) | 0.5 [0.5..0.5] | — | — | — | 0.9 [0.9..0.9] | 1 [1..1] | 0.45 [0.45..0.45] |",
		"| commits that finished (of runs) | 1/1 | — | | — | | | |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no line %q in:\n%s", want, got)
		}
	}
}
