package config

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error it returns is
// a configuration error naming the file, and that what it accepts also
// passes Validate and the parsed helpers.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("../configs/ctsyncd.toml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	for _, s := range []string{
		base,
		"[sync]\ndisabled = true\n",
		"[sync]\ntransport = \"multicast\"\ninterface = \"sync0\"\nlisten = \"10.200.0.1:3780\"\ngroup = \"225.0.0.50:3780\"\ninsecure = true\n",
		"[sync]\ntransport = \"gossip\"\nlisten = \"[fd00::1]:3780\"\ninsecure = true\n",
		"",
		"[sync\n",
		"[sync]\nlisten = \"10.200.0.1:3780\ndisabled = true\n",
		"sync = 1\n",
		"[[node]]\n",
		"[sync]\npeers = \"x\"\nmtu = \"big\"\n",
		"transport = \"udp\"\n[Sync]\nMTU = 1\n",
		"node = { name = \"a\", nick = \"b\" }\n",
		"[sync]\ninterface = \"\"\"\nx = 1\n\"\"\"\nbogus.key = 1\n\"quoted key\" = 2\n",
		"[kernel]\nevent_buffer = \"64MiB\"\nresync_interval = \"0s\"\n[filter]\nignore_addresses = [\n\"10.0.0.1/8\",\n]\n",
		"a = [[[[1]]]]\nb = {c = {d = [{}]}}\n",
		"\xef\xbb\xbf[log]\r\nlevel = \"debug\"\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		locate(string(data)) // the scanner alone, on anything
		c, err := Parse("fuzz.toml", data)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %T %v is not a *config.Error matching ErrInvalid", err, err)
			}
			if !strings.HasPrefix(err.Error(), "fuzz.toml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted what Validate refuses: %v", err)
		}
		if _, err := c.Filter.ProtocolNumbers(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Filter.TCPStateNumbers(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Filter.Prefixes(); err != nil {
			t.Fatal(err)
		}
		if m := c.Control.FileMode(); m&^0o777 != 0 {
			t.Fatalf("FileMode %o", m)
		}
	})
}
