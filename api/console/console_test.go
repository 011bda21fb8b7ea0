package console

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// TestServesOfflineFiles: the page, script and style are served, and no
// file loads anything from another origin (no CDN: the console works
// offline) or runs inline script (the API's CSP forbids it).
func TestServesOfflineFiles(t *testing.T) {
	h := Handler()
	for path, ctype := range map[string]string{"/": "text/html", "/app.js": "text/javascript", "/app.css": "text/css"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %d %q", path, w.Code, w.Header().Get("Content-Type"))
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("POST", "/", nil))
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %d", w.Code)
	}
	remote := regexp.MustCompile(`(?i)(src|href)\s*=\s*"(https?:)?//|@import|url\(\s*['"]?(https?:)?//|fetch\(\s*["'\x60]https?:`)
	inline := regexp.MustCompile(`(?i)<script>|<script[^>]*>[^<]+</script>|\son[a-z]+\s*=\s*"|style\s*=\s*"`)
	fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, _ := static.Open(p)
		b, _ := io.ReadAll(f)
		f.Close()
		if m := remote.Find(b); m != nil {
			t.Errorf("%s loads from another origin: %s", p, m)
		}
		if strings.HasSuffix(p, ".html") {
			if m := inline.Find(b); m != nil {
				t.Errorf("%s has inline script or style: %s", p, m)
			}
		}
		if strings.Contains(string(b), "localStorage") || strings.Contains(string(b), "sessionStorage") || strings.Contains(string(b), "document.cookie") {
			t.Errorf("%s stores credentials where scripts can read them", p)
		}
		return nil
	})
}
