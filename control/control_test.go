package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

func TestServerRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := Listen(ServerOptions{Path: path, Mode: 0o600, GID: -1, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- s.Serve(ctx, func(ctx context.Context, req *Request, out *Writer) error {
			switch req.Command {
			case "echo":
				fmt.Fprintln(out, strings.Join(req.Args, " "))
				return nil
			case "big":
				for i := range 100000 {
					fmt.Fprintf(out, "line %d\n", i)
				}
				return nil
			case "halfway":
				fmt.Fprintln(out, "partial")
				return errors.New("broke half-way")
			}
			return fmt.Errorf("%w %q", ErrUnknownCommand, req.Command)
		})
	}()

	var out bytes.Buffer
	if err := Do(path, Request{Command: "echo", Args: []string{"a", "b"}}, &out); err != nil || out.String() != "a b\n" {
		t.Errorf("echo: %q, %v", out.String(), err)
	}
	out.Reset()
	if err := Do(path, Request{Command: "big"}, &out); err != nil || strings.Count(out.String(), "\n") != 100000 {
		t.Errorf("big: %d lines, %v", strings.Count(out.String(), "\n"), err)
	}
	out.Reset()
	err = Do(path, Request{Command: "halfway"}, &out)
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "broke half-way") || out.String() != "partial\n" {
		t.Errorf("halfway: %q, %v", out.String(), err)
	}
	err = Do(path, Request{Command: "nope"}, &out)
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), `unknown command "nope"`) {
		t.Errorf("unknown: %v", err)
	}

	// A second server on the same live socket is refused.
	if _, err := Listen(ServerOptions{Path: path, Mode: 0o600, GID: -1}); err == nil {
		t.Error("second Listen on a live socket succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := Do(path, Request{Command: "echo"}, &out); err == nil {
		t.Error("socket still answers after shutdown")
	}
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"version":1,"command":"status"}`))
	f.Add([]byte(`{"version":1,"command":"dump","args":["internal"],"json":true}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRequest(b)
		if err == nil && (req.Command == "" || req.Version != Version) {
			t.Fatalf("accepted %+v", req)
		}
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v does not match ErrProtocol", err)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	var b bytes.Buffer
	writeFrame(&b, frameData, []byte("x"))
	writeFrame(&b, frameOK, nil)
	f.Add(b.Bytes())
	f.Add([]byte{'E', 0, 0, 0, 3, 'b', 'a', 'd'})
	f.Add([]byte{'D', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		ReadResponse(bytes.NewReader(b), &bytes.Buffer{})
	})
}
