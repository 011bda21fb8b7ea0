// Package ftptest is a tiny FTP server and client for ctsyncd's kernel and
// cluster tests: just enough of RFC 959 (USER, PASS, TYPE, PASV, PORT,
// RETR, QUIT) for the kernel's ftp conntrack helper to see a real control
// session and announce the data connection as an expectation. Sockets are
// opened through the Listen and Dial hooks, so that a test can open them
// inside a network namespace (see InNetns).
//
// The package also has a TFTP read (RRQ) server and client for the same
// purpose, in this file.
package ftptest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// InNetns runs fn on a thread switched into the network namespace fd: a
// socket opened by fn stays in that namespace.
func InNetns(fd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is left locked (and so discarded) if switching back
		// fails.
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Content returns n bytes of a pattern a transfer is checked against.
func Content(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// Server serves one file (any name) to any user.
type Server struct {
	// Data is what RETR sends.
	Data []byte
	// Listen opens the passive-mode data listener on the given address
	// (host:0); Dial opens an active-mode data connection.
	Listen func(addr string) (net.Listener, error)
	Dial   func(addr string) (net.Conn, error)
	// Timeout bounds each wait for a data connection. Default 30 s.
	Timeout time.Duration

	mu    sync.Mutex
	conns []io.Closer
	wg    sync.WaitGroup
	Log   func(format string, args ...any)
}

// Serve accepts control connections on ln until it is closed.
func (s *Server) Serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.track(c)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.session(c)
		}()
	}
}

// Close closes every connection and waits for the sessions to end.
func (s *Server) Close() {
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) track(c io.Closer) {
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) logf(format string, args ...any) {
	if s.Log != nil {
		s.Log(format, args...)
	}
}

func (s *Server) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return 30 * time.Second
}

func (s *Server) session(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	reply := func(format string, args ...any) {
		fmt.Fprintf(c, format+"\r\n", args...)
	}
	reply("220 ftptest ready")
	var (
		pasv   net.Listener
		active string
	)
	defer func() {
		if pasv != nil {
			pasv.Close()
		}
	}()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		cmd, arg, _ := strings.Cut(line, " ")
		s.logf("ftp server: %s", line)
		switch strings.ToUpper(cmd) {
		case "USER":
			reply("331 password please")
		case "PASS":
			reply("230 logged in")
		case "TYPE":
			reply("200 type set")
		case "NOOP":
			reply("200 ok")
		case "PASV":
			if pasv != nil {
				pasv.Close()
			}
			host, _, _ := net.SplitHostPort(c.LocalAddr().String())
			ln, err := s.Listen(net.JoinHostPort(host, "0"))
			if err != nil {
				reply("425 %v", err)
				continue
			}
			s.track(ln)
			pasv, active = ln, ""
			ap := ln.Addr().(*net.TCPAddr)
			ip := ap.IP.To4()
			if ip == nil {
				reply("425 PASV needs IPv4")
				continue
			}
			reply("227 Entering Passive Mode (%d,%d,%d,%d,%d,%d)", ip[0], ip[1], ip[2], ip[3], ap.Port>>8, ap.Port&0xff)
		case "PORT":
			addr, err := parseHostPort(arg)
			if err != nil {
				reply("501 %v", err)
				continue
			}
			active = addr
			if pasv != nil {
				pasv.Close()
				pasv = nil
			}
			reply("200 PORT command successful")
		case "RETR":
			var dc net.Conn
			switch {
			case pasv != nil:
				if tl, ok := pasv.(*net.TCPListener); ok {
					tl.SetDeadline(time.Now().Add(s.timeout()))
				}
				reply("150 opening data connection")
				dc, err = pasv.Accept()
				pasv.Close()
				pasv = nil
			case active != "":
				reply("150 opening data connection")
				dc, err = s.Dial(active)
				active = ""
			default:
				reply("425 use PASV or PORT first")
				continue
			}
			if err != nil {
				s.logf("ftp server: data connection: %v", err)
				reply("425 no data connection: %v", err)
				continue
			}
			s.track(dc)
			dc.SetDeadline(time.Now().Add(s.timeout()))
			_, err = dc.Write(s.Data)
			dc.Close()
			if err != nil {
				reply("426 transfer aborted: %v", err)
				continue
			}
			reply("226 transfer complete")
		case "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 not implemented")
		}
	}
}

// parseHostPort parses PORT's "h1,h2,h3,h4,p1,p2".
func parseHostPort(s string) (string, error) {
	if i := strings.IndexByte(s, '('); i >= 0 {
		s = s[i+1:]
		if j := strings.IndexByte(s, ')'); j >= 0 {
			s = s[:j]
		}
	}
	parts := strings.Split(strings.TrimSpace(s), ",")
	if len(parts) != 6 {
		return "", fmt.Errorf("host-port %q: want 6 numbers", s)
	}
	var v [6]int
	for i, p := range parts {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 0 || n > 255 {
			return "", fmt.Errorf("host-port %q: bad number %q", s, p)
		}
		v[i] = n
	}
	return net.JoinHostPort(fmt.Sprintf("%d.%d.%d.%d", v[0], v[1], v[2], v[3]), strconv.Itoa(v[4]<<8|v[5])), nil
}

// Client is one FTP control session.
type Client struct {
	c   net.Conn
	r   *bufio.Reader
	Log func(format string, args ...any)
}

// NewClient reads the greeting and logs in on an open control connection.
func NewClient(c net.Conn) (*Client, error) {
	cl := &Client{c: c, r: bufio.NewReader(c)}
	if _, err := cl.expect(220); err != nil {
		return nil, err
	}
	if _, err := cl.Cmd(331, "USER anonymous"); err != nil {
		return nil, err
	}
	if _, err := cl.Cmd(230, "PASS test@"); err != nil {
		return nil, err
	}
	if _, err := cl.Cmd(200, "TYPE I"); err != nil {
		return nil, err
	}
	return cl, nil
}

// LocalPort is the control connection's local port.
func (cl *Client) LocalPort() uint16 {
	if a, ok := cl.c.LocalAddr().(*net.TCPAddr); ok {
		return uint16(a.Port)
	}
	return 0
}

// SetDeadline bounds the control connection's reads and writes.
func (cl *Client) SetDeadline(t time.Time) error { return cl.c.SetDeadline(t) }

// Close sends QUIT and closes the control connection.
func (cl *Client) Close() error {
	cl.c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(cl.c, "QUIT\r\n")
	return cl.c.Close()
}

// Cmd sends a command and reads its reply, which must have code want.
func (cl *Client) Cmd(want int, line string) (string, error) {
	if cl.Log != nil {
		cl.Log("ftp client: %s", line)
	}
	if _, err := fmt.Fprintf(cl.c, "%s\r\n", line); err != nil {
		return "", fmt.Errorf("ftp %s: %w", line, err)
	}
	return cl.expect(want)
}

func (cl *Client) expect(want int) (string, error) {
	line, err := cl.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("ftp reply (want %d): %w", want, err)
	}
	line = strings.TrimRight(line, "\r\n")
	if cl.Log != nil {
		cl.Log("ftp client got: %s", line)
	}
	if !strings.HasPrefix(line, strconv.Itoa(want)+" ") {
		return line, fmt.Errorf("ftp reply %q, want %d", line, want)
	}
	return line, nil
}

// Noop sends NOOP and reads its reply: when it returns, everything sent on
// the control connection before it has been acknowledged both ways.
func (cl *Client) Noop() error {
	_, err := cl.Cmd(200, "NOOP")
	return err
}

// Pasv sends PASV and returns the data address the server announced.
func (cl *Client) Pasv() (string, error) {
	line, err := cl.Cmd(227, "PASV")
	if err != nil {
		return "", err
	}
	return parseHostPort(line)
}

// Port announces ln's address with PORT (IPv4 only).
func (cl *Client) Port(ln net.Listener) error {
	a := ln.Addr().(*net.TCPAddr)
	ip := a.IP.To4()
	if ip == nil {
		return errors.New("PORT needs IPv4")
	}
	_, err := cl.Cmd(200, fmt.Sprintf("PORT %d,%d,%d,%d,%d,%d", ip[0], ip[1], ip[2], ip[3], a.Port>>8, a.Port&0xff))
	return err
}

// RetrPassive fetches a file over an already opened passive data
// connection (dialed to the address Pasv returned).
func (cl *Client) RetrPassive(dc net.Conn) ([]byte, error) {
	defer dc.Close()
	if _, err := cl.Cmd(150, "RETR file"); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(dc)
	if err != nil {
		return data, fmt.Errorf("ftp data: %w", err)
	}
	if _, err := cl.expect(226); err != nil {
		return data, err
	}
	return data, nil
}

// RetrActive fetches a file over the data connection the server opens to
// ln (announced by Port).
func (cl *Client) RetrActive(ln net.Listener, timeout time.Duration) ([]byte, error) {
	if _, err := cl.Cmd(150, "RETR file"); err != nil {
		return nil, err
	}
	if tl, ok := ln.(*net.TCPListener); ok {
		tl.SetDeadline(time.Now().Add(timeout))
	}
	dc, err := ln.Accept()
	if err != nil {
		return nil, fmt.Errorf("ftp active data connection: %w", err)
	}
	defer dc.Close()
	dc.SetDeadline(time.Now().Add(timeout))
	data, err := io.ReadAll(dc)
	if err != nil {
		return data, fmt.Errorf("ftp data: %w", err)
	}
	if _, err := cl.expect(226); err != nil {
		return data, err
	}
	return data, nil
}

// Same reports whether got is want, for test messages.
func Same(got, want []byte) bool { return bytes.Equal(got, want) }
