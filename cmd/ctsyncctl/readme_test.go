package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// commandForms expands command syntaxes ("dump internal|external --expect",
// "keepalived TYPE NAME STATE [PRIORITY]") into the command forms they
// allow, without placeholders: "dump internal --expect", "keepalived".
func commandForms(syntax string) []string {
	forms := []string{""}
	for _, w := range strings.Fields(syntax) {
		if strings.HasPrefix(w, "[") || strings.ToUpper(w) == w {
			continue // a placeholder: TYPE, [PRIORITY]
		}
		var next []string
		for _, f := range forms {
			for _, alt := range strings.Split(w, "|") {
				next = append(next, strings.TrimSpace(f+" "+alt))
			}
		}
		forms = next
	}
	return forms
}

// commandSyntaxes returns the syntax column of a command list: lines
// indented by exactly two spaces, up to the description column (where most
// descriptions start) or, on a line that runs past it, up to the first run
// of two spaces.
func commandSyntaxes(text string) []string {
	var lines []string
	starts := map[int]int{}
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "   ") {
			continue
		}
		lines = append(lines, line)
		if i := strings.Index(line[2:], "  "); i >= 0 {
			rest := line[2+i:]
			starts[2+i+len(rest)-len(strings.TrimLeft(rest, " "))]++
		}
	}
	col := 0
	for c, n := range starts {
		if n > starts[col] {
			col = c
		}
	}
	var out []string
	for _, line := range lines {
		syntax := line
		if col > 0 && len(line) > col && line[col-1] == ' ' && line[col] != ' ' {
			syntax = line[:col]
		} else if i := strings.Index(line[2:], "  "); i >= 0 {
			syntax = line[:2+i]
		}
		out = append(out, strings.TrimSpace(syntax))
	}
	return out
}

func formsOf(syntaxes []string) []string {
	var all []string
	for _, s := range syntaxes {
		all = append(all, commandForms(s)...)
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// TestREADMECommandsMatchHelp compares the README's ctsyncctl command list
// with what `ctsyncctl --help` prints: the same commands, subcommands and
// options, so that neither documents a command the other lacks.
func TestREADMECommandsMatchHelp(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)## ctsyncctl\n+```\n(.*?)```").FindSubmatch(readme)
	if block == nil {
		t.Fatal("README.md: no code block under \"## ctsyncctl\"")
	}
	bin := filepath.Join(t.TempDir(), "ctsyncctl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	help, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("ctsyncctl --help: %v\n%s", err, help)
	}
	_, cmds, ok := strings.Cut(string(help), "\nCommands:\n")
	if !ok {
		t.Fatalf("ctsyncctl --help has no Commands: section:\n%s", help)
	}
	cmds, _, _ = strings.Cut(cmds, "\n\n")

	fromREADME, fromHelp := formsOf(commandSyntaxes(string(block[1]))), formsOf(commandSyntaxes(cmds))
	if len(fromHelp) < 10 {
		t.Fatalf("only %d commands found in --help: %v", len(fromHelp), fromHelp)
	}
	for _, f := range fromHelp {
		if !slices.Contains(fromREADME, f) {
			t.Errorf("README.md's ctsyncctl list lacks %q (ctsyncctl --help has it)", f)
		}
	}
	for _, f := range fromREADME {
		if !slices.Contains(fromHelp, f) {
			t.Errorf("README.md lists %q, which ctsyncctl --help does not", f)
		}
	}
}

func TestCommandForms(t *testing.T) {
	for syntax, want := range map[string][]string{
		"status":                                {"status"},
		"dump internal|external --expect":       {"dump internal --expect", "dump external --expect"},
		"keepalived TYPE NAME STATE [PRIORITY]": {"keepalived"},
		"flush internal|external|kernel":        {"flush internal", "flush external", "flush kernel"},
	} {
		if got := commandForms(syntax); !slices.Equal(got, want) {
			t.Errorf("%q: %q, want %q", syntax, got, want)
		}
	}
}
