package api

import (
	"crypto/subtle"
	"net/http"
)

func subtleCompare(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

type loginRequest struct {
	Token string `json:"token"`
}

// sessionInfo answers login and GET /session.
type sessionInfo struct {
	Name string `json:"name"`
	Role string `json:"role"`
	CSRF string `json:"csrf_token"`
}

// login checks a token sent in the body (never in the URL) and starts a
// console session: an HttpOnly, SameSite=Strict cookie, and a CSRF token
// the page keeps in memory and sends as X-CSRF-Token.
func (h *Handler) login(w http.ResponseWriter, r *http.Request, _ identity) {
	now := h.opts.Clock()
	addr := clientAddr(r)
	if blocked, _ := h.limiter.blocked(addr, now); blocked {
		writeError(w, http.StatusTooManyRequests, "", "too many failed authentications from this address; try again later")
		return
	}
	var req loginRequest
	if err := decodeBody(r, &req); err != nil {
		h.limiter.fail(addr, now)
		h.writeErr(w, r, err)
		return
	}
	t, ok := lookup(h.opts.Tokens, req.Token)
	if !ok {
		h.limiter.fail(addr, now)
		h.log.Warn("api: login failed", "remote", addr)
		writeError(w, http.StatusUnauthorized, "token", "unknown token")
		return
	}
	id, s := h.sessions.create(t, now)
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: id, Path: "/", HttpOnly: true, Secure: h.opts.SecureCookie,
		SameSite: http.SameSiteStrictMode, Expires: s.expires,
	})
	h.log.Info("api: console login", "token", t.Name, "role", t.Role.String(), "remote", addr)
	writeJSON(w, http.StatusOK, sessionInfo{Name: s.name, Role: s.role.String(), CSRF: s.csrf})
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request, who identity) {
	if c, err := r.Cookie(SessionCookie); err == nil {
		h.sessions.remove(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", HttpOnly: true,
		Secure: h.opts.SecureCookie, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	writeJSON(w, http.StatusOK, map[string]string{"logged_out": who.name})
}

// session tells the console who is logged in and its CSRF token (after a
// reload, the page has lost it from memory). Reading it cross-site is
// impossible: the cookie is SameSite=Strict and the answer is not CORS.
func (h *Handler) session(w http.ResponseWriter, r *http.Request, who identity) {
	info := sessionInfo{Name: who.name, Role: who.role.String()}
	if who.via == "session" {
		if c, err := r.Cookie(SessionCookie); err == nil {
			if s, ok := h.sessions.get(c.Value, h.opts.Clock()); ok {
				info.CSRF = s.csrf
			}
		}
	}
	writeJSON(w, http.StatusOK, info)
}
