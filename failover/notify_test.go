package failover

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseNotify(t *testing.T) {
	tests := []struct {
		args []string
		want Notify
		err  string
	}{
		{args: []string{"GROUP", "fw", "MASTER", "100"}, want: Notify{Group, "fw", Master, 100}},
		{args: []string{"INSTANCE", "VI_LAN", "BACKUP", "50"}, want: Notify{Instance, "VI_LAN", Backup, 50}},
		{args: []string{"INSTANCE", "VI_LAN", "FAULT", "0"}, want: Notify{Instance, "VI_LAN", Fault, 0}},
		{args: []string{"INSTANCE", "VI_LAN", "STOP", "100"}, want: Notify{Instance, "VI_LAN", Stop, 100}},
		{args: []string{"INSTANCE", "VI_LAN", "DELETED", "100"}, want: Notify{Instance, "VI_LAN", Deleted, 100}},
		{args: []string{"GROUP", "fw", "BACKUP"}, want: Notify{Group, "fw", Backup, -1}},
		{args: []string{"GROUP", "fw"}, err: "got 2 arguments"},
		{args: []string{"GROUP", "fw", "MASTER", "1", "x"}, err: "got 5 arguments"},
		{args: []string{"group", "fw", "MASTER", "1"}, err: `type "group"`},
		{args: []string{"GROUP", "", "MASTER", "1"}, err: "empty name"},
		{args: []string{"GROUP", "fw", "master", "1"}, err: `state "master"`},
		{args: []string{"GROUP", "fw", "MASTER_RX_LOWER_PRI", "1"}, err: `state "MASTER_RX_LOWER_PRI"`},
		{args: []string{"GROUP", "fw", "MASTER", "high"}, err: `priority "high"`},
		{args: []string{"GROUP", "fw", "MASTER", "256"}, err: `priority "256"`},
	}
	for _, tt := range tests {
		got, err := ParseNotify(tt.args)
		if tt.err != "" {
			if err == nil || !errors.Is(err, ErrNotify) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: err %v, want ErrNotify with %q", tt.args, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %+v, %v; want %+v", tt.args, got, err, tt.want)
		}
		if s := got.String(); !strings.HasPrefix(strings.Join(tt.args, " "), s) {
			t.Errorf("String %q", s)
		}
	}
}

func TestWriteReady(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ready")
	for _, ready := range []bool{false, true, false, true} {
		if err := WriteReady(p, ready); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		want := "1\n"
		if ready {
			want = "0\n"
		}
		if string(b) != want {
			t.Errorf("ready=%v: file %q, want %q", ready, b, want)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
	if err := WriteReady(filepath.Join(dir, "nodir", "ready"), true); err == nil {
		t.Error("no error for a missing directory")
	}
}
