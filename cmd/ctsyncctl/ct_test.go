package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestCTBadInput: an invalid option or value is one line naming it and
// exit status 2, decided before the table is opened (so without root and
// without changing anything).
func TestCTBadInput(t *testing.T) {
	cases := []struct {
		args string
		want string // in the message
	}{
		{"list --bogus", "--bogus"},
		{"list --dport x -p tcp", "--dport"},
		{"list -p", "-p"},
		{"list -p tcp -p udp", "given twice"},
		{"list -s 10.0.0.1 -f ipv6", "--orig-src"},
		{"list -t 5", "--timeout"},
		{"list tcp", "tcp"},
		{"count -m 1/0", "-m"},
		{"delete", "--all"},
		{"flush", "--all"},
		{"delete --all -p tcp", "--all"},
		{"delete -w 70000", "-w"},
		{"get -p tcp -s 10.0.0.1", "--orig-dst"},
		{"get -p tcp -s 10.0.0.1 -d 10.0.0.2 --sport 1", "--orig-port-dst"},
		{"create -p tcp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 --state ESTABLISHED", "--timeout"},
		{"create -p tcp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 60", "--state"},
		{"create -p tcp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t x --state ESTABLISHED", "-t"},
		{"create -p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 60 -q ::1", "--reply-dst"},
		{"update -p tcp", "nothing to change"},
		{"update -p tcp -l 1 --label-add 2", "--label"},
		{"events -e FOO", "-e"},
		{"stats -p tcp", "filter"},
		{"nosuchverb", "nosuchverb"},
		{"list --netns a/b", "--netns"},
		{"list -o xml", "-o"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := runCT(strings.Fields(c.args), false, &out, &errb)
		msg := errb.String()
		if code != 2 || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, c.want) || out.Len() != 0 {
			t.Errorf("ct %s: exit %d, stderr %q, stdout %q; want 2 and one line naming %s", c.args, code, msg, out.String(), c.want)
		}
	}
}

func TestCTHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runCT([]string{"--help"}, false, &out, &errb); code != 0 || !strings.Contains(out.String(), "--orig-port-dst") {
		t.Fatalf("ct --help: exit %d, %q", code, out.String())
	}
}
