// Package control is the local control plane between ctsyncd and ctsyncctl:
// a UNIX stream socket, one request per connection.
//
// A request is one JSON line (Request). The answer is a stream of frames,
// each a kind byte, a 4-byte big-endian length and a payload: 'D' data to
// print, then exactly one of 'K' (success, empty) or 'E' (failure, a
// one-line reason). Streaming keeps a dump of a million flows out of memory,
// and an error met half-way through still reaches the client as a failure.
//
// Concurrency: a Server serves each connection in its own goroutine, all
// owned by Serve and stopped with its context; handlers run concurrently
// and must synchronize what they share.
package control

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Version is the control protocol version carried in each request.
const Version = 1

// Request is what ctsyncctl asks.
type Request struct {
	Version int      `json:"version"`
	Command string   `json:"command"`
	Args    []string `json:"args,omitempty"`
	JSON    bool     `json:"json,omitempty"`
}

// Frame kinds.
const (
	frameData  = 'D'
	frameOK    = 'K'
	frameError = 'E'
)

// MaxRequest bounds a request line.
const MaxRequest = 64 << 10

// maxFrame bounds a frame's payload.
const maxFrame = 16 << 20

// Sentinel errors.
var (
	// ErrFailed wraps the reason the daemon gave for a failed command.
	ErrFailed = errors.New("command failed")
	// ErrProtocol means the peer broke the framing.
	ErrProtocol = errors.New("control protocol error")
	// ErrUnknownCommand is returned by handlers for commands they do not know.
	ErrUnknownCommand = errors.New("unknown command")
	// ErrUsage means the command's arguments are wrong.
	ErrUsage = errors.New("usage")
)

func writeFrame(w io.Writer, kind byte, p []byte) error {
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(p)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(p)
	return err
}

// ReadResponse copies the data frames of an answer to out and returns nil on
// success, or an error wrapping ErrFailed with the daemon's reason.
func ReadResponse(r io.Reader, out io.Writer) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var hdr [5]byte
	buf := make([]byte, 0, 64<<10)
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: daemon closed the connection without an answer", ErrProtocol)
			}
			return fmt.Errorf("read answer: %w", err)
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n > maxFrame {
			return fmt.Errorf("%w: frame of %d bytes", ErrProtocol, n)
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("%w: short frame: %v", ErrProtocol, err)
		}
		switch hdr[0] {
		case frameData:
			if _, err := out.Write(buf); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
		case frameOK:
			return nil
		case frameError:
			return fmt.Errorf("%w: %s", ErrFailed, buf)
		default:
			return fmt.Errorf("%w: frame kind %q", ErrProtocol, hdr[0])
		}
	}
}

// DecodeRequest parses one request line.
func DecodeRequest(line []byte) (*Request, error) {
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return nil, fmt.Errorf("%w: bad request: %v", ErrProtocol, err)
	}
	if req.Version != Version {
		return nil, fmt.Errorf("%w: protocol version %d, this daemon speaks %d (ctsyncctl and ctsyncd differ?)", ErrProtocol, req.Version, Version)
	}
	if req.Command == "" {
		return nil, fmt.Errorf("%w: empty command", ErrProtocol)
	}
	return &req, nil
}
