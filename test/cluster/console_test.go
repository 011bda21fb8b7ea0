//go:build cluster

package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

const consoleToken = "console-admin-0123456789abcdef"

// proxy forwards 127.0.0.1:port of the test's namespace to addr inside ns,
// so that a browser outside the firewall's namespace reaches its console.
func proxy(t *testing.T, ns *netnstest.NS, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var up net.Conn
			var derr error
			ns.Do(t, func() { up, derr = net.DialTimeout("tcp", addr, 5*time.Second) })
			if derr != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
			go func() { defer wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
	return "http://" + ln.Addr().String()
}

// conntrackHas reports whether fw's kernel table has a UDP flow to dport.
func conntrackCount(t *testing.T, fw *Firewall, args ...string) int {
	t.Helper()
	out, err := fw.NS.Cmd(append([]string{"conntrack", "-L"}, args...)...).Output()
	if err != nil {
		t.Fatalf("conntrack -L %v: %v", args, err)
	}
	return strings.Count(string(out), "\n")
}

// TestClusterConsole drives the web console of fw-a in headless Chromium:
// log in, see both nodes in the cluster view, filter the flow table, delete
// one flow and see it gone from fw-a's kernel. With CONSOLE_SCREENSHOT set
// to a path, it saves a screenshot of the console there (docs/console.png).
func TestClusterConsole(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		netnstest.Need(t, "chromium")
	}
	netnstest.Need(t, "conntrack")
	daemonBin, ctlBin := daemontest.Binaries(t)
	tp := New(t, Options{
		Notify:    func(fw *Firewall) string { return fmt.Sprintf("%s --socket %s keepalived", ctlBin, fw.Socket()) },
		TrackFile: func(fw *Firewall) string { return fw.ReadyFile() },
		Setup: func(t testing.TB, fw *Firewall) {
			tokens := filepath.Join(fw.Dir, "api.tokens")
			if err := os.WriteFile(tokens, []byte("ops admin "+consoleToken+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := fw.CtsyncdConfig(t, "udp", fmt.Sprintf("\n[api]\nlisten = \"127.0.0.1:9470\"\ntokens_file = %q\n", tokens))
			fw.Start(t, "ctsyncd", daemonBin, "--config", cfg)
			daemontest.WaitFor(t, WaitTimeout, fw.Name+"'s ctsyncd to answer", func() (bool, string) {
				out, err := fw.NS.Cmd(ctlBin, "--socket", fw.Socket(), "status").CombinedOutput()
				return err == nil, string(out)
			})
		},
	})
	tp.WaitMaster(t, tp.A)

	// Flows on fw-a: 40 UDP flows client → server, dports 6000..6039.
	insert := func(i int) {
		tp.A.NS.Exec(t, "conntrack", "-I", "-p", "udp", "-s", ClientV4, "-d", ServerV4,
			"--sport", fmt.Sprint(40000+i), "--dport", fmt.Sprint(6000+i%40), "-t", "600")
	}
	for i := range 40 {
		insert(i)
	}
	// More flows while the page is open, for the charts.
	ctxLoad, stopLoad := context.WithCancel(context.Background())
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for i := 40; ctxLoad.Err() == nil && i < 400; i++ {
			tp.A.NS.Cmd("conntrack", "-I", "-p", "udp", "-s", ClientV4, "-d", ServerV4,
				"--sport", fmt.Sprint(40000+i), "--dport", fmt.Sprint(7000+i), "-t", "600").Run()
			time.Sleep(150 * time.Millisecond)
		}
	}()
	defer func() { stopLoad(); <-loadDone }()

	base := proxy(t, tp.A.NS, "127.0.0.1:9470")
	actx, cancelA := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(browser),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1360, 1000))
	defer cancelA()
	ctx, cancelC := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelC()
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()
	run := func(what string, actions ...chromedp.Action) {
		t.Helper()
		if err := chromedp.Run(ctx, actions...); err != nil {
			var html string
			chromedp.Run(ctx, chromedp.OuterHTML("body", &html))
			t.Fatalf("%s: %v\npage: %.3000s", what, err, html)
		}
	}
	poll := func(what, js string) {
		t.Helper()
		run(what, chromedp.Poll(js, nil, chromedp.WithPollingTimeout(WaitTimeout)))
	}

	// Log in; the token does not end up in the URL.
	run("log in", chromedp.Navigate(base+"/"),
		chromedp.WaitVisible("#login-token", chromedp.ByID),
		chromedp.SendKeys("#login-token", consoleToken, chromedp.ByID),
		chromedp.Click("#login-submit", chromedp.ByID),
		chromedp.WaitVisible("#main-view", chromedp.ByID))
	var url string
	run("location", chromedp.Location(&url))
	if strings.Contains(url, consoleToken) {
		t.Fatalf("the token is in the URL %s", url)
	}

	// Both nodes in the cluster view: fw-a as MASTER, fw-b alive.
	poll("fw-a and fw-b in the cluster view", `(() => {
		const a = document.querySelector('#nodes [data-node="fw-a"]'), b = document.querySelector('#nodes [data-node="fw-b"]');
		return !!a && !!b && a.textContent.includes("MASTER") && b.textContent.includes("alive");
	})()`)
	poll("the flow table", `document.querySelectorAll("#flows tbody tr").length > 0`)

	if path := os.Getenv("CONSOLE_SCREENSHOT"); path != "" {
		// Let the charts gather half a minute of samples.
		run("wait for the charts", chromedp.Sleep(30*time.Second))
		var png []byte
		run("screenshot", chromedp.CaptureScreenshot(&png))
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", path, len(png))
	}
	stopLoad()
	<-loadDone

	// Filter the flow table down to one flow.
	const dport = "6017"
	victim := []string{"-p", "udp", "--dport", dport}
	if n := conntrackCount(t, tp.A, victim...); n != 1 {
		t.Fatalf("conntrack shows %d flows to port %s, want 1", n, dport)
	}
	total := conntrackCount(t, tp.A)
	run("filter", chromedp.SendKeys("#f-proto", "udp", chromedp.ByID),
		chromedp.SendKeys("#f-dport", dport, chromedp.ByID),
		chromedp.Click("#f-apply", chromedp.ByID))
	poll("the filtered table", `(() => {
		const rows = document.querySelectorAll("#flows tbody tr");
		return rows.length === 1 && rows[0].textContent.includes("`+dport+`");
	})()`)

	// Delete it, with the confirmation.
	run("delete", chromedp.Click("#flows tbody tr button.del", chromedp.ByQuery),
		chromedp.WaitVisible("#confirm-yes", chromedp.ByID),
		chromedp.Click("#confirm-yes", chromedp.ByID))
	poll("the table without the flow", `document.querySelectorAll("#flows tbody tr").length === 0 &&
		document.querySelector("#page-info").textContent === "no flows"`)
	var msg string
	run("error line", chromedp.Text("#flow-error", &msg, chromedp.ByID))
	if msg != "" {
		t.Errorf("console shows an error: %s", msg)
	}
	if n := conntrackCount(t, tp.A, victim...); n != 0 {
		t.Errorf("conntrack still shows %d flows to port %s after the console deleted it", n, dport)
	}
	if n := conntrackCount(t, tp.A); n != total-1 {
		t.Errorf("fw-a's table went from %d to %d flows: the console deleted more than the one", total, n)
	}
}
