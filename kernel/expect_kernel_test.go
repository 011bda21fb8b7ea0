//go:build kernel

package kernel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/ftptest"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// expRecorder is a Handler that passes expectation events on.
type expRecorder struct{ ch chan ExpectEvent }

func (r *expRecorder) Event(*Event) {}
func (r *expRecorder) Overrun()     {}
func (r *expRecorder) ExpectEvent(ev *ExpectEvent) {
	select {
	case r.ch <- *ev:
	default:
	}
}

func listenExpect(t *testing.T, ns *netnstest.NS) *expRecorder {
	t.Helper()
	l, err := Listen(ListenOptions{NetNS: ns.FD(t), Expectations: true, ReadBuffer: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &expRecorder{ch: make(chan ExpectEvent, 64)}
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("listener: %v", err)
		}
	})
	return h
}

// waitExpectEvent returns the next expectation event of type typ for the
// expected tuple tu, failing t after 10 s.
func waitExpectEvent(t *testing.T, h *expRecorder, typ EventType, tu flow.Tuple) ExpectEvent {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-h.ch:
			if ev.Type == typ && ev.Expect.Tuple == tu {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %v expectation event for %+v", typ, tu)
		}
	}
}

func dumpExpects(t *testing.T, ns *netnstest.NS) []flow.Expect {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []flow.Expect
	if err := DumpExpect(ctx, DumpOptions{NetNS: ns.FD(t)}, func(e *flow.Expect) { out = append(out, *e) }); err != nil {
		t.Fatalf("DumpExpect: %v", err)
	}
	return out
}

// ftpHelperRules assigns the ftp helper to connections to port 21 on fw,
// and with snat translates the client to fw's server-side address.
func ftpHelperRules(snat bool) string {
	r := `table inet helpers {
	ct helper ftp-standard {
		type "ftp" protocol tcp;
	}
	chain prerouting {
		type filter hook prerouting priority filter;
		tcp dport 21 ct helper set "ftp-standard"
	}
`
	if snat {
		r += `	chain postrouting {
		type nat hook postrouting priority srcnat;
		oifname "lan1" meta nfproto ipv4 snat ip to 10.0.2.1
	}
`
	}
	return r + "}\n"
}

// startFTPServer serves content on 10.0.2.2:21 in ns.
func startFTPServer(t *testing.T, ns *netnstest.NS, content []byte) {
	t.Helper()
	fd := ns.FD(t)
	srv := &ftptest.Server{
		Data: content,
		Listen: func(addr string) (l net.Listener, err error) {
			err = ftptest.InNetns(fd, func() error {
				l, err = net.Listen("tcp4", addr)
				return err
			})
			return l, err
		},
		Dial: func(addr string) (c net.Conn, err error) {
			err = ftptest.InNetns(fd, func() error {
				c, err = net.DialTimeout("tcp4", addr, 10*time.Second)
				return err
			})
			return c, err
		},
		Log: t.Logf,
	}
	var ln net.Listener
	ns.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", "10.0.2.2:21"); err != nil {
			t.Fatal(err)
		}
	})
	go srv.Serve(ln)
	t.Cleanup(func() {
		ln.Close()
		srv.Close()
	})
}

func dialIn(t *testing.T, ns *netnstest.NS, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	ns.Do(t, func() {
		var err error
		if c, err = net.DialTimeout("tcp4", addr, 10*time.Second); err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
	})
	return c
}

// An expectation the kernel's ftp helper makes from a real passive FTP
// session through a router is read, from its NEW event and from a dump,
// with every attribute; the data connection uses it up (DESTROY event) and
// the transfer completes. With SNAT the expectation carries the NAT
// (direction, port) and the nat-follow-master expectfn.
func TestKernelExpectFTP(t *testing.T) {
	for _, snat := range []bool{false, true} {
		t.Run(fmt.Sprintf("snat=%v", snat), func(t *testing.T) {
			client, fw, server := netnstest.Router(t)
			fw.Nft(t, ftpHelperRules(snat))
			h := listenExpect(t, fw)
			content := ftptest.Content(100 << 10)
			startFTPServer(t, server, content)

			cc := dialIn(t, client, "10.0.2.2:21")
			cc.SetDeadline(time.Now().Add(30 * time.Second))
			cl, err := ftptest.NewClient(cc)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			data, err := cl.Pasv()
			if err != nil {
				t.Fatal(err)
			}
			_, portStr, _ := net.SplitHostPort(data)
			var port uint16
			fmt.Sscan(portStr, &port)
			ctl := cc.LocalAddr().(*net.TCPAddr)

			want := flow.Expect{
				ExpectKey: flow.ExpectKey{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP,
					Tuple: flow.Tuple{Src: expAddr("10.0.1.2"), Dst: expAddr("10.0.2.2"), DstPort: port}},
				Mask:        flow.Tuple{Src: expAddr("255.255.255.255"), Dst: expAddr("255.255.255.255"), DstPort: 0xffff},
				Master:      flow.Tuple{Src: expAddr("10.0.1.2"), Dst: expAddr("10.0.2.2"), SrcPort: uint16(ctl.Port), DstPort: 21},
				MasterProto: flow.ProtoTCP,
				Helper:      "ftp",
			}
			if snat {
				// The data connection comes in the master's original
				// direction and is translated as the master is.
				want.HasNAT = true
				want.NAT = flow.ExpectNAT{Dir: 0, Tuple: flow.Tuple{SrcPort: port}}
				want.Fn = "nat-follow-master"
			}
			ev := waitExpectEvent(t, h, EventNew, want.Tuple)
			check := func(what string, got flow.Expect) {
				t.Helper()
				if got.Timeout == 0 || got.Timeout > 300 {
					t.Errorf("%s: timeout %d, want (0, 300]", what, got.Timeout)
				}
				if !got.SameState(&want) {
					t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
				}
				t.Logf("%s: %s", what, got.String())
			}
			check("NEW event", ev.Expect)
			if ev.PortID != 0 {
				t.Errorf("NEW event port id %d, want 0 (the kernel's helper)", ev.PortID)
			}
			exps := dumpExpects(t, fw)
			if len(exps) != 1 {
				t.Fatalf("dump: %d expectations, want 1: %+v", len(exps), exps)
			}
			check("dump", exps[0])
			// The master carries its helper.
			master := dumpTable(t, fw)[want.MasterKey()]
			if master.Extra == nil || master.Extra.Helper != "ftp" {
				t.Errorf("master %s: helper %+v, want ftp", master.String(), master.Extra)
			}

			dc := dialIn(t, client, data)
			got, err := cl.RetrPassive(dc)
			if err != nil {
				t.Fatal(err)
			}
			if !ftptest.Same(got, content) {
				t.Errorf("transfer: %d bytes, want %d", len(got), len(content))
			}
			waitExpectEvent(t, h, EventDestroy, want.Tuple)
			if exps := dumpExpects(t, fw); len(exps) != 0 {
				t.Errorf("after the data connection: %d expectations left", len(exps))
			}
		})
	}
}

// ftpMaster is an established FTP control flow with the ftp helper; with
// snat its reply goes to 10.0.2.1.
func ftpMaster(sport uint16, snat bool) flow.Flow {
	f := flow.Flow{
		Key: flow.Key{Family: flow.FamilyIPv4, Proto: flow.ProtoTCP,
			Orig: flow.Tuple{Src: expAddr("10.0.1.2"), Dst: expAddr("10.0.2.2"), SrcPort: sport, DstPort: 21}},
		Status:  flow.StatusConfirmed | flow.StatusSeenReply | flow.StatusAssured,
		Timeout: 3600,
		TCP:     flow.TCPInfo{State: flow.TCPEstablished},
		Extra:   &flow.Extra{Helper: "ftp"},
	}
	f.Reply = f.Orig.Invert(f.Proto)
	if snat {
		f.Reply.Dst = expAddr("10.0.2.1")
	}
	return f
}

// Expectations created over netlink, with and without NAT, dump back with
// the attributes they were created with; events report NEW and DESTROY
// with the writer's port id; a second create updates; delete and flush
// remove them; an expectation whose master is missing, or has no helper,
// fails with ENOENT or EOPNOTSUPP.
func TestKernelExpectCreate(t *testing.T) {
	ns := netnstest.New(t)
	loadNAT(t, ns)
	w := newTestWriter(t, ns, WriterOptions{})
	h := listenExpect(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	noHelper := ftpMaster(50002, false)
	noHelper.Extra = nil
	masters := []flow.Flow{ftpMaster(50000, false), ftpMaster(50001, true), noHelper}
	res, err := w.Commit(ctx, masters, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Op != Created {
			t.Fatalf("master %d: %v %v", i, r.Op, r.Err)
		}
	}

	exps := testExpects()[:2] // plain FTP on master 0; FTP through SNAT on master 1
	exps[1].Timeout = 200
	res2, err := w.CreateExpect(ctx, exps, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res2 {
		if r.Op != Created || r.Key != exps[i].ExpectKey {
			t.Fatalf("expectation %d: %v %v (key %+v)", i, r.Op, r.Err, r.Key)
		}
	}
	ports := w.PortIDs()
	for _, e := range exps {
		ev := waitExpectEvent(t, h, EventNew, e.Tuple)
		if !slices.Contains(ports, ev.PortID) {
			t.Errorf("NEW event port id %d, want one of the writer's %v", ev.PortID, ports)
		}
	}
	checkDump := func(what string, want []flow.Expect) {
		t.Helper()
		got := dumpExpects(t, ns)
		if len(got) != len(want) {
			t.Fatalf("%s: %d expectations, want %d", what, len(got), len(want))
		}
		for _, w := range want {
			i := slices.IndexFunc(got, func(g flow.Expect) bool { return g.ExpectKey == w.ExpectKey })
			if i < 0 {
				t.Errorf("%s: %s missing", what, w.String())
				continue
			}
			g := got[i]
			// The timeout is what was asked, less the seconds since.
			if g.Timeout > w.Timeout || g.Timeout+10 < w.Timeout {
				t.Errorf("%s: timeout %d, want about %d", what, g.Timeout, w.Timeout)
			}
			if !g.SameState(&w) {
				t.Errorf("%s:\n got %+v\nwant %+v", what, g, w)
			}
		}
	}
	checkDump("after create", exps)

	// Again: they exist, only the timeout changes.
	exps[0].Timeout = 100
	res2, err = w.CreateExpect(ctx, exps, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res2 {
		if r.Op != Updated {
			t.Errorf("second create %d: %v %v, want updated", i, r.Op, r.Err)
		}
	}
	checkDump("after the second create", exps)

	// Update caps a timeout; a missing expectation fails with ENOENT.
	capped := []flow.Expect{exps[1], testExpects()[2]}
	capped[0].Timeout = 40
	res2, err = w.UpdateExpect(ctx, capped)
	if err != nil {
		t.Fatal(err)
	}
	if res2[0].Op != Updated || res2[1].Op != Failed || !errors.Is(res2[1].Err, unix.ENOENT) {
		t.Errorf("update: %+v", res2)
	}
	exps[1].Timeout = 40
	checkDump("after the update", exps)

	// A missing master, a master without a helper.
	bad := testExpects()[:1]
	bad = append(bad, bad[0])
	bad[0].Master.SrcPort, bad[0].Tuple.DstPort = 60000, 41000
	bad[1].Master.SrcPort, bad[1].Tuple.DstPort = 50002, 41001
	res2, err = w.CreateExpect(ctx, bad, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := res2[0]; r.Op != Failed || !errors.Is(r.Err, unix.ENOENT) {
		t.Errorf("missing master: %v %v, want ENOENT", r.Op, r.Err)
	}
	if r := res2[1]; r.Op != Failed || !errors.Is(r.Err, unix.EOPNOTSUPP) {
		t.Errorf("master without helper: %v %v, want EOPNOTSUPP", r.Op, r.Err)
	}

	res2, err = w.DeleteExpect(ctx, []flow.ExpectKey{exps[0].ExpectKey, bad[0].ExpectKey})
	if err != nil {
		t.Fatal(err)
	}
	if res2[0].Op != Deleted || res2[1].Op != Failed || !errors.Is(res2[1].Err, unix.ENOENT) {
		t.Errorf("delete: %+v", res2)
	}
	ev := waitExpectEvent(t, h, EventDestroy, exps[0].Tuple)
	if !slices.Contains(ports, ev.PortID) {
		t.Errorf("DESTROY event port id %d, want one of the writer's %v", ev.PortID, ports)
	}
	checkDump("after delete", exps[1:])

	if err := w.FlushExpect(ctx); err != nil {
		t.Fatal(err)
	}
	waitExpectEvent(t, h, EventDestroy, exps[1].Tuple)
	checkDump("after flush", nil)
}
