package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/ctsyncd/ctsyncd/conntrack"
	"github.com/ctsyncd/ctsyncd/flow"
)

const expectUsage = `Usage: ctsyncctl ct expect VERB [OPTIONS]

Conntrack expectations (connections a helper such as ftp announced), like
'conntrack -L expect', without a running daemon.

Verbs:
  list [FILTER]               one expectation a line as 'conntrack -L expect'
  create MASTER EXPECTED -t SECONDS
                              create an expectation on a master flow that
                              has a helper (e.g. created with --helper ftp)
  delete FILTER|--all         delete the matching expectations; prints how many
  flush --all                 delete every expectation

FILTER selects by the expected tuple: -f, -p, -s/--orig-src, -d/--orig-dst,
--sport, --dport (addresses may be CIDRs), and -w/--zone, --helper.
MASTER is the master flow's original tuple: -p -s -d --sport --dport [-w].
EXPECTED is --tuple-src ADDR --tuple-dst ADDR [--tuple-port-src N]
--tuple-port-dst N, with optional masks --mask-src ADDR --mask-dst ADDR
--mask-port-src N --mask-port-dst N (default: all bits).
Other options: --netns NAME, --json, --all.
`

// expectArgs are the parsed arguments of a ct expect verb.
type expectArgs struct {
	verb      string
	netns     string
	json      bool
	all       bool
	timeout   conntrack.Opt[uint32]
	filter    conntrack.Filter
	filterSet bool
	tuple     map[string]string // --tuple-* and --mask-* values
}

var expectTupleOptions = map[string]bool{
	"tuple-src": true, "tuple-dst": true, "tuple-port-src": true, "tuple-port-dst": true,
	"mask-src": true, "mask-dst": true, "mask-port-src": true, "mask-port-dst": true,
}

func parseExpect(verb string, argv []string, asJSON bool) (*expectArgs, error) {
	a := &expectArgs{verb: verb, json: asJSON, tuple: map[string]string{}}
	seen := map[string]bool{}
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			return nil, usageErr("ct expect %s: unexpected argument %q (options start with -)", verb, arg)
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
		other := bare == "netns" || bare == "t" || bare == "timeout" || expectTupleOptions[bare]
		if !isFilter && !other {
			return nil, usageErr("ct expect %s: %s: unknown option", verb, name)
		}
		if !hasValue {
			if i+1 >= len(argv) {
				return nil, usageErr("ct expect %s: %s: missing value", verb, name)
			}
			i++
			value = argv[i]
		}
		key := canon
		if !isFilter {
			key = bare
			if bare == "t" {
				key = "timeout"
			}
		}
		if seen[key] {
			return nil, usageErr("ct expect %s: %s: given twice", verb, name)
		}
		seen[key] = true
		switch {
		case isFilter:
			if err := a.filter.Set(name, value); err != nil {
				return nil, usageErr("ct expect %s: %v", verb, err)
			}
			a.filterSet = true
		case key == "netns":
			if value == "" || strings.Contains(value, "/") {
				return nil, usageErr("ct expect %s: %s %q: a namespace name as given to 'ip netns add'", verb, name, value)
			}
			a.netns = value
		case key == "timeout":
			n, err := strconv.ParseUint(value, 10, 32)
			if err != nil || n == 0 || n > 1<<31 {
				return nil, usageErr("ct expect %s: %s %q: seconds, 1..2147483648", verb, name, value)
			}
			a.timeout = conntrack.Some(uint32(n))
		default:
			a.tuple[key] = value
		}
	}
	if err := a.filter.Check(); err != nil {
		return nil, usageErr("ct expect %s: %v", verb, err)
	}
	return a, a.check()
}

func (a *expectArgs) check() error {
	onlyCreate := a.timeout.Valid || len(a.tuple) > 0
	switch a.verb {
	case "list", "delete", "flush":
		if onlyCreate {
			return usageErr("ct expect %s: -t and --tuple-*/--mask-* apply to create only", a.verb)
		}
		if err := a.filter.CheckExpect(); err != nil {
			return usageErr("ct expect %s: %v", a.verb, err)
		}
		if a.verb == "list" {
			if a.all {
				return usageErr("ct expect list: --all applies to delete and flush")
			}
			return nil
		}
		if a.all && a.filterSet {
			return usageErr("ct expect %s: --all and a filter exclude each other", a.verb)
		}
		if a.verb == "flush" && a.filterSet {
			return usageErr("ct expect flush: takes no filter (use delete)")
		}
		if !a.all && !a.filterSet {
			return usageErr("ct expect %s: no filter given; add --all to %s every expectation", a.verb, a.verb)
		}
	case "create":
		if a.all {
			return usageErr("ct expect create: --all applies to delete and flush")
		}
		_, err := a.expect()
		return err
	default:
		return usageErr("ct expect: unknown verb %q (list, create, delete, flush)", a.verb)
	}
	return nil
}

// expect builds the expectation of create from the options.
func (a *expectArgs) expect() (conntrack.Expect, error) {
	var e conntrack.Expect
	master, err := a.filter.Key()
	if err != nil {
		return e, usageErr("ct expect create: master flow: %v", err)
	}
	if !a.timeout.Valid {
		return e, usageErr("ct expect create: -t/--timeout: missing value (seconds)")
	}
	e.Family, e.Proto, e.Zone = master.Family, master.Proto, master.Zone
	e.Master, e.MasterProto = master.Orig, master.Proto
	e.Timeout = a.timeout.Value
	e.Helper = a.filter.Helper
	addr := func(key string, def [16]byte, required bool) ([16]byte, error) {
		v, ok := a.tuple[key]
		if !ok {
			if required {
				return def, usageErr("ct expect create: --%s: missing value", key)
			}
			return def, nil
		}
		ad, err := netip.ParseAddr(v)
		if err != nil || ad.Zone() != "" || ad.Is4In6() || (ad.Is4() != (e.Family == flow.FamilyIPv4)) {
			return def, usageErr("ct expect create: --%s %q: an address of the master's family", key, v)
		}
		return flow.AddrFrom(ad), nil
	}
	port := func(key string, def uint16, required bool) (uint16, error) {
		v, ok := a.tuple[key]
		if !ok {
			if required {
				return def, usageErr("ct expect create: --%s: missing value", key)
			}
			return def, nil
		}
		n, err := strconv.ParseUint(v, 0, 16)
		if err != nil {
			return def, usageErr("ct expect create: --%s %q: a port (0..65535)", key, v)
		}
		return uint16(n), nil
	}
	ones := [16]byte{}
	for i := range ones {
		if e.Family == flow.FamilyIPv6 || i < 4 {
			ones[i] = 0xff
		}
	}
	steps := []struct {
		dst *[16]byte
		key string
		req bool
		def [16]byte
	}{{&e.Tuple.Src, "tuple-src", true, [16]byte{}}, {&e.Tuple.Dst, "tuple-dst", true, [16]byte{}},
		{&e.Mask.Src, "mask-src", false, ones}, {&e.Mask.Dst, "mask-dst", false, ones}}
	for _, s := range steps {
		if *s.dst, err = addr(s.key, s.def, s.req); err != nil {
			return e, err
		}
	}
	ports := []struct {
		dst *uint16
		key string
		req bool
		def uint16
	}{{&e.Tuple.SrcPort, "tuple-port-src", false, 0}, {&e.Tuple.DstPort, "tuple-port-dst", true, 0},
		{&e.Mask.SrcPort, "mask-port-src", false, 0xffff}, {&e.Mask.DstPort, "mask-port-dst", false, 0xffff}}
	for _, p := range ports {
		if *p.dst, err = port(p.key, p.def, p.req); err != nil {
			return e, err
		}
	}
	return e, nil
}

// expectView is an expectation as --json prints it.
type expectView struct {
	Family    string `json:"family"`
	Proto     string `json:"proto"`
	Timeout   uint32 `json:"timeout"`
	Src       string `json:"src"`
	Dst       string `json:"dst"`
	Sport     uint16 `json:"sport"`
	Dport     uint16 `json:"dport"`
	MaskSrc   string `json:"mask_src"`
	MaskDst   string `json:"mask_dst"`
	MaskSport uint16 `json:"mask_sport"`
	MaskDport uint16 `json:"mask_dport"`
	MasterSrc string `json:"master_src"`
	MasterDst string `json:"master_dst"`
	MasterSp  uint16 `json:"master_sport"`
	MasterDp  uint16 `json:"master_dport"`
	Flags     string `json:"flags,omitempty"`
	Class     uint32 `json:"class"`
	Helper    string `json:"helper,omitempty"`
	Zone      uint16 `json:"zone"`
}

func viewExpect(e *conntrack.Expect) expectView {
	fam := "ipv4"
	if e.Family == flow.FamilyIPv6 {
		fam = "ipv6"
	}
	a := func(b [16]byte) string { return flow.Addr(e.Family, b).String() }
	return expectView{Family: fam, Proto: flow.ProtoName(e.Proto), Timeout: e.Timeout,
		Src: a(e.Tuple.Src), Dst: a(e.Tuple.Dst), Sport: e.Tuple.SrcPort, Dport: e.Tuple.DstPort,
		MaskSrc: a(e.Mask.Src), MaskDst: a(e.Mask.Dst), MaskSport: e.Mask.SrcPort, MaskDport: e.Mask.DstPort,
		MasterSrc: a(e.Master.Src), MasterDst: a(e.Master.Dst), MasterSp: e.Master.SrcPort, MasterDp: e.Master.DstPort,
		Flags: flow.FlagNames(e.Flags), Class: e.Class, Helper: e.Helper, Zone: e.Zone}
}

func (a *expectArgs) print(w io.Writer, e *conntrack.Expect) {
	if a.json {
		b, _ := json.Marshal(viewExpect(e))
		fmt.Fprintln(w, string(b))
		return
	}
	fmt.Fprintln(w, e.String())
}

// runExpect runs "ctsyncctl ct expect ...". It returns the exit status.
func runExpect(argv []string, asJSON bool, stdout, stderr io.Writer) int {
	if len(argv) == 0 || argv[0] == "-h" || argv[0] == "--help" || argv[0] == "help" {
		fmt.Fprint(stdout, expectUsage)
		if len(argv) == 0 {
			return 2
		}
		return 0
	}
	a, err := parseExpect(argv[0], argv[1:], asJSON)
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, expectUsage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ctsyncctl: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := conntrack.Open(conntrack.Options{NetNS: a.netns})
	if err != nil {
		fmt.Fprintf(stderr, "ctsyncctl: ct expect %s: %v\n", a.verb, err)
		return 1
	}
	defer h.Close()
	out := newBufWriter(stdout)
	err = a.run(ctx, h, out, stderr)
	out.Flush()
	if err != nil {
		fmt.Fprintf(stderr, "ctsyncctl: ct expect %s: %v\n", a.verb, err)
		return 1
	}
	return 0
}

func (a *expectArgs) run(ctx context.Context, h *conntrack.Handle, out bufWriter, stderr io.Writer) error {
	switch a.verb {
	case "list":
		n := 0
		for e, err := range h.ListExpect(ctx, a.filter) {
			if err != nil {
				return err
			}
			a.print(out, e)
			n++
		}
		out.Flush()
		if !a.json {
			fmt.Fprintf(stderr, "ctsyncctl: %d expectations have been shown.\n", n)
		}
	case "create":
		e, _ := a.expect()
		if err := h.CreateExpect(ctx, &e); err != nil {
			if errors.Is(err, conntrack.ErrNotFound) {
				return fmt.Errorf("%w (the master flow %s is missing)", err, conntrack.KeyString(&flow.Key{Orig: e.Master, Family: e.Family, Proto: e.MasterProto, Zone: e.Zone}))
			}
			return err
		}
		if a.json {
			fmt.Fprintln(out, "{\"created\":1}")
		} else {
			fmt.Fprintln(out, "1 expectation has been created.")
		}
	case "delete", "flush":
		if a.all && a.verb == "flush" {
			if err := h.FlushExpect(ctx); err != nil {
				return err
			}
			if a.json {
				fmt.Fprintln(out, "{\"flushed\":true}")
			} else {
				fmt.Fprintln(out, "expectation table has been emptied.")
			}
			return nil
		}
		n, err := h.DeleteExpectMatching(ctx, a.filter)
		if a.json {
			fmt.Fprintf(out, "{\"deleted\":%d}\n", n)
		} else {
			fmt.Fprintf(out, "%d expectations have been deleted.\n", n)
		}
		return err
	}
	return nil
}
