//go:build cluster

package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/internal/ftptest"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// Expectations across a failover: FTP (passive, passive through SNAT,
// active) and TFTP sessions announced through fw-a, whose data connection
// opens through fw-b after fw-a died. fw-b's forward chain accepts new
// connections only to ports 21 and 69 (HelperRuleset): the data connection
// passes only as RELATED, through an expectation. Each has control runs
// that must break: no ctsyncd on fw-b, and (passive FTP) ctsyncd with
// sync.expectations = false, which replicates the control connection but
// not its expectation.

// syncMode is what runs on fw-b.
type syncMode int

const (
	withSync       syncMode = iota // ctsyncd on both, expectations on
	noStandbySync                  // control: no ctsyncd on fw-b
	noExpectations                 // control: ctsyncd on both, sync.expectations = false
)

func (m syncMode) String() string {
	return [...]string{"sync", "control-no-ctsyncd", "control-no-expectations"}[m]
}

// newHelperPair is an HA pair with HelperRuleset and ctsyncd as mode says.
func newHelperPair(t *testing.T, mode syncMode, snat bool) *pair {
	t.Helper()
	daemonBin, ctlBin := daemontest.Binaries(t)
	p := &pair{ctlBin: ctlBin, procs: map[string]*Process{}}
	p.Topology = New(t, Options{
		SNAT:    snat,
		Ruleset: HelperRuleset(snat),
		Notify: func(fw *Firewall) string {
			return fmt.Sprintf("%s --socket %s keepalived", ctlBin, fw.Socket())
		},
		TrackFile: func(fw *Firewall) string { return fw.ReadyFile() },
		Setup: func(t testing.TB, fw *Firewall) {
			if mode == noStandbySync && fw.Name == "fw-b" {
				return
			}
			// CtsyncdConfig lets peers' flows carry the ftp and tftp
			// helpers ([peer_policy] helpers), so without expectation
			// sync the control connection is still replicated with its
			// helper and only the expectation is missing. With it,
			// sync.expectation_helpers names the helpers whose
			// expectations are sent and accepted.
			extra, syncKeys := "[kernel]\nresync_interval = \"2s\"\n", "expectation_helpers = [\"ftp\", \"tftp\"]\n"
			if mode == noExpectations {
				syncKeys = "expectations = false\n"
			}
			cfg := fw.CtsyncdConfig(t, "udp", extra)
			b, err := os.ReadFile(cfg)
			if err != nil {
				t.Fatal(err)
			}
			b = []byte(strings.Replace(string(b), "[sync]\n", "[sync]\n"+syncKeys, 1))
			if err := os.WriteFile(cfg, b, 0o600); err != nil {
				t.Fatal(err)
			}
			p.procs[fw.Name] = fw.Start(t, "ctsyncd", daemonBin, "--config", cfg)
			daemontest.WaitFor(t, WaitTimeout, fw.Name+"'s ctsyncd to answer", func() (bool, string) {
				_, err := p.run(fw, "status")
				return err == nil, fmt.Sprint(err)
			})
		},
	})
	return p
}

// kernelExpects returns fw's kernel expectations.
func kernelExpects(t testing.TB, fw *Firewall) []flow.Expect {
	t.Helper()
	var out []flow.Expect
	if err := kernel.DumpExpect(context.Background(), kernel.DumpOptions{NetNS: fw.NS.FD(t)}, func(e *flow.Expect) {
		out = append(out, *e)
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// hasExpect reports whether an expectation is for dport, or translates to
// it (active FTP through SNAT: the helper announced the VIP and a port of
// its choice, and keeps the client's port as its NAT).
func hasExpect(exps []flow.Expect, dport uint16) bool {
	for _, e := range exps {
		if e.Tuple.DstPort == dport || (e.HasNAT && e.NAT.Tuple.SrcPort == dport) {
			return true
		}
	}
	return false
}

// counter reads the packets of fw's forward rule with the given comment.
func counter(t testing.TB, fw *Firewall, comment string) int {
	t.Helper()
	out := fw.NS.Exec(t, "nft", "list", "chain", "inet", "fw", "forward")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `comment "`+comment+`"`) {
			var n int
			if i := strings.Index(line, "packets "); i >= 0 {
				fmt.Sscanf(line[i+len("packets "):], "%d", &n)
			}
			return n
		}
	}
	t.Fatalf("%s: no counter %q in\n%s", fw.Name, comment, out)
	return 0
}

// failOver waits until fw-a's helper made the expectation for dport and
// the master flow (the control connection, original source port
// masterSport) reached fw-b (or, without ctsyncd there, fw-a's internal
// cache), and with sync until fw-b holds the expectation too; then it kills
// fw-a and waits for fw-b to be master. With sync it then waits for the
// commit to have put the expectation into fw-b's kernel.
//
// The caller settles the control connection first (a NOOP after PASV or
// PORT): a 227 reply (or PORT command) not yet acknowledged when fw-a dies
// is retransmitted through fw-b, whose ftp helper, on the committed
// master, then announces the data connection itself, and a control run
// with the master replicated would not break.
func (p *pair) failOver(t *testing.T, mode syncMode, dport, masterSport uint16) {
	t.Helper()
	daemontest.WaitFor(t, WaitTimeout, "fw-a's helper to make the expectation", func() (bool, string) {
		return hasExpect(kernelExpects(t, p.A), dport), fmt.Sprint(kernelExpects(t, p.A))
	})
	master := fmt.Sprintf("src=%s dst=%s sport=%d ", ClientV4, ServerV4, masterSport)
	fw, cache := p.B, "external"
	if mode == noStandbySync {
		fw, cache = p.A, "internal"
	}
	daemontest.WaitFor(t, WaitTimeout, "the master flow in "+fw.Name+"'s "+cache+" cache", func() (bool, string) {
		out := p.ctl(t, fw, "dump", cache)
		return strings.Contains(out, master), out
	})
	if mode == withSync {
		daemontest.WaitFor(t, WaitTimeout, "fw-b to receive the expectation", func() (bool, string) {
			out := p.ctl(t, p.B, "dump", "external", "--expect")
			return strings.Contains(out, fmt.Sprintf(" dport=%d ", dport)) || strings.Contains(out, fmt.Sprintf(" nat-sport=%d ", dport)), out
		})
	}
	p.KillFirewall(t, p.A)
	p.WaitMaster(t, p.B)
	if mode == withSync {
		daemontest.WaitFor(t, WaitTimeout, "fw-b's commit of the expectation", func() (bool, string) {
			return hasExpect(kernelExpects(t, p.B), dport), p.ctl(t, p.B, "status")
		})
		t.Logf("fw-b after the takeover: %s", strings.TrimSpace(p.ctl(t, p.B, "dump", "internal", "--expect")))
	}
}

// ftpServer serves content on ServerV4:21 in the server namespace.
func ftpServer(t *testing.T, tp *Topology, content []byte) {
	t.Helper()
	fd := tp.Server.FD(t)
	srv := &ftptest.Server{
		Data: content,
		Listen: func(addr string) (l net.Listener, err error) {
			err = ftptest.InNetns(fd, func() error { l, err = net.Listen("tcp4", addr); return err })
			return l, err
		},
		Dial: func(addr string) (c net.Conn, err error) {
			err = ftptest.InNetns(fd, func() error { c, err = net.DialTimeout("tcp4", addr, 20*time.Second); return err })
			return c, err
		},
	}
	var ln net.Listener
	tp.Server.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", net.JoinHostPort(ServerV4, "21")); err != nil {
			t.Fatal(err)
		}
	})
	go srv.Serve(ln)
	t.Cleanup(func() {
		ln.Close()
		srv.Close()
	})
}

// dialClient dials from the client namespace.
func dialClient(t testing.TB, tp *Topology, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ftptest.InNetns(tp.Client.FD(t), func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	return c, err
}

func ftpLogin(t *testing.T, tp *Topology) *ftptest.Client {
	t.Helper()
	c, err := dialClient(t, tp, net.JoinHostPort(ServerV4, "21"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	cl, err := ftptest.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func portOf(t *testing.T, addr string) uint16 {
	t.Helper()
	_, ps, err := net.SplitHostPort(addr)
	n, err2 := strconv.Atoi(ps)
	if err != nil || err2 != nil {
		t.Fatalf("address %q", addr)
	}
	return uint16(n)
}

// passiveTransfer opens the data connection to addr and fetches the file.
// timeout bounds the connect.
func passiveTransfer(t testing.TB, tp *Topology, cl *ftptest.Client, addr string, timeout time.Duration) ([]byte, error) {
	dc, err := dialClient(t, tp, addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("data connection: %w", err)
	}
	dc.SetDeadline(time.Now().Add(time.Minute))
	return cl.RetrPassive(dc)
}

// controlTimeout bounds a control run's data connection attempt: SYNs at
// 0, 1, 3 and 7 s, long after fw-b took over.
const controlTimeout = 10 * time.Second

func testPassiveFTP(t *testing.T, mode syncMode, snat bool) {
	p := newHelperPair(t, mode, snat)
	p.WaitMaster(t, p.A)
	content := ftptest.Content(256 << 10)
	ftpServer(t, p.Topology, content)
	cl := ftpLogin(t, p.Topology)
	addr, err := cl.Pasv()
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Noop(); err != nil {
		t.Fatal(err)
	}
	p.failOver(t, mode, portOf(t, addr), cl.LocalPort())

	if mode != withSync {
		if hasExpect(kernelExpects(t, p.B), portOf(t, addr)) {
			t.Errorf("fw-b holds the expectation in a control run")
		}
		got, err := passiveTransfer(t, p.Topology, cl, addr, controlTimeout)
		if err == nil && ftptest.Same(got, content) {
			t.Logf("fw-b: related %d, dropped %d", counter(t, p.B, "related"), counter(t, p.B, "dropped"))
			t.Fatalf("the transfer survived the failover without the expectation on fw-b: the test cannot fail")
		}
		t.Logf("control run broke as it must: %v (fw-b dropped %d packets)", err, counter(t, p.B, "dropped"))
		return
	}
	related := counter(t, p.B, "related")
	got, err := passiveTransfer(t, p.Topology, cl, addr, 30*time.Second)
	if err != nil {
		t.Fatalf("transfer after the failover: %v", err)
	}
	if !ftptest.Same(got, content) {
		t.Fatalf("transfer after the failover: %d bytes, want %d", len(got), len(content))
	}
	if n := counter(t, p.B, "related"); n <= related {
		t.Errorf("fw-b's related counter %d → %d: the data connection did not pass as RELATED", related, n)
	}
	// The committed control connection carries the ftp helper: a second
	// PASV through fw-b makes a new expectation there.
	addr2, err := cl.Pasv()
	if err != nil {
		t.Fatalf("second PASV through fw-b: %v", err)
	}
	if got, err := passiveTransfer(t, p.Topology, cl, addr2, 30*time.Second); err != nil || !ftptest.Same(got, content) {
		t.Fatalf("second transfer through fw-b: %d bytes, %v", len(got), err)
	}
	t.Logf("fw-b after the second transfer:\n%s", p.ctl(t, p.B, "status"))
}

// TestClusterExpectPassiveFTP: PASV through fw-a, fw-a dies, the data
// connection through fw-b is accepted as RELATED and the transfer
// completes; then a second PASV and transfer through fw-b work.
func TestClusterExpectPassiveFTP(t *testing.T) {
	for _, mode := range []syncMode{withSync, noStandbySync, noExpectations} {
		t.Run(mode.String(), func(t *testing.T) { testPassiveFTP(t, mode, false) })
	}
}

// TestClusterExpectPassiveFTPSNAT: the same with the client translated to
// the server-side VIP: the expectation carries its NAT (nat-follow-master).
func TestClusterExpectPassiveFTPSNAT(t *testing.T) {
	for _, mode := range []syncMode{withSync, noStandbySync} {
		t.Run(mode.String(), func(t *testing.T) { testPassiveFTP(t, mode, true) })
	}
}

// TestClusterExpectActiveFTP: PORT through fw-a, fw-a dies, the server
// opens the data connection through fw-b (from the server side, where
// forward accepts nothing new) after the takeover. Through SNAT too: fw-a's
// helper rewrote the PORT command to the VIP, and the expectation's NAT
// sends the server's connection on to the client.
func TestClusterExpectActiveFTP(t *testing.T) {
	for _, c := range []struct {
		mode syncMode
		snat bool
	}{{withSync, false}, {noStandbySync, false}, {withSync, true}} {
		mode := c.mode
		name := mode.String()
		if c.snat {
			name += "-snat"
		}
		t.Run(name, func(t *testing.T) {
			p := newHelperPair(t, mode, c.snat)
			p.WaitMaster(t, p.A)
			content := ftptest.Content(128 << 10)
			ftpServer(t, p.Topology, content)
			cl := ftpLogin(t, p.Topology)
			var ln net.Listener
			p.Client.Do(t, func() {
				var err error
				if ln, err = net.Listen("tcp4", net.JoinHostPort(ClientV4, "0")); err != nil {
					t.Fatal(err)
				}
			})
			defer ln.Close()
			if err := cl.Port(ln); err != nil {
				t.Fatal(err)
			}
			if err := cl.Noop(); err != nil {
				t.Fatal(err)
			}
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			p.failOver(t, mode, port, cl.LocalPort())
			timeout := 30 * time.Second
			if mode != withSync {
				timeout = controlTimeout
			}
			cl.SetDeadline(time.Now().Add(timeout + 5*time.Second))
			got, err := cl.RetrActive(ln, timeout)
			if mode != withSync {
				if err == nil && ftptest.Same(got, content) {
					t.Fatalf("the active transfer survived without ctsyncd on fw-b: the test cannot fail")
				}
				t.Logf("control run broke as it must: %v", err)
				return
			}
			if err != nil || !ftptest.Same(got, content) {
				t.Fatalf("active transfer after the failover: %d bytes, %v", len(got), err)
			}
			if n := counter(t, p.B, "related"); n == 0 {
				t.Errorf("fw-b's related counter is 0")
			}
		})
	}
}

// tftpServer answers one read request on ServerV4:69: it reports the
// request on req, waits for go, then sends the file (one block of less
// than 512 bytes) from a new port, as TFTP does, and waits for the ACK.
type tftpServer struct {
	req  chan *net.UDPAddr
	goOn chan struct{}
	done chan error
}

func startTFTP(t *testing.T, tp *Topology, content []byte) *tftpServer {
	t.Helper()
	s := &tftpServer{req: make(chan *net.UDPAddr, 1), goOn: make(chan struct{}), done: make(chan error, 1)}
	var ctl, data *net.UDPConn
	tp.Server.Do(t, func() {
		c, err := net.ListenPacket("udp4", net.JoinHostPort(ServerV4, "69"))
		if err != nil {
			t.Fatal(err)
		}
		ctl = c.(*net.UDPConn)
		d, err := net.ListenPacket("udp4", net.JoinHostPort(ServerV4, "0"))
		if err != nil {
			t.Fatal(err)
		}
		data = d.(*net.UDPConn)
	})
	t.Cleanup(func() {
		ctl.Close()
		data.Close()
	})
	go func() {
		buf := make([]byte, 1500)
		n, from, err := ctl.ReadFromUDP(buf)
		if err != nil || n < 4 || buf[1] != 1 { // opcode 1: RRQ
			s.done <- fmt.Errorf("no read request: %v", err)
			return
		}
		s.req <- from
		<-s.goOn
		pkt := append([]byte{0, 3, 0, 1}, content...) // DATA block 1
		for range 10 {
			if _, err := data.WriteToUDP(pkt, from); err != nil {
				s.done <- err
				return
			}
			data.SetReadDeadline(time.Now().Add(time.Second))
			n, _, err := data.ReadFromUDP(buf)
			if err == nil && n >= 4 && buf[1] == 4 { // ACK
				s.done <- nil
				return
			}
		}
		s.done <- errors.New("no ACK")
	}()
	return s
}

// TestClusterExpectTFTP: a TFTP read request through fw-a; fw-a dies
// before the server answers; the answer comes from a new server port
// through fw-b, where it passes only as RELATED.
func TestClusterExpectTFTP(t *testing.T) {
	for _, mode := range []syncMode{withSync, noStandbySync} {
		t.Run(mode.String(), func(t *testing.T) {
			p := newHelperPair(t, mode, false)
			p.WaitMaster(t, p.A)
			content := ftptest.Content(400)
			srv := startTFTP(t, p.Topology, content)
			var c *net.UDPConn
			p.Client.Do(t, func() {
				pc, err := net.ListenPacket("udp4", net.JoinHostPort(ClientV4, "0"))
				if err != nil {
					t.Fatal(err)
				}
				c = pc.(*net.UDPConn)
			})
			defer c.Close()
			rrq := append([]byte{0, 1}, "file\x00octet\x00"...)
			srvAddr := &net.UDPAddr{IP: net.ParseIP(ServerV4), Port: 69}
			if _, err := c.WriteToUDP(rrq, srvAddr); err != nil {
				t.Fatal(err)
			}
			select {
			case <-srv.req:
			case err := <-srv.done:
				t.Fatal(err)
			case <-time.After(WaitTimeout):
				t.Fatal("the server got no read request")
			}
			cport := uint16(c.LocalAddr().(*net.UDPAddr).Port)
			p.failOver(t, mode, cport, cport)
			close(srv.goOn)
			timeout := 30 * time.Second
			if mode != withSync {
				timeout = controlTimeout
			}
			c.SetReadDeadline(time.Now().Add(timeout))
			buf := make([]byte, 1500)
			n, from, err := c.ReadFromUDP(buf)
			ok := err == nil && n == 4+len(content) && buf[1] == 3 && ftptest.Same(buf[4:n], content)
			if mode != withSync {
				if ok {
					t.Fatalf("the TFTP answer passed fw-b without ctsyncd: the test cannot fail")
				}
				t.Logf("control run broke as it must: %v", err)
				return
			}
			if !ok {
				t.Fatalf("TFTP data after the failover: %d bytes, %v", n, err)
			}
			if _, err := c.WriteToUDP([]byte{0, 4, 0, 1}, from); err != nil {
				t.Fatal(err)
			}
			if err := <-srv.done; err != nil {
				t.Errorf("server: %v", err)
			}
			if n := counter(t, p.B, "related"); n == 0 {
				t.Errorf("fw-b's related counter is 0")
			}
		})
	}
}
