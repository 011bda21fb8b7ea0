package httpd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// start runs a server until the test ends; done is closed when Serve
// returned, its error then in *serveErr.
func start(t *testing.T, opts Options, mount func(*Server)) (*Server, context.CancelFunc, <-chan struct{}) {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	opts.Log = slog.New(slog.DiscardHandler)
	s, err := Listen(opts)
	if err != nil {
		t.Fatal(err)
	}
	mount(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		if err := s.Serve(ctx); err != nil {
			t.Errorf("Serve: %v", err)
		}
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s, cancel, done
}

func TestServeAndLimits(t *testing.T) {
	s, _, _ := start(t, Options{Name: "test", MaxBodyBytes: 10, MaxHeaderBytes: 1 << 10}, func(s *Server) {
		s.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") })
		s.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(r.Body)
			if IsBodyTooLarge(err) {
				http.Error(w, "too large", http.StatusRequestEntityTooLarge)
				return
			}
			w.Write(b)
		})
	})
	resp, err := http.Get(s.URL() + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "hi" {
		t.Fatalf("GET /hello: %d %q", resp.StatusCode, b)
	}
	resp, err = http.Get(s.URL() + "/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing: %d, want 404", resp.StatusCode)
	}
	resp, err = http.Post(s.URL()+"/echo", "text/plain", strings.NewReader("short"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("small body: %d", resp.StatusCode)
	}
	resp, err = http.Post(s.URL()+"/echo", "text/plain", strings.NewReader(strings.Repeat("x", 100)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("large body: %d, want 413", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", s.URL()+"/hello", nil)
	req.Header.Set("X-Big", strings.Repeat("y", 8<<10))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("large header: %d, want 431", resp.StatusCode)
	}
}

func TestSlowHeaderCut(t *testing.T) {
	s, _, _ := start(t, Options{ReadHeaderTimeout: 200 * time.Millisecond}, func(s *Server) {})
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\n") // never finishes the header
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server kept a connection whose header never ended")
	}
}

func TestGracefulShutdown(t *testing.T) {
	inside := make(chan struct{})
	release := make(chan struct{})
	s, cancel, done := start(t, Options{}, func(s *Server) {
		s.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
			close(inside)
			<-release
			io.WriteString(w, "done")
		})
	})
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get(s.URL() + "/slow")
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-inside
	cancel()
	// Serve must wait for the running request.
	select {
	case <-done:
		t.Fatal("Serve returned while a request ran")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if b := <-got; b != "done" {
		t.Errorf("request during shutdown got %q", b)
	}
	<-done
	if _, err := net.Dial("tcp", s.Addr().String()); err == nil {
		t.Error("still accepting after shutdown")
	}
}

func TestListenError(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	s, err := Listen(Options{Addr: "127.0.0.1:0", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = Listen(Options{Name: "metrics", Addr: s.Addr().String(), Log: log})
	if err == nil || !strings.Contains(err.Error(), "metrics listener") {
		t.Fatalf("second listener on a busy port: %v", err)
	}
	if _, err := Listen(Options{Addr: "127.0.0.1:0"}); err == nil {
		t.Fatal("Listen without a logger succeeded")
	}
}

func TestTLS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	s, _, _ := start(t, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}, func(s *Server) {
		s.HandleFunc("/x", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "secure") })
	})
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Fatalf("URL %s", s.URL())
	}
	pool := x509.NewCertPool()
	parsed, _ := x509.ParseCertificate(der)
	pool.AddCert(parsed)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get(s.URL() + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "secure" {
		t.Errorf("got %q", b)
	}
	// Plain HTTP to the TLS listener fails.
	resp, err = http.Get("http://" + s.Addr().String() + "/x")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP served by a TLS listener")
		}
	}
}
