package sync

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	good := GenerateKey()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := write("ok.key", "  "+strings.ToUpper(strings.TrimSpace(good))+"\n\n", 0o600)
	k, err := LoadKey(p)
	if err != nil {
		t.Fatalf("LoadKey: %v", err)
	}
	k2, _ := ParseKey(good)
	if k != k2 {
		t.Fatal("key differs from the file's")
	}
	for name, c := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"group.key":  {good, 0o640, "group.key"},
		"other.key":  {good, 0o604, "other.key"},
		"short.key":  {good[:10], 0o600, "64 hexadecimal"},
		"nothex.key": {strings.Repeat("zz", 32), 0o400, "hexadecimal"},
	} {
		_, err := LoadKey(write(name, c.content, c.mode))
		if err == nil || !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrKeyFile mentioning %q", name, err, c.want)
		}
	}
	// A symbolic link to a good key file is refused (O_NOFOLLOW).
	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKey(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("symlink: %v, want refused", err)
	}
	// A key file owned by another user is refused (needs root to chown).
	if os.Geteuid() == 0 {
		other := write("other-owner.key", good, 0o600)
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadKey(other); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Errorf("other owner: %v, want refused", err)
		}
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if k1, k2 := GenerateKey(), GenerateKey(); k1 == k2 {
		t.Error("GenerateKey repeats")
	}
}

func TestSealOpen(t *testing.T) {
	key := [KeyLen]byte{9}
	a, err := epochAEAD(&key, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	h := header{Type: MsgAck, Node: 1, Epoch: 2, Counter: 3, To: 4, ToEpoch: 5}
	d := seal(nil, h, []byte("body"), a)
	h2, err := parseHeader(d)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := open(d, &h2, a); err != nil || string(b) != "body" {
		t.Fatalf("open = %q, %v", b, err)
	}
	// Other key, other epoch, tampered header or body: refused.
	other := [KeyLen]byte{8}
	for name, k := range map[string]struct {
		key   *[KeyLen]byte
		epoch uint64
	}{"key": {&other, 2}, "epoch": {&key, 3}} {
		x, err := epochAEAD(k.key, 1, k.epoch)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := open(d, &h2, x); !errors.Is(err, ErrAuth) {
			t.Errorf("%s: %v, want ErrAuth", name, err)
		}
	}
	for _, i := range []int{3, 20, 31, 39, 47, HeaderLen, len(d) - 1} {
		c := append([]byte(nil), d...)
		c[i] ^= 1
		h3, err := parseHeader(c)
		if err != nil {
			continue
		}
		if _, err := open(c, &h3, a); !errors.Is(err, ErrAuth) {
			t.Errorf("byte %d flipped: %v, want ErrAuth", i, err)
		}
	}
	if _, err := open(d, &h2, nil); !errors.Is(err, ErrAuth) {
		t.Errorf("sealed datagram opened insecure: %v", err)
	}
}

func TestReplayWindow(t *testing.T) {
	var w replayWindow
	w.reset(10)
	for c := uint64(0); c <= 10; c++ {
		if w.check(c) {
			t.Fatalf("counter %d before the reset point accepted", c)
		}
	}
	accept := func(c uint64, want bool) {
		t.Helper()
		if got := w.check(c); got != want {
			t.Fatalf("check(%d) = %v, want %v", c, got, want)
		}
		if want {
			w.mark(c)
		}
	}
	accept(12, true)
	accept(12, false)
	accept(11, true)
	accept(11, false)
	accept(15, true)
	accept(13, true)
	accept(2000, true)
	accept(2000-replayBits+1, true)
	accept(2000-replayBits, false)
	accept(14, false)
	accept(1999, true)
	accept(1_000_000, true)
	accept(1999, false)
}
