// Package console is ctsyncd's web console: one HTML page, a script and a
// style sheet embedded in the binary (no CDN, no build step, works
// offline), served by package api at /.
//
// The page logs in with a token (POST /api/v1/login; the token is sent in
// the body and never kept: the session lives in an HttpOnly, SameSite=Strict
// cookie, the CSRF token in the page's memory), shows the cluster at a
// glance and refreshes it every two seconds, pages through the flow table
// with server-side filters and sorting (GET /api/v1/flows/page), deletes a
// flow after a confirmation (admins only), and draws the replication rate
// and lag of the last five minutes on canvases.
package console

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the console's files.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
