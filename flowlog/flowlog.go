// Package flowlog writes one line for each destroyed flow, with its packet
// and byte counters, to a file operators feed to their accounting (what
// conntrackd's stats mode logs). Lines are in the `conntrack -E -o
// extended` format, prefixed with the time, or JSON objects, one a line.
//
// What it is not: it does not read events (the daemon hands it the DESTROY
// events it reads) and it does not rotate files: Reopen, called on SIGHUP,
// lets logrotate move the file away and have a new one created.
//
// Concurrency: every method is safe for concurrent use. Log writes into a
// buffer under a lock and never blocks on the disk for long: the buffer is
// flushed by Flush (the daemon calls it every second), by Reopen and Close,
// and when it is full.
package flowlog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Formats of the log.
const (
	FormatExtended = "extended"
	FormatJSON     = "json"
)

// Writer is an open flow log.
type Writer struct {
	path   string
	format string

	mu     sync.Mutex // guards the fields below
	f      *os.File
	w      *bufio.Writer
	lines  uint64
	errors uint64
	err    error // last write error, reported once by Flush
}

// Open opens (creating it, mode 0640) or appends to the log at path.
func Open(path, format string) (*Writer, error) {
	if format != FormatExtended && format != FormatJSON {
		return nil, fmt.Errorf("flow log: format %q is not one of %s, %s", format, FormatExtended, FormatJSON)
	}
	l := &Writer{path: path, format: format}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Writer) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o640) // no symlink: whoever can write the directory cannot aim the log elsewhere
	if err != nil {
		return fmt.Errorf("flow log: %w", err)
	}
	l.f, l.w = f, bufio.NewWriterSize(f, 64<<10)
	return nil
}

// Record is one destroyed flow as written in JSON.
type Record struct {
	Time  time.Time `json:"time"`
	Event string    `json:"event"`
	flow.View
	OrigPackets  *uint64  `json:"orig_packets,omitempty"`
	OrigBytes    *uint64  `json:"orig_bytes,omitempty"`
	ReplyPackets *uint64  `json:"reply_packets,omitempty"`
	ReplyBytes   *uint64  `json:"reply_bytes,omitempty"`
	Start        string   `json:"start,omitempty"`
	Stop         string   `json:"stop,omitempty"`
	DurationSecs *float64 `json:"duration_seconds,omitempty"`
}

// Line formats one destroyed flow in the writer's format, without the
// trailing newline.
func Line(format string, at time.Time, f *flow.Flow, c *flow.Counters) ([]byte, error) {
	if format == FormatJSON {
		r := Record{Time: at.UTC(), Event: "destroy", View: f.View()}
		r.View.Timeout = 0
		if c.HaveAcct {
			r.OrigPackets, r.OrigBytes, r.ReplyPackets, r.ReplyBytes = &c.OrigPackets, &c.OrigBytes, &c.ReplyPackets, &c.ReplyBytes
		}
		if c.Start != 0 {
			r.Start = time.Unix(0, c.Start).UTC().Format(time.RFC3339Nano)
		}
		if c.Stop != 0 {
			r.Stop = time.Unix(0, c.Stop).UTC().Format(time.RFC3339Nano)
		}
		if d := c.Duration(); d > 0 {
			s := d.Seconds()
			r.DurationSecs = &s
		}
		return json.Marshal(r)
	}
	b := make([]byte, 0, 256)
	b = at.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, " [DESTROY] "...)
	b = append(b, f.Extended(c)...)
	if d := c.Duration(); d > 0 {
		b = append(b, " delta-time="...)
		b = strconv.AppendInt(b, int64(d/time.Second), 10)
	}
	return b, nil
}

// Log writes one destroyed flow.
func (l *Writer) Log(at time.Time, f *flow.Flow, c *flow.Counters) {
	line, err := Line(l.format, at, f, c)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil && l.w != nil {
		l.w.Write(line)
		err = l.w.WriteByte('\n')
	}
	if err != nil {
		l.errors++
		l.err = err
		return
	}
	l.lines++
}

// Flush writes buffered lines to the file. It returns the first write error
// since the last Flush, if any.
func (l *Writer) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.flushLocked()
}

func (l *Writer) flushLocked() error {
	if l.w != nil {
		if err := l.w.Flush(); err != nil && l.err == nil {
			l.err = err
		}
	}
	err := l.err
	l.err = nil
	if err != nil {
		return fmt.Errorf("flow log %s: %w", l.path, err)
	}
	return nil
}

// Reopen flushes, closes and reopens the file at the same path (after
// logrotate moved it). On failure the log stays closed and lines are
// counted as errors until a Reopen succeeds.
func (l *Writer) Reopen() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	ferr := l.flushLocked()
	if l.f != nil {
		l.f.Close()
		l.f, l.w = nil, nil
	}
	if err := l.open(); err != nil {
		return err
	}
	return ferr
}

// Stats returns the lines written and the lines lost to errors.
func (l *Writer) Stats() (lines, errors uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lines, l.errors
}

// Close flushes and closes the file. Safe to call twice.
func (l *Writer) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.flushLocked()
	if l.f != nil {
		if cerr := l.f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("flow log: %w", cerr)
		}
		l.f, l.w = nil, nil
	}
	return err
}
