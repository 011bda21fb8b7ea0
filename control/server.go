package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Handler serves one request, writing what it has to say to out. Returning
// an error ends the answer with it. Handlers run concurrently.
type Handler func(ctx context.Context, req *Request, out *Writer) error

// Writer streams an answer's data frames.
type Writer struct {
	bw      *bufio.Writer
	conn    net.Conn
	timeout time.Duration
	err     error
}

// Write sends p as a data frame. A client that reads nothing for the
// server's write timeout makes it fail (and the handler should return).
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), maxFrame)
		w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
		if w.err = writeFrame(w.bw, frameData, p[:n]); w.err != nil {
			return 0, w.err
		}
		p = p[n:]
	}
	return total, nil
}

// ServerOptions configure a Server.
type ServerOptions struct {
	Path string      // socket path
	Mode os.FileMode // socket file mode, e.g. 0600
	GID  int         // group of the socket file; -1 leaves it
	Log  *slog.Logger
	// WriteTimeout bounds each write to a client: one that reads nothing
	// for that long is dropped. Default DefaultWriteTimeout.
	WriteTimeout time.Duration
	// MaxConns bounds the connections served at once; more are answered
	// with an error and closed. Default DefaultMaxConns.
	MaxConns int
}

// Defaults of ServerOptions.
const (
	DefaultWriteTimeout = 10 * time.Second
	DefaultMaxConns     = 16
)

// Server listens on the control socket.
type Server struct {
	opts  ServerOptions
	ln    *net.UnixListener
	slots chan struct{} // one per connection served
}

// Listen creates the control socket. A stale socket file left by a dead
// daemon is replaced; a live one is an error (another ctsyncd runs).
func Listen(opts ServerOptions) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(opts.Path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if _, err := os.Lstat(opts.Path); err == nil {
		if c, err := net.DialTimeout("unix", opts.Path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another ctsyncd is listening on it", opts.Path)
		}
		if err := os.Remove(opts.Path); err != nil {
			return nil, fmt.Errorf("control socket %s: remove stale socket: %w", opts.Path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: opts.Path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	if err := setPerm(opts.Path, opts.Mode, opts.GID); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", opts.Path, err)
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{opts: opts, ln: ln, slots: make(chan struct{}, opts.MaxConns)}, nil
}

// setPerm sets the socket file's mode and group through a file descriptor
// opened without following a symbolic link (O_PATH|O_NOFOLLOW), after
// checking it is a socket of ours: a path swapped for a link between bind
// and here is not followed.
func setPerm(path string, mode os.FileMode, gid int) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("not the socket just created (mode %#o, uid %d)", st.Mode, st.Uid)
	}
	// fchmod does not work on an O_PATH descriptor; its /proc link does.
	if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), uint32(mode.Perm())); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if gid >= 0 {
		if err := unix.Fchownat(fd, "", -1, gid, unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	return nil
}

// Serve answers requests until ctx ends, then closes the socket (removing
// its file) and waits for running handlers to return.
func (s *Server) Serve(ctx context.Context, h Handler) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	defer s.ln.Close()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("control socket accept: %w", err)
		}
		select {
		case s.slots <- struct{}{}:
		default:
			// Full: say so without waiting for the client, and close.
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			writeFrame(c, frameError, []byte(fmt.Sprintf("busy: %d control connections already", s.opts.MaxConns)))
			c.Close()
			s.opts.Log.Warn("control connection refused: too many", "max", s.opts.MaxConns)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-s.slots }()
			s.serveConn(ctx, c, h)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn, h Handler) {
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(c, 4096)
	line, err := readLine(br)
	bw := bufio.NewWriterSize(c, 64<<10)
	defer func() {
		c.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
		bw.Flush()
	}()
	if err != nil {
		writeFrame(bw, frameError, []byte(err.Error()))
		return
	}
	c.SetReadDeadline(time.Time{})
	req, err := DecodeRequest(line)
	if err != nil {
		writeFrame(bw, frameError, []byte(err.Error()))
		return
	}
	w := &Writer{bw: bw, conn: c, timeout: s.opts.WriteTimeout}
	err = h(ctx, req, w)
	if w.err != nil {
		s.opts.Log.Debug("control client went away", "command", req.Command, "err", w.err)
		return
	}
	if err != nil {
		writeFrame(bw, frameError, []byte(err.Error()))
		return
	}
	writeFrame(bw, frameOK, nil)
}

func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		if err != nil {
			return nil, fmt.Errorf("%w: reading request: %v", ErrProtocol, err)
		}
		line = append(line, chunk...)
		if len(line) > MaxRequest {
			return nil, fmt.Errorf("%w: request longer than %d bytes", ErrProtocol, MaxRequest)
		}
		if !isPrefix {
			return line, nil
		}
	}
}

// Close closes the socket and removes its file, for a server that will not
// Serve. Safe to call more than once, and after Serve.
func (s *Server) Close() error {
	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
