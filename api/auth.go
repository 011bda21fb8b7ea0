package api

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"
)

// Role is what a token may do.
type Role int

// Roles, in increasing power.
const (
	RoleNone  Role = iota
	RoleRead       // read status, flows, expectations
	RoleAdmin      // also delete and change flows, trigger actions
)

func (r Role) String() string {
	switch r {
	case RoleRead:
		return "read"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// Token is one line of the tokens file. Only a hash of the secret is kept.
type Token struct {
	Name string
	Role Role
	hash [sha256.Size]byte
}

// NewToken makes a token from its secret (tests and LoadTokens).
func NewToken(name string, role Role, secret string) Token {
	return Token{Name: name, Role: role, hash: sha256.Sum256([]byte(secret))}
}

// MinSecret is the shortest token secret accepted.
const MinSecret = 16

// ErrTokens is wrapped by every problem with the tokens file.
var ErrTokens = errors.New("api tokens file")

// LoadTokens reads a tokens file: one `NAME ROLE TOKEN` a line, ROLE read
// or admin; blank lines and lines starting with # are skipped. Like the
// sync key, a file that group or others may access is refused. Problems
// are reported as "path:line: problem".
func LoadTokens(path string) ([]Token, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTokens, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTokens, err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s: mode %04o lets group or others read the tokens; chmod 600 it", ErrTokens, path, perm)
	}
	data, err := readLimited(f, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrTokens, path, err)
	}
	toks, err := ParseTokens(path, data)
	if err != nil {
		return nil, err
	}
	return toks, nil
}

func readLimited(f *os.File, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return b, nil
}

// ParseTokens parses the text of a tokens file; name is used in errors.
func ParseTokens(name string, data []byte) ([]Token, error) {
	var toks []Token
	var errs []error
	names := map[string]int{}
	secrets := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 64<<10)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%w: %s:%d: %s", ErrTokens, name, line, fmt.Sprintf(format, args...)))
		}
		fields := strings.Fields(text)
		if len(fields) != 3 {
			bad("want NAME ROLE TOKEN, found %d fields", len(fields))
			continue
		}
		n, r, secret := fields[0], fields[1], fields[2]
		if len(n) > 64 || strings.IndexFunc(n, func(c rune) bool { return !unicode.IsPrint(c) }) >= 0 {
			bad("name %.20q is not a printable name of at most 64 bytes", n)
			continue
		}
		var role Role
		switch r {
		case "read":
			role = RoleRead
		case "admin":
			role = RoleAdmin
		default:
			bad("role %.20q is not read or admin", r)
			continue
		}
		if len(secret) < MinSecret {
			bad("token of %s is %d characters; at least %d (e.g. openssl rand -hex 32)", n, len(secret), MinSecret)
			continue
		}
		if prev, dup := names[n]; dup {
			bad("name %s is also on line %d", n, prev)
			continue
		}
		t := NewToken(n, role, secret)
		if prev, dup := secrets[t.hash]; dup {
			bad("token of %s is the same as the one on line %d", n, prev)
			continue
		}
		names[n], secrets[t.hash] = line, line
		toks = append(toks, t)
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%w: %s:%d: %w", ErrTokens, name, line+1, err))
	}
	if len(errs) == 0 && len(toks) == 0 {
		errs = append(errs, fmt.Errorf("%w: %s: no tokens: add a line such as \"ops admin $(openssl rand -hex 32)\"", ErrTokens, name))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return toks, nil
}

// lookup finds the token whose secret is s, comparing in constant time
// against every token.
func lookup(toks []Token, s string) (Token, bool) {
	h := sha256.Sum256([]byte(s))
	var found Token
	ok := 0
	for _, t := range toks {
		if subtle.ConstantTimeCompare(h[:], t.hash[:]) == 1 {
			found, ok = t, 1
		}
	}
	return found, ok == 1
}

// session is a console login.
type session struct {
	name    string
	role    Role
	csrf    string
	expires time.Time
}

// sessions holds console logins by their cookie value.
type sessions struct {
	mu  sync.Mutex
	m   map[string]*session
	ttl time.Duration
	max int
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

func (s *sessions) create(t Token, now time.Time) (id string, sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.m {
		if now.After(v.expires) {
			delete(s.m, k)
		}
	}
	if len(s.m) >= s.max { // drop the oldest
		var oldest string
		for k, v := range s.m {
			if oldest == "" || v.expires.Before(s.m[oldest].expires) {
				oldest = k
			}
		}
		delete(s.m, oldest)
	}
	id = randomHex(32)
	sess = &session{name: t.Name, role: t.Role, csrf: randomHex(32), expires: now.Add(s.ttl)}
	s.m[id] = sess
	return id, sess
}

func (s *sessions) get(id string, now time.Time) (*session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[id]
	if !ok {
		return nil, false
	}
	if now.After(v.expires) {
		delete(s.m, id)
		return nil, false
	}
	return v, true
}

func (s *sessions) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}

// limiter counts failed authentications per client address in a token
// bucket: rate per minute, burst as many.
type limiter struct {
	mu      sync.Mutex
	rate    float64 // failures per second
	burst   float64
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(perMinute int) *limiter {
	return &limiter{rate: float64(perMinute) / 60, burst: float64(perMinute), buckets: map[string]*bucket{}}
}

func (l *limiter) refill(b *bucket, now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(l.burst, b.tokens+el*l.rate)
	}
	b.last = now
}

// blocked reports whether addr has used its failures, and when it may try
// again.
func (l *limiter) blocked(addr string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[addr]
	if !ok {
		return false, 0
	}
	l.refill(b, now)
	if b.tokens >= 1 {
		return false, 0
	}
	return true, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// fail records a failed authentication from addr.
func (l *limiter) fail(addr string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[addr]
	if !ok {
		if len(l.buckets) >= 10000 {
			for k, v := range l.buckets {
				l.refill(v, now)
				if v.tokens >= l.burst {
					delete(l.buckets, k)
				}
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[addr] = b
	}
	l.refill(b, now)
	b.tokens = max(0, b.tokens-1)
}
