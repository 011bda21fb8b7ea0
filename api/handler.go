package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// Limits on what a client may send.
const (
	MaxBody  = 64 << 10 // request body bytes
	MaxQuery = 8 << 10  // query string bytes
)

// Cookie and header names of a console session.
const (
	SessionCookie = "ctsyncd_session"
	CSRFHeader    = "X-CSRF-Token"
)

// Handler serves the API and the console.
type Handler struct {
	opts     Options
	mux      *http.ServeMux
	sessions *sessions
	limiter  *limiter
	audit    *slog.Logger
	log      *slog.Logger
}

// route is one documented endpoint.
type route struct {
	method, path string
	role         Role // RoleNone: no authentication (login)
	h            func(w http.ResponseWriter, r *http.Request, who identity)
}

// identity is who sent a request.
type identity struct {
	name string
	role Role
	via  string // "token" or "session"
}

// New returns a Handler serving the API under /api/v1/ and the console at /.
func New(opts Options) *Handler {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Audit == nil {
		opts.Audit = opts.Log.With("part", "audit")
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.FailuresPerMinute <= 0 {
		opts.FailuresPerMinute = 10
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 12 * time.Hour
	}
	h := &Handler{
		opts:     opts,
		mux:      http.NewServeMux(),
		sessions: &sessions{m: map[string]*session{}, ttl: opts.SessionTTL, max: 1024},
		limiter:  newLimiter(opts.FailuresPerMinute),
		audit:    opts.Audit,
		log:      opts.Log,
	}
	for _, rt := range h.routes() {
		h.mux.Handle(rt.method+" "+rt.path, h.wrap(rt))
	}
	h.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := h.authenticate(w, r); !ok {
			return
		}
		writeError(w, http.StatusNotFound, "", fmt.Sprintf("no such endpoint: %s %s (see docs/openapi.json)", r.Method, r.URL.Path))
	})
	if opts.Console != nil {
		h.mux.Handle("/", opts.Console)
	}
	return h
}

func (h *Handler) routes() []route {
	rs := []route{
		{"POST", "/api/v1/login", RoleNone, h.login},
		{"POST", "/api/v1/logout", RoleRead, h.logout},
		{"GET", "/api/v1/session", RoleRead, h.session},
		{"GET", "/api/v1/status", RoleRead, h.status},
		{"GET", "/api/v1/flows", RoleRead, h.listFlows},
		{"GET", "/api/v1/flows/page", RoleRead, h.pageFlows},
		{"DELETE", "/api/v1/flows", RoleAdmin, h.deleteFlows},
		{"PATCH", "/api/v1/flows", RoleAdmin, h.patchFlows},
		{"GET", "/api/v1/expectations", RoleRead, h.listExpectations},
	}
	for _, a := range Action {
		rs = append(rs, route{"POST", "/api/v1/actions/" + a, RoleAdmin, h.action(a)})
	}
	return rs
}

// Routes lists the endpoints as "METHOD /path" (the OpenAPI test).
func (h *Handler) Routes() []string {
	var out []string
	for _, rt := range h.routes() {
		out = append(out, rt.method+" "+rt.path)
	}
	return out
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	if len(r.URL.RawQuery) > MaxQuery {
		writeError(w, http.StatusRequestURITooLong, "", fmt.Sprintf("query string longer than %d bytes", MaxQuery))
		return
	}
	h.mux.ServeHTTP(w, r)
}

// wrap authenticates and authorizes before the route's handler parses
// anything.
func (h *Handler) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		if rt.role == RoleNone {
			rt.h(w, r, identity{})
			return
		}
		who, ok := h.authenticate(w, r)
		if !ok {
			return
		}
		if who.role < rt.role {
			writeError(w, http.StatusForbidden, "", fmt.Sprintf("token %s has role %s; %s %s needs %s", who.name, who.role, rt.method, rt.path, rt.role))
			return
		}
		rt.h(w, r, who)
	})
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// authenticate finds who sent r: a Bearer token, or a session cookie (with
// the CSRF header on anything but GET and HEAD). It answers 401 or 429
// itself and returns false when there is nobody.
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request) (identity, bool) {
	now := h.opts.Clock()
	addr := clientAddr(r)
	if blocked, wait := h.limiter.blocked(addr, now); blocked {
		w.Header().Set("Retry-After", fmt.Sprint(int(wait.Seconds())+1))
		writeError(w, http.StatusTooManyRequests, "", "too many failed authentications from this address; try again later")
		return identity{}, false
	}
	fail := func(msg string) (identity, bool) {
		h.limiter.fail(addr, now)
		h.log.Warn("api: authentication failed", "remote", addr, "path", r.URL.Path, "reason", msg)
		w.Header().Set("WWW-Authenticate", `Bearer realm="ctsyncd"`)
		writeError(w, http.StatusUnauthorized, "", msg)
		return identity{}, false
	}
	if auth := r.Header.Get("Authorization"); auth != "" {
		scheme, secret, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
			return fail("Authorization must be \"Bearer TOKEN\"")
		}
		t, ok := lookup(h.opts.Tokens, strings.TrimSpace(secret))
		if !ok {
			return fail("unknown token")
		}
		return identity{name: t.Name, role: t.Role, via: "token"}, true
	}
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return fail("no credentials: send Authorization: Bearer TOKEN, or log in")
	}
	s, ok := h.sessions.get(c.Value, now)
	if !ok {
		return fail("session expired or unknown: log in again")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if subtle := r.Header.Get(CSRFHeader); subtle == "" || !equalConst(subtle, s.csrf) {
			h.limiter.fail(addr, now)
			writeError(w, http.StatusForbidden, "", "missing or wrong "+CSRFHeader+" header for a session request")
			return identity{}, false
		}
	}
	return identity{name: s.name, role: s.role, via: "session"}, true
}

func equalConst(a, b string) bool {
	return len(a) == len(b) && subtleCompare([]byte(a), []byte(b))
}

// errorBody is every error answer.
type errorBody struct {
	Error string `json:"error"`
	Param string `json:"param,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, param, msg string) {
	writeJSON(w, code, errorBody{Error: msg, Param: param})
}

// writeErr maps an error to its status: ParamError 400, ErrUnavailable 409,
// a body too large 413, anything else 500.
func (h *Handler) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var pe *ParamError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &pe):
		writeError(w, http.StatusBadRequest, pe.Param, pe.Error())
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("request body larger than %d bytes", mbe.Limit))
	case errors.Is(err, ErrUnavailable):
		writeError(w, http.StatusConflict, "", err.Error())
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// the client went away
	default:
		h.log.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "", err.Error())
	}
}

// decodeBody decodes a JSON body into v, refusing unknown fields.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return &ParamError{Param: "body", Problem: err.Error()}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return &ParamError{Param: "body", Problem: "empty; a JSON object is expected"}
		}
		return &ParamError{Param: "body", Problem: err.Error()}
	}
	if dec.More() {
		return &ParamError{Param: "body", Problem: "more than one JSON value"}
	}
	return nil
}

// auditLog records a modification.
func (h *Handler) auditLog(r *http.Request, who identity, action, filter string, count int, err error) {
	args := []any{"token", who.name, "role", who.role.String(), "via", who.via, "action", action,
		"filter", filter, "count", count, "remote", clientAddr(r)}
	if err != nil {
		args = append(args, "err", err.Error())
		h.audit.Warn("api modification failed", args...)
		return
	}
	h.audit.Info("api modification", args...)
}
