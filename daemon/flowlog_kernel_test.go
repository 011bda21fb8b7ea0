//go:build kernel

package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// TestKernelFlowLog: real traffic with accounting on; the flow's destroy is
// logged with its packet and byte counters, and SIGHUP's reopen after a
// rename (logrotate) starts a new file.
func TestKernelFlowLog(t *testing.T) {
	ns := netnstest.New(t)
	ns.Exec(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
	ns.Exec(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1")
	// A ruleset that uses conntrack makes the namespace track its traffic.
	ns.Nft(t, "table inet acct {\n\tchain out {\n\t\ttype filter hook output priority 0;\n\t\tct state new accept\n\t}\n}\n")
	dir := t.TempDir()
	logPath := filepath.Join(dir, "flows.log")
	cfgPath := filepath.Join(dir, "ctsyncd.toml")
	d := startDaemon(t, ns, func(c *config.Config) { c.Log.Flows = logPath })
	// The daemon reloads this file on SIGHUP; it must parse.
	if err := os.WriteFile(cfgPath, []byte("[node]\nname = \"test\"\n[sync]\ndisabled = true\n[control]\nsocket = \""+d.cfg.Control.Socket+"\"\n[log]\nflows = \""+logPath+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	ns.Exec(t, "ping", "-c", "3", "-i", "0.2", "-W", "1", "127.0.0.1")
	ns.Exec(t, "conntrack", "-D", "-p", "icmp")
	read := func(p string) string {
		b, _ := os.ReadFile(p)
		return string(b)
	}
	waitFor(t, "the ping's destroy in the flow log", func() (bool, string) {
		s := read(logPath)
		return strings.Contains(s, "[DESTROY] ipv4     2 icmp"), s
	})
	line := read(logPath)
	for _, want := range []string{"src=127.0.0.1 dst=127.0.0.1 type=8 code=0", "packets=3 bytes=252", "type=0 code=0", "delta-time="} {
		if !strings.Contains(line, want) {
			t.Errorf("flow log line lacks %q:\n%s", want, line)
		}
	}

	// logrotate: move the file away, SIGHUP (Reload), the next line goes to a new file.
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	d.Reload(cfgPath)
	ns.Exec(t, "ping", "-c", "1", "-W", "1", "127.0.0.2")
	ns.Exec(t, "conntrack", "-D", "-p", "icmp")
	waitFor(t, "the second destroy in the new file", func() (bool, string) {
		s := read(logPath)
		return strings.Contains(s, "dst=127.0.0.2"), s
	})
	if old := read(logPath + ".1"); strings.Contains(old, "127.0.0.2") {
		t.Errorf("the rotated file got the line written after the reopen:\n%s", old)
	}
}
