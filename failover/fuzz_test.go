package failover

import (
	"strings"
	"testing"
	"unicode"
)

// FuzzParseNotify: keepalived's notify arguments come from outside (the
// control socket). Parsing never panics, and what parses prints back to
// arguments that parse to the same notify.
func FuzzParseNotify(f *testing.F) {
	f.Add("GROUP", "FW", "MASTER", "150", true)
	f.Add("INSTANCE", "VI_LAN0", "BACKUP", "", false)
	f.Add("INSTANCE", "x y", "FAULT", "-1", true)
	f.Fuzz(func(t *testing.T, kind, name, state, prio string, withPrio bool) {
		args := []string{kind, name, state}
		if withPrio {
			args = append(args, prio)
		}
		n, err := ParseNotify(args)
		if err != nil {
			return
		}
		if strings.IndexFunc(name, unicode.IsSpace) >= 0 {
			return
		}
		m, err := ParseNotify(strings.Fields(n.String()))
		if err != nil || m != n {
			t.Fatalf("%q: %+v; printed %q parses to %+v, %v", args, n, n.String(), m, err)
		}
	})
}
