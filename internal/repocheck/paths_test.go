package repocheck

import (
	"os"
	"os/exec"
	"path"
	"regexp"
	"strings"
	"testing"
)

// citedPath matches what looks like a file of the repository: a relative
// path or a bare name ending in .md, .go, .sh or .toml.
var citedPath = regexp.MustCompile(`[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.(md|go|sh|toml)\b`)

// comments returns the parts of a file that are prose: all of a Markdown
// file, the comments of Go, shell and TOML files.
func comments(name, text string) []string {
	if strings.HasSuffix(name, ".md") {
		return strings.Split(text, "\n")
	}
	marker := "#"
	if strings.HasSuffix(name, ".go") {
		marker = "//"
	}
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if i := strings.Index(line, marker); i >= 0 {
			out = append(out, line[i+len(marker):])
		}
	}
	return out
}

// TestCitedPathsExist fails when a comment or a document names a repository
// file that does not exist (a moved or deleted file, or one that lives
// outside the repository). Absolute paths (system files), URLs and
// module paths are not repository files and are left alone. A bare name
// must exist somewhere in the tree; a path, relative to the repository
// root or to the citing file.
func TestCitedPathsExist(t *testing.T) {
	out, err := exec.Command("git", "-C", "../..", "ls-files", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	files := map[string]bool{}
	dirs := map[string]bool{}
	base := map[string]bool{}
	for _, f := range strings.Fields(string(out)) {
		files[f] = true
		base[path.Base(f)] = true
		for d := path.Dir(f); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	exists := func(from, p string) bool {
		p = strings.TrimPrefix(p, "./")
		if !strings.Contains(p, "/") {
			return base[p]
		}
		for _, c := range []string{path.Clean(p), path.Join(path.Dir(from), p)} {
			if files[c] || dirs[c] {
				return true
			}
		}
		return false
	}
	checked := 0
	for f := range files {
		if strings.HasPrefix(f, "bench/results/") {
			continue // recorded output of past runs
		}
		switch path.Ext(f) {
		case ".go", ".md", ".sh", ".toml":
		default:
			if f != ".ci/run" {
				continue
			}
		}
		b, err := os.ReadFile("../../" + f)
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range comments(f, string(b)) {
			for _, word := range strings.Fields(line) {
				if strings.Contains(word, "://") || strings.Contains(word, "github.com/") || strings.Contains(word, "golang.org/") {
					continue
				}
				for _, m := range citedPath.FindAllStringIndex(word, -1) {
					p := word[m[0]:m[1]]
					if m[0] > 0 && (word[m[0]-1] == '/' || word[m[0]-1] == '~' || word[m[0]-1] == '$') || strings.HasPrefix(p, "/") {
						continue // absolute, home or variable path
					}
					if first, _, _ := strings.Cut(p, "/"); strings.HasPrefix(p, "_") || strings.HasPrefix(p, ".") && !strings.HasPrefix(p, "./") && !strings.HasPrefix(p, "../") ||
						strings.Contains(p, "/") && first == strings.ToUpper(first) && first != "" {
						continue // a suffix (_test.go, .go) or a placeholder directory (OUT/table.md)
					}
					checked++
					if !exists(f, p) {
						t.Errorf("%s: cites %s, which is not in the repository (line %d of its prose: %q)", f, p, n+1, strings.TrimSpace(line))
					}
				}
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d file citations found: the check is not reading the files", checked)
	}
}
