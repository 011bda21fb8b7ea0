package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

func netipAddr(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }

const (
	adminSecret = "admin-secret-0123456789"
	readSecret  = "read-secret-0123456789ab"
)

// syncBuffer is a log sink safe for the handler's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	t       *testing.T
	h       *Handler
	flows   *fakeFlows
	actions *fakeActions
	audit   *syncBuffer
	now     time.Time
	mu      sync.Mutex
}

func newFixture(t *testing.T, n int) *fixture {
	fx := &fixture{t: t, flows: &fakeFlows{flows: testFlows(n)}, actions: &fakeActions{}, audit: &syncBuffer{},
		now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	fx.h = New(Options{
		Tokens:  []Token{NewToken("ops", RoleAdmin, adminSecret), NewToken("viewer", RoleRead, readSecret)},
		Flows:   fx.flows,
		Status:  fakeStatus{},
		Actions: fx.actions,
		Audit:   slog.New(slog.NewTextHandler(fx.audit, nil)),
		Clock: func() time.Time {
			fx.mu.Lock()
			defer fx.mu.Unlock()
			return fx.now
		},
		FailuresPerMinute: 5,
	})
	return fx
}

func (fx *fixture) advance(d time.Duration) {
	fx.mu.Lock()
	fx.now = fx.now.Add(d)
	fx.mu.Unlock()
}

// do sends one request; secret "" sends no Authorization.
func (fx *fixture) do(method, target, secret string, body string, hdr ...string) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, target, rd)
	r.RemoteAddr = "192.0.2.10:5555"
	if secret != "" {
		r.Header.Set("Authorization", "Bearer "+secret)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	fx.h.ServeHTTP(w, r)
	return w
}

func decodeErr(t *testing.T, w *httptest.ResponseRecorder) errorBody {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("error body %q: %v", w.Body.String(), err)
	}
	return e
}

func TestAuthenticationBeforeParsing(t *testing.T) {
	fx := newFixture(t, 10)
	for _, c := range []struct{ method, target, secret string }{
		{"GET", "/api/v1/flows?dport=notaport", ""},
		{"GET", "/api/v1/flows?dport=notaport", "wrong-token-wrong-token"},
		{"DELETE", "/api/v1/flows?proto=tcp", ""},
		{"GET", "/api/v1/flows?token=" + adminSecret, ""}, // a token in the URL is not a credential
		{"GET", "/api/v1/nothing-here", ""},
		{"POST", "/api/v1/actions/commit", "Basic " + adminSecret},
	} {
		fx.advance(time.Minute) // stay under the failure rate limit
		w := fx.do(c.method, c.target, c.secret, "")
		if w.Code != http.StatusUnauthorized {
			t.Errorf("%s %s with %q: status %d, want 401 (%s)", c.method, c.target, c.secret, w.Code, w.Body)
		}
		if !strings.Contains(w.Header().Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s %s: no WWW-Authenticate: Bearer", c.method, c.target)
		}
	}
	if fx.flows.parsed != 0 || fx.flows.deletes != 0 || len(fx.actions.calls) != 0 {
		t.Errorf("unauthenticated requests reached the daemon: %d parses, %d deletes, actions %v", fx.flows.parsed, fx.flows.deletes, fx.actions.calls)
	}
}

func TestReadTokenIsForbiddenToModify(t *testing.T) {
	fx := newFixture(t, 30)
	before := fx.flows.len()
	for _, c := range []struct{ method, target, body string }{
		{"DELETE", "/api/v1/flows?proto=tcp", ""},
		{"PATCH", "/api/v1/flows?proto=tcp", `{"mark":7}`},
		{"POST", "/api/v1/actions/commit", ""},
		{"POST", "/api/v1/actions/purge", ""},
	} {
		w := fx.do(c.method, c.target, readSecret, c.body)
		if w.Code != http.StatusForbidden {
			t.Errorf("%s %s with a read token: status %d, want 403", c.method, c.target, w.Code)
		}
	}
	if fx.flows.len() != before || fx.flows.deletes+fx.flows.updates != 0 || len(fx.actions.calls) != 0 || fx.flows.parsed != 0 {
		t.Errorf("a read token changed something: %d→%d flows, %d deletes, %d updates, actions %v, %d parses",
			before, fx.flows.len(), fx.flows.deletes, fx.flows.updates, fx.actions.calls, fx.flows.parsed)
	}
	// and it may read
	if w := fx.do("GET", "/api/v1/status", readSecret, ""); w.Code != 200 {
		t.Errorf("status with a read token: %d", w.Code)
	}
}

func TestBadParametersAreNamed(t *testing.T) {
	fx := newFixture(t, 10)
	for _, c := range []struct{ method, target, param string }{
		{"GET", "/api/v1/flows?dport=http", "dport"},
		{"GET", "/api/v1/flows?colour=red", "colour"},
		{"GET", "/api/v1/flows?source=disk", "source"},
		{"GET", "/api/v1/flows?limit=-1", "limit"},
		{"GET", "/api/v1/flows?sort=dport", "sort"},
		{"GET", "/api/v1/flows/page?sort=size", "sort"},
		{"GET", "/api/v1/flows/page?limit=100000", "limit"},
		{"GET", "/api/v1/flows/page?offset=x", "offset"},
		{"GET", "/api/v1/flows/page?order=up", "order"},
		{"GET", "/api/v1/flows/page?source=kernel&source=internal", "source"},
		{"DELETE", "/api/v1/flows", "filter"},
		{"DELETE", "/api/v1/flows?source=external&proto=tcp", "source"},
		{"DELETE", "/api/v1/flows?proto=tcp&limit=3", "limit"},
		{"DELETE", "/api/v1/flows?proto=tcpx", "proto"},
		{"PATCH", "/api/v1/flows?proto=tcp", "body"},
		{"GET", "/api/v1/expectations?x=1", "x"},
		{"POST", "/api/v1/actions/commit?now=1", "now"},
	} {
		w := fx.do(c.method, c.target, adminSecret, "")
		if w.Code != http.StatusBadRequest {
			t.Errorf("%s %s: status %d, want 400 (%s)", c.method, c.target, w.Code, w.Body)
			continue
		}
		if e := decodeErr(t, w); e.Param != c.param || !strings.Contains(e.Error, c.param) {
			t.Errorf("%s %s: error %+v does not name %q", c.method, c.target, e, c.param)
		}
	}
	if fx.flows.deletes+fx.flows.updates != 0 || fx.flows.len() != 10 || len(fx.actions.calls) != 0 {
		t.Errorf("bad requests changed something: %d deletes %d updates, %d flows, actions %v", fx.flows.deletes, fx.flows.updates, fx.flows.len(), fx.actions.calls)
	}
}

func TestListStreamsNDJSON(t *testing.T) {
	fx := newFixture(t, 300)
	want := 0
	for _, f := range fx.flows.flows {
		if f.Proto == flow.ProtoTCP && f.Orig.DstPort == 81 {
			want++
		}
	}
	w := fx.do("GET", "/api/v1/flows?proto=tcp&dport=81", readSecret, "")
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, content type %q", w.Code, w.Header().Get("Content-Type"))
	}
	sc := bufio.NewScanner(w.Body)
	n := 0
	for sc.Scan() {
		var v flow.View
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("line %d %q: %v", n+1, sc.Text(), err)
		}
		if v.Proto != "tcp" || v.Dport != 81 {
			t.Fatalf("line %d: %+v does not match the filter", n+1, v)
		}
		n++
	}
	if n != want || want == 0 {
		t.Errorf("%d lines, want %d", n, want)
	}
	// limit, and the external source carries the origin
	w = fx.do("GET", "/api/v1/flows?limit=7&source=external", readSecret, "")
	if lines := strings.Count(w.Body.String(), "\n"); lines != 7 || !strings.Contains(w.Body.String(), `"origin":"peer"`) {
		t.Errorf("limit=7 source=external: %d lines: %.200s", lines, w.Body)
	}
}

func TestPageMatchesAFullSort(t *testing.T) {
	fx := newFixture(t, 2000)
	for _, c := range []struct {
		query  string
		key    string
		desc   bool
		filter func(*flow.Flow) bool
	}{
		{"sort=dport&order=desc&offset=0&limit=25", "dport", true, nil},
		{"sort=dport&offset=130&limit=40", "dport", false, nil},
		{"sort=timeout&order=desc&offset=1990&limit=50", "timeout", true, nil},
		{"proto=udp&sort=mark&offset=10&limit=10", "mark", false, func(f *flow.Flow) bool { return f.Proto == flow.ProtoUDP }},
		{"limit=5", "src", false, nil},
	} {
		w := fx.do("GET", "/api/v1/flows/page?"+c.query, readSecret, "")
		if w.Code != 200 {
			t.Fatalf("%s: %d %s", c.query, w.Code, w.Body)
		}
		var p Page
		if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
			t.Fatal(err)
		}
		var all []row
		for i := range fx.flows.flows {
			if c.filter == nil || c.filter(&fx.flows.flows[i]) {
				all = append(all, row{f: fx.flows.flows[i]})
			}
		}
		cmpf := rowCompare(c.key, c.desc)
		slices.SortFunc(all, func(a, b row) int { return cmpf(&a, &b) })
		if p.Total != len(all) {
			t.Errorf("%s: total %d, want %d", c.query, p.Total, len(all))
		}
		lo := min(p.Offset, len(all))
		hi := min(p.Offset+p.Limit, len(all))
		want := all[lo:hi]
		if len(p.Flows) != len(want) {
			t.Fatalf("%s: %d flows, want %d", c.query, len(p.Flows), len(want))
		}
		for i := range want {
			if got := p.Flows[i]; got.Src != want[i].f.SrcAddr().String() || got.Sport != want[i].f.Orig.SrcPort {
				t.Errorf("%s: row %d is %s:%d, want %s:%d", c.query, i, got.Src, got.Sport, want[i].f.SrcAddr(), want[i].f.Orig.SrcPort)
				break
			}
		}
	}
}

func TestDeleteAuditAndCount(t *testing.T) {
	fx := newFixture(t, 100)
	want := 0
	for _, f := range fx.flows.flows {
		if f.Proto == flow.ProtoUDP {
			want++
		}
	}
	w := fx.do("DELETE", "/api/v1/flows?proto=udp", adminSecret, "")
	if w.Code != 200 {
		t.Fatalf("delete: %d %s", w.Code, w.Body)
	}
	var c Count
	json.Unmarshal(w.Body.Bytes(), &c)
	if c.Deleted == nil || *c.Deleted != want || want == 0 {
		t.Errorf("deleted %v, want %d", c.Deleted, want)
	}
	for _, f := range fx.flows.flows {
		if f.Proto == flow.ProtoUDP {
			t.Fatalf("a UDP flow survived the delete")
		}
	}
	if fx.flows.len() != 100-want {
		t.Errorf("%d flows left, want %d", fx.flows.len(), 100-want)
	}
	line := fx.audit.String()
	for _, s := range []string{"token=ops", `action="delete flows"`, "filter=\"proto=17 dport=-1\"", "count=" + itoa(uint64(want))} {
		if !strings.Contains(line, s) {
			t.Errorf("audit log %q lacks %s", line, s)
		}
	}
}

func TestPatchAndActions(t *testing.T) {
	fx := newFixture(t, 50)
	w := fx.do("PATCH", "/api/v1/flows?dport=82", adminSecret, `{"mark":4242,"timeout":77}`)
	if w.Code != 200 {
		t.Fatalf("patch: %d %s", w.Code, w.Body)
	}
	n := 0
	for _, f := range fx.flows.flows {
		if f.Orig.DstPort == 82 {
			n++
			if f.Mark != 4242 || f.Timeout != 77 {
				t.Fatalf("flow not changed: %+v", f)
			}
		} else if f.Mark == 4242 {
			t.Fatalf("a flow outside the filter changed")
		}
	}
	if !strings.Contains(w.Body.String(), `"updated": `+itoa(uint64(n))) {
		t.Errorf("answer %s does not say %d updated", w.Body, n)
	}
	if w := fx.do("PATCH", "/api/v1/flows?dport=82", adminSecret, `{"mark":1,"colour":2}`); w.Code != 400 {
		t.Errorf("unknown body field: %d", w.Code)
	}
	if w := fx.do("PATCH", "/api/v1/flows?dport=82", adminSecret, `{"mark":1}`+strings.Repeat(" ", MaxBody)); w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("huge body: %d", w.Code)
	}
	for _, a := range Action {
		w := fx.do("POST", "/api/v1/actions/"+a, adminSecret, "")
		want := 200
		if a == "bulk" {
			want = http.StatusConflict
		}
		if w.Code != want {
			t.Errorf("action %s: %d, want %d (%s)", a, w.Code, want, w.Body)
		}
	}
	if !slices.Equal(fx.actions.calls, Action) {
		t.Errorf("actions called %v, want %v", fx.actions.calls, Action)
	}
	if got := strings.Count(fx.audit.String(), "\n"); got != 1+len(Action) {
		t.Errorf("%d audit lines, want %d:\n%s", got, 1+len(Action), fx.audit)
	}
	if w := fx.do("GET", "/api/v1/expectations", adminSecret, ""); w.Code != http.StatusNotImplemented {
		t.Errorf("expectations without a source: %d", w.Code)
	}
	if w := fx.do("GET", "/api/v1/flows?"+strings.Repeat("a", MaxQuery+1), adminSecret, ""); w.Code != http.StatusRequestURITooLong {
		t.Errorf("long query: %d", w.Code)
	}
}

func TestFailedLoginsAreRateLimited(t *testing.T) {
	fx := newFixture(t, 1)
	for i := 0; i < 5; i++ {
		if w := fx.do("GET", "/api/v1/status", "bad-token-bad-token", ""); w.Code != 401 {
			t.Fatalf("failure %d: %d", i, w.Code)
		}
	}
	w := fx.do("GET", "/api/v1/status", adminSecret, "")
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Fatalf("after 5 failures, a good token got %d (want 429 with Retry-After)", w.Code)
	}
	if w := fx.do("POST", "/api/v1/login", "", `{"token":"`+adminSecret+`"}`); w.Code != http.StatusTooManyRequests {
		t.Errorf("login while blocked: %d", w.Code)
	}
	fx.advance(15 * time.Second) // one failure's worth refilled at 5/min
	if w := fx.do("GET", "/api/v1/status", adminSecret, ""); w.Code != 200 {
		t.Errorf("after the wait: %d", w.Code)
	}
	// another address was never blocked
	r := httptest.NewRequest("GET", "/api/v1/status", nil)
	r.RemoteAddr = "192.0.2.99:1"
	r.Header.Set("Authorization", "Bearer "+readSecret)
	rw := httptest.NewRecorder()
	fx.h.ServeHTTP(rw, r)
	if rw.Code != 200 {
		t.Errorf("other address: %d", rw.Code)
	}
}

func TestConsoleSessionNeedsCSRFHeader(t *testing.T) {
	fx := newFixture(t, 20)
	if w := fx.do("POST", "/api/v1/login", "", `{"token":"nope-nope-nope-nope"}`); w.Code != 401 {
		t.Fatalf("bad login: %d", w.Code)
	}
	w := fx.do("POST", "/api/v1/login", "", `{"token":"`+adminSecret+`"}`)
	if w.Code != 200 {
		t.Fatalf("login: %d %s", w.Code, w.Body)
	}
	var info sessionInfo
	json.Unmarshal(w.Body.Bytes(), &info)
	cookies := w.Result().Cookies()
	if len(cookies) != 1 || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode || cookies[0].Value == adminSecret {
		t.Fatalf("cookie %+v: want one HttpOnly SameSite=Strict session id", cookies)
	}
	if info.Role != "admin" || len(info.CSRF) < 32 {
		t.Fatalf("login answer %+v", info)
	}
	cookie := SessionCookie + "=" + cookies[0].Value
	if w := fx.do("GET", "/api/v1/status", "", "", "Cookie", cookie); w.Code != 200 {
		t.Errorf("status with the cookie: %d", w.Code)
	}
	if w := fx.do("GET", "/api/v1/session", "", "", "Cookie", cookie); !strings.Contains(w.Body.String(), info.CSRF) {
		t.Errorf("session does not return the CSRF token: %s", w.Body)
	}
	before := fx.flows.len()
	if w := fx.do("DELETE", "/api/v1/flows?proto=tcp", "", "", "Cookie", cookie); w.Code != 403 {
		t.Errorf("delete with the cookie and no CSRF header: %d", w.Code)
	}
	if w := fx.do("DELETE", "/api/v1/flows?proto=tcp", "", "", "Cookie", cookie, CSRFHeader, strings.Repeat("0", len(info.CSRF))); w.Code != 403 {
		t.Errorf("delete with a wrong CSRF header: %d", w.Code)
	}
	if fx.flows.len() != before {
		t.Fatalf("a request without the CSRF token deleted flows")
	}
	if w := fx.do("DELETE", "/api/v1/flows?proto=tcp", "", "", "Cookie", cookie, CSRFHeader, info.CSRF); w.Code != 200 {
		t.Errorf("delete with cookie and CSRF header: %d %s", w.Code, w.Body)
	}
	if !strings.Contains(fx.audit.String(), "via=session") {
		t.Errorf("audit does not say the session did it: %s", fx.audit)
	}
	if w := fx.do("POST", "/api/v1/logout", "", "", "Cookie", cookie, CSRFHeader, info.CSRF); w.Code != 200 {
		t.Errorf("logout: %d", w.Code)
	}
	if w := fx.do("GET", "/api/v1/status", "", "", "Cookie", cookie); w.Code != 401 {
		t.Errorf("status after logout: %d", w.Code)
	}
	// read session cannot modify even with CSRF
	w = fx.do("POST", "/api/v1/login", "", `{"token":"`+readSecret+`"}`)
	json.Unmarshal(w.Body.Bytes(), &info)
	cookie = SessionCookie + "=" + w.Result().Cookies()[0].Value
	if w := fx.do("POST", "/api/v1/actions/commit", "", "", "Cookie", cookie, CSRFHeader, info.CSRF); w.Code != 403 {
		t.Errorf("read session commit: %d", w.Code)
	}
}

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	good := "# who role token\nops admin " + adminSecret + "\n\nviewer read " + readSecret + "\n"
	toks, err := LoadTokens(write("good", good, 0o600))
	if err != nil || len(toks) != 2 || toks[0].Role != RoleAdmin || toks[1].Name != "viewer" {
		t.Fatalf("good file: %v %+v", err, toks)
	}
	if _, ok := lookup(toks, readSecret); !ok {
		t.Error("read token not found")
	}
	if _, err := LoadTokens(write("open", good, 0o640)); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable file: %v", err)
	}
	for _, c := range []struct{ text, want string }{
		{"ops admin\n", ":1: want NAME ROLE TOKEN"},
		{"ops root " + adminSecret + "\n", ":1: role \"root\""},
		{"# c\nops admin short\n", ":2: token of ops is 5 characters"},
		{"a admin " + adminSecret + "\na read " + readSecret + "\n", ":2: name a is also on line 1"},
		{"a admin " + adminSecret + "\nb read " + adminSecret + "\n", ":2: token of b is the same"},
		{"# nothing\n", "no tokens"},
	} {
		p := write("bad", c.text, 0o600)
		if _, err := LoadTokens(p); err == nil || !strings.Contains(err.Error(), p+c.want) && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.text, err, c.want)
		}
	}
}
