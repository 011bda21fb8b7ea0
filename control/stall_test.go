package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStalledClient: a client that sends a request for a large answer and
// never reads it makes the handler's writes fail within the write timeout,
// so the handler returns and its memory and slot are freed; more clients
// than MaxConns are refused at once, and a slot freed is usable again.
func TestStalledClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := Listen(ServerOptions{Path: path, Mode: 0o600, GID: -1, Log: slog.New(slog.DiscardHandler),
		WriteTimeout: 200 * time.Millisecond, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan error, 16)
	go s.Serve(ctx, func(ctx context.Context, req *Request, out *Writer) error {
		if req.Command == "echo" {
			out.Write([]byte("ok\n"))
			return nil
		}
		line := []byte(strings.Repeat("x", 1023) + "\n")
		for { // an answer without end: only a failed write stops it
			if _, err := out.Write(line); err != nil {
				ended <- err
				return err
			}
		}
	})
	stall := func() net.Conn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(Request{Version: Version, Command: "flood"})
		if _, err := c.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		return c // never read
	}
	c1, c2 := stall(), stall()
	defer c1.Close()
	defer c2.Close()
	for range 2 {
		select {
		case err := <-ended:
			t.Logf("stalled client's handler returned: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("a handler writing to a client that does not read never returned")
		}
	}
	// Both handlers returned: their slots are free again.
	var out bytes.Buffer
	if err := Do(path, Request{Command: "echo"}, &out); err != nil || out.String() != "ok\n" {
		t.Fatalf("after the stalled clients: %q, %v", out.String(), err)
	}
}

// TestMaxConns: connections beyond MaxConns get a "busy" error at once.
func TestMaxConns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := Listen(ServerOptions{Path: path, Mode: 0o600, GID: -1, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	release := make(chan struct{})
	defer close(release)
	started := make(chan struct{}, 4)
	go s.Serve(ctx, func(ctx context.Context, req *Request, out *Writer) error {
		started <- struct{}{}
		<-release
		return nil
	})
	for range 2 {
		go Do(path, Request{Command: "hold"}, &bytes.Buffer{})
		<-started
	}
	err = Do(path, Request{Command: "hold"}, &bytes.Buffer{})
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("third connection: %v, want busy", err)
	}
}
