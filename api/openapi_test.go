package api

import (
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestOpenAPIMatchesRouter checks docs/openapi.json against the router:
// every route is documented, and every documented route is served.
func TestOpenAPIMatchesRouter(t *testing.T) {
	data, err := os.ReadFile("../docs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("docs/openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	var documented []string
	for p, ops := range doc.Paths {
		for m := range ops {
			documented = append(documented, strings.ToUpper(m)+" "+p)
		}
	}
	fx := newFixture(t, 5)
	served := fx.h.Routes()
	slices.Sort(documented)
	slices.Sort(served)
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("route %s is not in docs/openapi.json", r)
		}
	}
	for _, r := range documented {
		if !slices.Contains(served, r) {
			t.Errorf("docs/openapi.json documents %s, which the router does not serve", r)
		}
		method, path, _ := strings.Cut(r, " ")
		body := ""
		switch {
		case path == "/api/v1/login":
			body = `{"token":"` + adminSecret + `"}`
		case method == "PATCH":
			body = `{"mark":1}`
		}
		target := path
		if method == "DELETE" || method == "PATCH" {
			target += "?proto=tcp"
		}
		w := fx.do(method, target, adminSecret, body)
		if w.Code == http.StatusNotFound || w.Code == http.StatusMethodNotAllowed {
			t.Errorf("documented %s answers %d", r, w.Code)
		}
	}
	// and the router does not serve what is not documented
	for _, r := range []string{"PUT /api/v1/flows", "POST /api/v1/actions/flush", "GET /api/v2/status"} {
		method, path, _ := strings.Cut(r, " ")
		if w := fx.do(method, path, adminSecret, ""); w.Code != http.StatusNotFound && w.Code != http.StatusMethodNotAllowed {
			t.Errorf("undocumented %s answers %d", r, w.Code)
		}
	}
}
