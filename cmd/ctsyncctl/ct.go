package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/ctsyncd/ctsyncd/conntrack"
	"github.com/ctsyncd/ctsyncd/flow"
)

const ctUsage = `Usage: ctsyncctl ct VERB [OPTIONS]

Reads and changes the conntrack table directly through netlink, like
conntrack(8), without a running daemon. Options take conntrack(8)'s names,
so that a script ports by changing the command name.

Verbs:
  list [FILTER]            the matching flows, one a line as 'conntrack -L'
  get TUPLE                one flow by its original tuple (-s -d -p and ports)
  count [FILTER]           the number of matching flows
  create TUPLE -t SECONDS  create a flow (--state for TCP; -r/-q and the
                           reply ports for NAT; -u, -m, -w, -l, --helper)
  update FILTER CHANGES    change the matching flows: -m MARK[/MASK],
                           -t SECONDS, -u STATUS (bits are only set),
                           -l LABELS (replace), --label-add, --label-del
  delete FILTER|--all      delete the matching flows; prints how many
  flush [--all|FILTER]     flush the table (--all) or delete by filter
  events [FILTER] [-e NEW,UPDATES,DESTROY]
                           print events until interrupted; lost events are
                           reported on stderr
  stats                    per-CPU counters, as 'conntrack -S'
  expect list|create|delete|flush
                           expectations (see 'ctsyncctl ct expect --help')

Filter options (conntrack(8) names; a value of -s/-d/-r/-q may be a CIDR):
  -f, --family ipv4|ipv6       -p, --proto NAME|NUM
  -s, --orig-src ADDR          -d, --orig-dst ADDR
  -r, --reply-src ADDR         -q, --reply-dst ADDR
  --sport, --orig-port-src N   --dport, --orig-port-dst N
  --reply-port-src N           --reply-port-dst N
  --icmp-type N  --icmp-code N  --icmp-id N
  --state S[,S...]             -u, --status BITS (ASSURED,SEEN_REPLY,...)
  -m, --mark V[/MASK]          -w, --zone N
  -l, --label BIT|NAME[,...]   --helper NAME

Other options:
  --netns NAME        use the table of network namespace NAME (/run/netns)
  -o, --output extended   print the family first ('conntrack -o extended')
  --json              one JSON object a line
  -t, --timeout N     create/update: seconds to live
  -e, --event-mask L  events: NEW, UPDATES, DESTROY, ALL
  --all               delete/flush: the whole table

Exit status: 0 success; 1 a kernel error (the reason on stderr); 2 an
invalid option or value (one line naming it; nothing is changed).
`

// ctArgs are the parsed arguments of a ct verb.
type ctArgs struct {
	verb      string
	netns     string
	extended  bool
	json      bool
	all       bool
	timeout   conntrack.Opt[uint32]
	events    conntrack.EventMask
	labelAdd  [16]byte
	labelDel  [16]byte
	filter    conntrack.Filter
	filterSet bool
	raw       map[string]string // canonical filter option name -> value as given
}

// usageError is an invalid command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErr(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// ctOptionsWithValue are the ct options that are not filter options and
// take a value.
var ctOptionsWithValue = map[string]bool{
	"netns": true, "o": true, "output": true, "t": true, "timeout": true,
	"e": true, "event-mask": true, "label-add": true, "label-del": true,
}

// parseCT parses "VERB [OPTIONS]" of ctsyncctl ct (VERB already split off).
func parseCT(verb string, argv []string, asJSON bool) (*ctArgs, error) {
	a := &ctArgs{verb: verb, json: asJSON, raw: map[string]string{}}
	seen := map[string]bool{}
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			return nil, usageErr("ct %s: unexpected argument %q (options start with -)", verb, arg)
		}
		name, value, hasValue := strings.Cut(arg, "=")
		bare := strings.TrimLeft(name, "-")
		switch bare {
		case "json":
			a.json = true
			continue
		case "all":
			a.all = true
			continue
		case "h", "help":
			return nil, errHelp
		}
		canon, isFilter := conntrack.FilterOptionName(bare)
		if !isFilter && !ctOptionsWithValue[bare] {
			return nil, usageErr("ct %s: %s: unknown option", verb, name)
		}
		if !hasValue {
			if i+1 >= len(argv) {
				return nil, usageErr("ct %s: %s: missing value", verb, name)
			}
			i++
			value = argv[i]
		}
		key := canon
		if !isFilter {
			key = bare
			switch bare {
			case "o":
				key = "output"
			case "t":
				key = "timeout"
			case "e":
				key = "event-mask"
			}
		}
		if seen[key] {
			return nil, usageErr("ct %s: %s: given twice", verb, name)
		}
		seen[key] = true
		if isFilter {
			if err := a.filter.Set(name, value); err != nil {
				return nil, usageErr("ct %s: %v", verb, err)
			}
			a.filterSet = true
			a.raw[canon] = value
			continue
		}
		if err := a.setOther(key, name, value); err != nil {
			return nil, err
		}
	}
	if err := a.filter.Check(); err != nil {
		return nil, usageErr("ct %s: %v", verb, err)
	}
	return a, nil
}

var errHelp = errors.New("help")

func (a *ctArgs) setOther(key, name, value string) error {
	bad := func(why string) error { return usageErr("ct %s: %s %q: %s", a.verb, name, value, why) }
	switch key {
	case "netns":
		if value == "" || strings.Contains(value, "/") {
			return bad("a namespace name as given to 'ip netns add'")
		}
		a.netns = value
	case "output":
		for _, o := range strings.Split(value, ",") {
			switch o {
			case "extended":
				a.extended = true
			case "json":
				a.json = true
			default:
				return bad("output format is extended or json")
			}
		}
	case "timeout":
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil || n > 1<<31 {
			return bad("seconds, 0..2147483648")
		}
		a.timeout = conntrack.Some(uint32(n))
	case "event-mask":
		m, err := conntrack.ParseEventMask(value)
		if err != nil {
			return bad(strings.TrimPrefix(err.Error(), conntrack.ErrBadValue.Error()+": "))
		}
		a.events = m
	case "label-add", "label-del":
		l, err := conntrack.ParseLabels(value)
		if err != nil {
			return bad(strings.TrimPrefix(err.Error(), conntrack.ErrBadValue.Error()+": "))
		}
		if key == "label-add" {
			a.labelAdd = l
		} else {
			a.labelDel = l
		}
	}
	return nil
}

// allow checks that only the given non-filter options were used.
func (a *ctArgs) allow(opts ...string) error {
	ok := map[string]bool{}
	for _, o := range opts {
		ok[o] = true
	}
	check := func(set bool, name string) error {
		if set && !ok[name] {
			return usageErr("ct %s: --%s does not apply to %s", a.verb, name, a.verb)
		}
		return nil
	}
	for _, c := range []struct {
		set  bool
		name string
	}{
		{a.timeout.Valid, "timeout"}, {a.events != 0, "event-mask"}, {a.all, "all"},
		{a.labelAdd != [16]byte{}, "label-add"}, {a.labelDel != [16]byte{}, "label-del"},
	} {
		if err := check(c.set, c.name); err != nil {
			return err
		}
	}
	return nil
}

// runCT runs "ctsyncctl ct ...". It returns the exit status.
func runCT(argv []string, asJSON bool, stdout, stderr io.Writer) int {
	if len(argv) == 0 || argv[0] == "-h" || argv[0] == "--help" || argv[0] == "help" {
		fmt.Fprint(stdout, ctUsage)
		if len(argv) == 0 {
			return 2
		}
		return 0
	}
	verb := argv[0]
	if verb == "expect" {
		return runExpect(argv[1:], asJSON, stdout, stderr)
	}
	a, err := parseCT(verb, argv[1:], asJSON)
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, ctUsage)
		return 0
	}
	if err == nil {
		err = a.check()
	}
	if err != nil {
		fmt.Fprintf(stderr, "ctsyncctl: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := conntrack.Open(conntrack.Options{NetNS: a.netns})
	if err != nil {
		fmt.Fprintf(stderr, "ctsyncctl: ct %s: %v\n", verb, err)
		return 1
	}
	defer h.Close()
	if err := a.run(ctx, h, stdout, stderr); err != nil {
		var ue *usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "ctsyncctl: %v\n", err)
			return 2
		}
		fmt.Fprintf(stderr, "ctsyncctl: ct %s: %v\n", verb, err)
		return 1
	}
	return 0
}

// check validates the arguments for the verb before anything is opened.
func (a *ctArgs) check() error {
	switch a.verb {
	case "list", "count":
		return a.allow()
	case "get":
		if err := a.allow(); err != nil {
			return err
		}
		_, err := a.filter.Key()
		if err != nil {
			return usageErr("ct get: %v", err)
		}
	case "create":
		if err := a.allow("timeout"); err != nil {
			return err
		}
		if !a.timeout.Valid {
			return usageErr("ct create: -t/--timeout: missing value (seconds to live)")
		}
		if _, err := conntrack.FlowFrom(a.filter, a.timeout.Value); err != nil {
			return usageErr("ct create: %v", err)
		}
	case "update":
		if err := a.allow("timeout", "label-add", "label-del"); err != nil {
			return err
		}
		if _, _, err := a.change(); err != nil {
			return err
		}
	case "delete", "flush":
		if err := a.allow("all"); err != nil {
			return err
		}
		if a.all && a.filterSet {
			return usageErr("ct %s: --all and a filter exclude each other", a.verb)
		}
		if !a.all && !a.filterSet {
			return usageErr("ct %s: no filter given; add --all to %s the whole table", a.verb, map[string]string{"delete": "delete", "flush": "flush"}[a.verb])
		}
	case "events":
		return a.allow("event-mask")
	case "stats":
		if a.filterSet {
			return usageErr("ct stats: takes no filter")
		}
		return a.allow()
	default:
		return usageErr("ct: unknown verb %q (see ctsyncctl ct --help)", a.verb)
	}
	return nil
}

// change splits update's options: -m, -u, -l, -t, --label-add and
// --label-del are the new values, the rest selects the flows.
func (a *ctArgs) change() (conntrack.Filter, conntrack.Change, error) {
	var c conntrack.Change
	var sel conntrack.Filter
	for name, v := range a.raw {
		switch name {
		case "mark":
			m, mask, err := conntrack.ParseMark(v)
			if err != nil {
				return sel, c, usageErr("ct update: --mark %q: %v", v, err)
			}
			c.SetMark, c.Mark, c.MarkMask = true, m, mask
		case "status":
			s, err := conntrack.ParseStatus(v)
			if err != nil {
				return sel, c, usageErr("ct update: --status %q: %v", v, err)
			}
			c.SetStatus, c.Status = true, s
		case "label":
			l, err := conntrack.ParseLabels(v)
			if err != nil {
				return sel, c, usageErr("ct update: --label %q: %v", v, err)
			}
			c.SetLabels, c.Labels = true, l
			for i := range c.LabelsMask {
				c.LabelsMask[i] = 0xff
			}
		default:
			if err := sel.Set(name, v); err != nil {
				return sel, c, usageErr("ct update: %v", err)
			}
		}
	}
	if a.labelAdd != ([16]byte{}) || a.labelDel != ([16]byte{}) {
		if c.SetLabels {
			return sel, c, usageErr("ct update: --label replaces the labels; --label-add and --label-del change them: use one or the other")
		}
		c.SetLabels = true
		for i := range c.Labels {
			c.Labels[i] = a.labelAdd[i]
			c.LabelsMask[i] = a.labelAdd[i] | a.labelDel[i]
		}
	}
	if a.timeout.Valid {
		c.SetTimeout, c.Timeout = true, a.timeout.Value
	}
	if !c.SetMark && !c.SetStatus && !c.SetLabels && !c.SetTimeout {
		return sel, c, usageErr("ct update: nothing to change (give -m, -t, -u, -l, --label-add or --label-del)")
	}
	return sel, c, nil
}

func (a *ctArgs) printFlow(w io.Writer, buf []byte, fl *conntrack.Flow) []byte {
	if a.json {
		b, _ := json.Marshal(fl.View())
		buf = append(buf[:0], b...)
	} else {
		buf = conntrack.AppendFlow(buf[:0], fl, a.extended)
	}
	buf = append(buf, '\n')
	w.Write(buf)
	return buf
}

func (a *ctArgs) run(ctx context.Context, h *conntrack.Handle, stdout, stderr io.Writer) error {
	out := newBufWriter(stdout)
	defer out.Flush()
	switch a.verb {
	case "list":
		n := 0
		var buf []byte
		for fl, err := range h.List(ctx, a.filter) {
			if err != nil {
				return err
			}
			buf = a.printFlow(out, buf, fl)
			n++
		}
		out.Flush()
		if !a.json {
			fmt.Fprintf(stderr, "ctsyncctl: %d flow entries have been shown.\n", n)
		}
	case "count":
		n, err := h.Count(ctx, a.filter)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, n)
	case "get":
		k, _ := a.filter.Key()
		fl, err := h.Get(ctx, k)
		if err != nil {
			return err
		}
		a.printFlow(out, nil, &fl)
	case "create":
		fl, _ := conntrack.FlowFrom(a.filter, a.timeout.Value)
		if err := h.Create(ctx, &fl); err != nil {
			return err
		}
		got, err := h.Get(ctx, fl.Key)
		if err != nil {
			return fmt.Errorf("read back: %w", err)
		}
		a.printFlow(out, nil, &got)
		out.Flush()
		if !a.json {
			fmt.Fprintln(stderr, "ctsyncctl: 1 flow entries have been created.")
		}
	case "update":
		sel, c, _ := a.change()
		n, err := h.UpdateMatching(ctx, sel, c)
		if a.json {
			fmt.Fprintf(out, "{\"updated\":%d}\n", n)
		} else {
			fmt.Fprintf(out, "%d flow entries have been updated.\n", n)
		}
		return err
	case "delete", "flush":
		if a.verb == "flush" && a.all {
			if err := h.Flush(ctx); err != nil {
				return err
			}
			if a.json {
				fmt.Fprintln(out, "{\"flushed\":true}")
			} else {
				fmt.Fprintln(out, "connection tracking table has been emptied.")
			}
			return nil
		}
		n, err := h.DeleteMatching(ctx, a.filter)
		if a.json {
			fmt.Fprintf(out, "{\"deleted\":%d}\n", n)
		} else {
			fmt.Fprintf(out, "%d flow entries have been deleted.\n", n)
		}
		return err
	case "events":
		var buf []byte
		for ev, err := range h.Watch(ctx, a.filter, conntrack.WatchOptions{Types: a.events}) {
			if conntrack.IsOverrun(err) {
				out.Flush()
				fmt.Fprintln(stderr, "ctsyncctl: events lost (socket buffer overrun); the table must be re-read")
				continue
			}
			if err != nil {
				return err
			}
			buf = a.printEvent(out, buf, &ev)
			out.Flush()
		}
		if ctx.Err() != nil {
			return nil
		}
	case "stats":
		st, err := h.StatsPerCPU(ctx)
		if err != nil {
			return err
		}
		for _, s := range st {
			if a.json {
				b, _ := json.Marshal(s)
				fmt.Fprintln(out, string(b))
				continue
			}
			fmt.Fprintf(out, "cpu=%-4d\tfound=%d invalid=%d insert=%d insert_failed=%d drop=%d early_drop=%d error=%d search_restart=%d clash_resolve=%d chaintoolong=%d\n",
				s.CPU, s.Found, s.Invalid, s.Insert, s.InsertFailed, s.Drop, s.EarlyDrop, s.Error, s.SearchRestart, s.ClashResolve, s.ChainTooLong)
		}
	}
	return nil
}

// printEvent prints an event as `conntrack -E` does: the type in brackets,
// right-aligned, then the flow (a DESTROY event carries no timeout).
func (a *ctArgs) printEvent(w io.Writer, buf []byte, ev *conntrack.Event) []byte {
	if a.json {
		v := struct {
			Type string `json:"type"`
			flow.View
		}{ev.Type.String(), ev.Flow.View()}
		b, _ := json.Marshal(v)
		buf = append(buf[:0], b...)
	} else {
		buf = append(buf[:0], fmt.Sprintf("%9s ", "["+ev.Type.String()+"]")...)
		buf = conntrack.AppendFlow(buf, &ev.Flow, a.extended)
	}
	buf = append(buf, '\n')
	w.Write(buf)
	return buf
}

// bufWriter buffers stdout: a million lines are not a million writes.
type bufWriter struct {
	*bufio.Writer
}

func newBufWriter(w io.Writer) bufWriter { return bufWriter{bufio.NewWriterSize(w, 64<<10)} }
