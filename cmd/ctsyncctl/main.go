// Command ctsyncctl drives a running ctsyncd over its control socket.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/ctsyncd/ctsyncd/control"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

const usage = `Usage: ctsyncctl [--socket PATH] [--json] COMMAND [ARGS]

Drives a running ctsyncd over its control socket. Exit status 0 on success;
otherwise 1 with a one-line reason on stderr (2 for a usage error).

Commands:
  status                  the node at a glance: role, readiness, each peer
                          (alive, last seen, lag, flows at risk), cache
                          sizes, last resync, commit and drift repair,
                          warnings (--json: the documented, stable form,
                          docs/status.md)
  stats                   event, cache and reconcile counters
  dump internal           this node's flows, one a line like 'conntrack -L'
                          (--json: one JSON object a line)
  dump external           the flows peers replicated, with origin and idleness
  dump internal|external --expect
                          the expectations (what the ftp, sip, tftp helpers
                          announced), one a line like 'conntrack -L expect'
  dump commit             the last commit's order (least idle first), a flow
                          key and its position a line
  resync                  re-read this kernel's table into the internal cache
                          (like conntrackd -R) and print what changed
  flush internal|external empty a cache (peers are not told)
  flush kernel            delete every entry of this node's conntrack table
  commit                  write the peers' flows (external cache) into the
                          kernel, the flows carrying traffic first; prints a
                          report, exits 1 if any flow failed
  purge                   cap the kernel timeouts of the flows this node no
                          longer owns at failover.purge_timeout
  keepalived TYPE NAME STATE [PRIORITY]
                          keepalived's notify arguments: in keepalived.conf
                            notify "/usr/sbin/ctsyncctl keepalived"
                          MASTER commits, re-reads the kernel and sends it in
                          bulk; BACKUP asks peers for their tables and purges;
                          FAULT purges; STOP and DELETED do nothing.
                          Transitions are serialized, the last one wins.
  bulk                    send the whole internal cache to every peer (-B)
  request-resync          ask every peer for its whole table (-n)
  keygen                  print a new random sync key (64 hex characters);
                          runs locally, no daemon needed:
                            ctsyncctl keygen > /etc/ctsyncd/sync.key
                            chmod 600 /etc/ctsyncd/sync.key
  ct VERB [OPTIONS]       read and change the conntrack table directly, like
                          conntrack(8), in this namespace or --netns NAME;
                          no daemon needed (ctsyncctl ct --help): list, get,
                          count, create, update, delete, flush, events,
                          stats, expect list|create|delete|flush

Options:
`

// commands maps each command to the arguments it accepts (nil: none).
var commands = map[string][]string{
	"status":         nil,
	"stats":          nil,
	"dump":           {"internal", "external", "commit"},
	"resync":         nil,
	"flush":          {"internal", "external", "kernel"},
	"commit":         nil,
	"purge":          nil,
	"bulk":           nil,
	"request-resync": nil,
	"keygen":         nil,
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(argv []string) int {
	fs := flag.NewFlagSet("ctsyncctl", flag.ContinueOnError)
	socket := fs.String("socket", "/run/ctsyncd/ctsyncd.sock", "control socket `path` (control.socket in ctsyncd's config)")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(argv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	args := fs.Args()
	if len(args) > 0 && args[0] == "ct" {
		// The conntrack(8)-like verbs work on the kernel directly.
		return runCT(args[1:], *asJSON, os.Stdout, os.Stderr)
	}
	// Accept --json after the command too: "ctsyncctl dump internal --json".
	var rest []string
	expect := false
	for _, a := range args {
		switch a {
		case "--json", "-json":
			*asJSON = true
			continue
		case "--expect", "-expect":
			expect = true
			continue
		}
		rest = append(rest, a)
	}
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	cmd, cargs := rest[0], rest[1:]
	allowed, ok := commands[cmd]
	switch {
	case cmd == "keepalived":
		// The daemon checks the arguments themselves (failover.ParseNotify).
		if len(cargs) < 3 || len(cargs) > 4 {
			fmt.Fprintln(os.Stderr, "ctsyncctl: usage: ctsyncctl keepalived TYPE NAME STATE [PRIORITY] (keepalived's notify arguments)")
			return 2
		}
	case !ok:
		fmt.Fprintf(os.Stderr, "ctsyncctl: unknown command %q (see ctsyncctl --help)\n", cmd)
		return 2
	case allowed == nil && len(cargs) > 0:
		fmt.Fprintf(os.Stderr, "ctsyncctl: %s takes no arguments\n", cmd)
		return 2
	case allowed != nil && (len(cargs) != 1 || !contains(allowed, cargs[0])):
		fmt.Fprintf(os.Stderr, "ctsyncctl: usage: ctsyncctl %s %s\n", cmd, strings.Join(allowed, "|"))
		return 2
	}
	if expect {
		if cmd != "dump" || cargs[0] == "commit" {
			fmt.Fprintln(os.Stderr, "ctsyncctl: --expect goes with dump internal|external")
			return 2
		}
		cargs = append(cargs, "expect")
	}
	if cmd == "keygen" {
		fmt.Print(ctsync.GenerateKey())
		return 0
	}
	err := control.Do(*socket, control.Request{Command: cmd, Args: cargs, JSON: *asJSON}, os.Stdout)
	if err != nil {
		msg := err.Error()
		msg = strings.TrimPrefix(msg, control.ErrFailed.Error()+": ")
		fmt.Fprintf(os.Stderr, "ctsyncctl: %s\n", msg)
		return 1
	}
	return 0
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
