//go:build cluster

package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/failover"
)

// TestClusterNotify checks what keepalived really passes to the sync
// group's notify command (the ctsyncctl keepalived integration): every call
// parses with failover.ParseNotify, fw-a reports MASTER and fw-b BACKUP at
// the election, and fw-b MASTER when fw-a dies.
func TestClusterNotify(t *testing.T) {
	script := func(fw *Firewall) string { return filepath.Join(fw.Dir, "notify.sh") }
	logOf := func(fw *Firewall) string { return filepath.Join(fw.Dir, "notify.log") }
	tp := New(t, Options{
		Notify:       script,
		NoKeepalived: true,
	})
	for _, fw := range tp.Firewalls() {
		body := "#!/bin/sh\necho \"$@\" >> " + logOf(fw) + "\n"
		if err := os.WriteFile(script(fw), []byte(body), 0o700); err != nil {
			t.Fatal(err)
		}
		fw.StartKeepalived(t)
	}
	tp.WaitMaster(t, tp.A)
	waitNotify(t, tp.A, logOf(tp.A), failover.Master)
	waitNotify(t, tp.B, logOf(tp.B), failover.Backup)
	tp.KillFirewall(t, tp.A)
	tp.WaitMaster(t, tp.B)
	waitNotify(t, tp.B, logOf(tp.B), failover.Master)
}

// waitNotify waits until fw's notify log has a group notify for state, and
// checks that every line parses.
func waitNotify(t *testing.T, fw *Firewall, path string, state failover.State) {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for {
		b, _ := os.ReadFile(path)
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if line == "" {
				continue
			}
			n, err := failover.ParseNotify(strings.Fields(line))
			if err != nil {
				t.Fatalf("%s: keepalived passed %q: %v", fw.Name, line, err)
			}
			if n.Kind == failover.Group && n.Name == "FW" && n.State == state {
				t.Logf("%s: notify %q", fw.Name, line)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no GROUP FW %s notify within %v; log:\n%s\nkeepalived:\n%s", fw.Name, state, WaitTimeout, b, fw.KeepalivedLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
