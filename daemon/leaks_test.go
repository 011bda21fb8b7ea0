package daemon

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// checkNoLeaks fails t if, shortly after the daemon stopped, a goroutine
// still runs code of ctsyncd's packages (other than this test's own).
func checkNoLeaks(t *testing.T) {
	t.Helper()
	var leaked []string
	for range 50 {
		leaked = leaked[:0]
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "ctsyncd/ctsyncd/") && !strings.Contains(g, "_test.go") &&
				!strings.Contains(g, "checkNoLeaks") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("%d goroutines of ctsyncd still running after Run returned:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
}
