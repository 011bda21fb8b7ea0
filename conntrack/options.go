package conntrack

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Errors of the option parsers, wrapped in an *OptionError.
var (
	// ErrUnknownOption means an option name is not a filter option.
	ErrUnknownOption = errors.New("unknown option")
	// ErrBadValue means an option's value does not parse or is out of range.
	ErrBadValue = errors.New("invalid value")
	// ErrMissingValue means an option was given without its value.
	ErrMissingValue = errors.New("missing value")
	// ErrDuplicate means an option was given twice.
	ErrDuplicate = errors.New("given twice")
	// ErrConflict means two options contradict each other (an IPv6 address
	// with --family ipv4, a port with --proto icmp).
	ErrConflict = errors.New("conflicting options")
)

// OptionError is the error of a parser: Option is the option as the user
// wrote it ("--dport", "dport"), Value its value, Err one of the sentinel
// errors above, wrapped with the reason.
type OptionError struct {
	Option string
	Value  string
	Err    error
}

func (e *OptionError) Error() string {
	opt := e.Option
	if strings.ContainsFunc(opt, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		opt = strconv.Quote(opt)
	}
	switch {
	case errors.Is(e.Err, ErrUnknownOption), errors.Is(e.Err, ErrMissingValue), errors.Is(e.Err, ErrDuplicate):
		return fmt.Sprintf("%s: %v", opt, e.Err)
	}
	return fmt.Sprintf("%s %q: %v", opt, e.Value, e.Err)
}

// Unwrap returns the cause.
func (e *OptionError) Unwrap() error { return e.Err }

func bad(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadValue, fmt.Sprintf(format, a...))
}

// filterOption is one filter option: its canonical (conntrack(8) long)
// name, its other names, and how it sets a Filter.
type filterOption struct {
	name    string
	aliases []string
	set     func(f *Filter, v string) error
}

// filterOptions are the filter options in conntrack(8)'s order. The names
// after the canonical one include conntrack's short options (without the
// dash) and the keys of an HTTP query.
var filterOptions = []filterOption{
	{"family", []string{"f"}, func(f *Filter, v string) (err error) { f.Family, err = parseFamily(v); return }},
	{"proto", []string{"p", "protonum", "protocol"}, func(f *Filter, v string) (err error) { f.Proto, err = parseProto(v); return }},
	{"orig-src", []string{"s", "src"}, func(f *Filter, v string) (err error) { f.OrigSrc, err = parsePrefix(v); return }},
	{"orig-dst", []string{"d", "dst"}, func(f *Filter, v string) (err error) { f.OrigDst, err = parsePrefix(v); return }},
	{"reply-src", []string{"r"}, func(f *Filter, v string) (err error) { f.ReplySrc, err = parsePrefix(v); return }},
	{"reply-dst", []string{"q"}, func(f *Filter, v string) (err error) { f.ReplyDst, err = parsePrefix(v); return }},
	{"orig-port-src", []string{"sport"}, func(f *Filter, v string) (err error) { f.OrigSrcPort, err = parseU16(v, "port"); return }},
	{"orig-port-dst", []string{"dport"}, func(f *Filter, v string) (err error) { f.OrigDstPort, err = parseU16(v, "port"); return }},
	{"reply-port-src", []string{"reply-sport"}, func(f *Filter, v string) (err error) { f.ReplySrcPort, err = parseU16(v, "port"); return }},
	{"reply-port-dst", []string{"reply-dport"}, func(f *Filter, v string) (err error) { f.ReplyDstPort, err = parseU16(v, "port"); return }},
	{"icmp-type", []string{"icmpv6-type"}, func(f *Filter, v string) (err error) { f.ICMPType, err = parseU8(v, "ICMP type"); return }},
	{"icmp-code", []string{"icmpv6-code"}, func(f *Filter, v string) (err error) { f.ICMPCode, err = parseU8(v, "ICMP code"); return }},
	{"icmp-id", []string{"icmpv6-id"}, func(f *Filter, v string) (err error) { f.ICMPID, err = parseU16(v, "ICMP id"); return }},
	{"state", nil, func(f *Filter, v string) (err error) { f.TCPStates, err = ParseTCPStates(v); return }},
	{"status", []string{"u"}, func(f *Filter, v string) (err error) { f.Status, err = ParseStatus(v); return }},
	{"mark", []string{"m"}, func(f *Filter, v string) (err error) {
		var m uint32
		m, f.MarkMask, err = ParseMark(v)
		f.Mark = Some(m)
		return
	}},
	{"zone", []string{"w"}, func(f *Filter, v string) (err error) { f.Zone, err = parseU16(v, "zone"); return }},
	{"label", []string{"l"}, func(f *Filter, v string) (err error) { f.Labels, err = ParseLabels(v); return }},
	{"helper", nil, func(f *Filter, v string) (err error) { f.Helper, err = parseHelper(v); return }},
}

// lookupOption finds a filter option by any of its names, given with or
// without leading dashes; an underscore stands for a dash (reply_src).
func lookupOption(name string) (*filterOption, bool) {
	n := strings.ReplaceAll(strings.TrimLeft(name, "-"), "_", "-")
	for i := range filterOptions {
		o := &filterOptions[i]
		if o.name == n || slices.Contains(o.aliases, n) {
			return o, true
		}
	}
	return nil, false
}

// FilterOptionName returns the canonical conntrack(8) long name of a filter
// option ("orig-port-dst" for "--dport", "dport" or "-dport"), and whether
// name is a filter option at all.
func FilterOptionName(name string) (string, bool) {
	o, ok := lookupOption(name)
	if !ok {
		return "", false
	}
	return o.name, true
}

// Set sets one filter field from an option name (conntrack(8)'s, with or
// without dashes, short or long, or an HTTP query key) and its value. It
// does not check the filter as a whole; see Check.
func (f *Filter) Set(name, value string) error {
	o, ok := lookupOption(name)
	if !ok {
		return &OptionError{Option: name, Value: value, Err: ErrUnknownOption}
	}
	g := *f // a failed Set leaves f as it was
	if err := o.set(&g, value); err != nil {
		return &OptionError{Option: name, Value: value, Err: err}
	}
	*f = g
	return nil
}

// Check reports contradictions between the filter's fields: addresses of
// another family than Family or of both families, ports with a protocol
// that has none, ICMP fields without ICMP, TCP states without TCP.
func (f *Filter) Check() error {
	fam := f.Family
	for _, x := range []struct {
		opt string
		p   netip.Prefix
	}{{"--orig-src", f.OrigSrc}, {"--orig-dst", f.OrigDst}, {"--reply-src", f.ReplySrc}, {"--reply-dst", f.ReplyDst}} {
		if !x.p.IsValid() {
			continue
		}
		pf := prefixFamily(x.p)
		if fam != 0 && pf != fam {
			return &OptionError{Option: x.opt, Value: x.p.String(), Err: fmt.Errorf("%w: address family differs from the other options", ErrConflict)}
		}
		fam = pf
	}
	if f.Proto != 0 {
		if (f.OrigSrcPort.Valid || f.OrigDstPort.Valid || f.ReplySrcPort.Valid || f.ReplyDstPort.Valid) && !hasPorts(f.Proto) {
			return &OptionError{Option: "--proto", Value: flow.ProtoName(f.Proto), Err: fmt.Errorf("%w: protocol has no ports", ErrConflict)}
		}
		if (f.ICMPType.Valid || f.ICMPCode.Valid || f.ICMPID.Valid) && !isICMP(f.Proto) {
			return &OptionError{Option: "--proto", Value: flow.ProtoName(f.Proto), Err: fmt.Errorf("%w: --icmp-* needs icmp or icmpv6", ErrConflict)}
		}
		if f.TCPStates != 0 && f.Proto != flow.ProtoTCP {
			return &OptionError{Option: "--proto", Value: flow.ProtoName(f.Proto), Err: fmt.Errorf("%w: --state needs tcp", ErrConflict)}
		}
	}
	if fam != 0 && f.Proto != 0 {
		if (f.Proto == flow.ProtoICMP && fam != flow.FamilyIPv4) || (f.Proto == flow.ProtoICMPv6 && fam != flow.FamilyIPv6) {
			return &OptionError{Option: "--proto", Value: flow.ProtoName(f.Proto), Err: fmt.Errorf("%w: protocol of the other address family", ErrConflict)}
		}
	}
	return nil
}

// ParseFilter parses conntrack(8)-style filter options: "-p tcp", "--dport
// 22", "--dport=22", "-m 1/0xff". Every argument must be a filter option or
// its value; an option given twice is an error. The error is an
// *OptionError naming the option.
func ParseFilter(args []string) (Filter, error) {
	var f Filter
	seen := map[string]bool{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			return Filter{}, &OptionError{Option: a, Err: fmt.Errorf("%w (not an option)", ErrUnknownOption)}
		}
		name, value, hasValue := strings.Cut(a, "=")
		o, ok := lookupOption(name)
		if !ok {
			return Filter{}, &OptionError{Option: name, Err: ErrUnknownOption}
		}
		if !hasValue {
			if i+1 >= len(args) {
				return Filter{}, &OptionError{Option: name, Err: ErrMissingValue}
			}
			i++
			value = args[i]
		}
		if seen[o.name] {
			return Filter{}, &OptionError{Option: name, Value: value, Err: ErrDuplicate}
		}
		seen[o.name] = true
		if err := o.set(&f, value); err != nil {
			return Filter{}, &OptionError{Option: name, Value: value, Err: err}
		}
	}
	if err := f.Check(); err != nil {
		return Filter{}, err
	}
	return f, nil
}

// ParseFilterValues parses a filter from key=value pairs such as an HTTP
// query: proto=tcp&dport=22&src=10.0.0.0/8. Keys are the option names of
// ParseFilter without dashes (proto, src, dst, sport, dport, reply-src or
// reply_src, state, status, mark, zone, label, helper, family, ...). A key
// given twice is an error.
func ParseFilterValues(v url.Values) (Filter, error) {
	var f Filter
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic error for several bad keys
	seen := map[string]bool{}
	for _, k := range keys {
		vals := v[k]
		o, ok := lookupOption(k)
		if !ok {
			return Filter{}, &OptionError{Option: k, Err: ErrUnknownOption}
		}
		if len(vals) != 1 || seen[o.name] {
			return Filter{}, &OptionError{Option: k, Err: ErrDuplicate}
		}
		seen[o.name] = true
		if err := o.set(&f, vals[0]); err != nil {
			return Filter{}, &OptionError{Option: k, Value: vals[0], Err: err}
		}
	}
	if err := f.Check(); err != nil {
		return Filter{}, err
	}
	return f, nil
}

// ParseFilterPairs parses "key=value" words (proto=tcp dport=22), as
// ParseFilterValues does.
func ParseFilterPairs(pairs []string) (Filter, error) {
	v := url.Values{}
	for _, p := range pairs {
		k, val, ok := strings.Cut(p, "=")
		if !ok {
			return Filter{}, &OptionError{Option: p, Err: ErrMissingValue}
		}
		v[k] = append(v[k], val)
	}
	return ParseFilterValues(v)
}

// Args renders the filter as conntrack(8) options, canonical long names in
// a fixed order; ParseFilter(f.Args()) gives f back.
func (f *Filter) Args() []string {
	var a []string
	add := func(name, v string) { a = append(a, "--"+name, v) }
	if f.Family != 0 {
		add("family", familyName(f.Family))
	}
	if f.Proto != 0 {
		add("proto", protoString(f.Proto))
	}
	for _, x := range []struct {
		name string
		p    netip.Prefix
	}{{"orig-src", f.OrigSrc}, {"orig-dst", f.OrigDst}, {"reply-src", f.ReplySrc}, {"reply-dst", f.ReplyDst}} {
		if x.p.IsValid() {
			add(x.name, prefixString(x.p))
		}
	}
	for _, x := range []struct {
		name string
		o    Opt[uint16]
	}{{"orig-port-src", f.OrigSrcPort}, {"orig-port-dst", f.OrigDstPort}, {"reply-port-src", f.ReplySrcPort}, {"reply-port-dst", f.ReplyDstPort}} {
		if x.o.Valid {
			add(x.name, strconv.Itoa(int(x.o.Value)))
		}
	}
	if f.ICMPType.Valid {
		add("icmp-type", strconv.Itoa(int(f.ICMPType.Value)))
	}
	if f.ICMPCode.Valid {
		add("icmp-code", strconv.Itoa(int(f.ICMPCode.Value)))
	}
	if f.ICMPID.Valid {
		add("icmp-id", strconv.Itoa(int(f.ICMPID.Value)))
	}
	if f.TCPStates != 0 {
		add("state", TCPStatesString(f.TCPStates))
	}
	if f.Status != 0 {
		add("status", StatusString(f.Status))
	}
	if f.Mark.Valid {
		v := strconv.FormatUint(uint64(f.Mark.Value), 10)
		if f.MarkMask != 0 {
			v += "/0x" + strconv.FormatUint(uint64(f.MarkMask), 16)
		}
		add("mark", v)
	}
	if f.Zone.Valid {
		add("zone", strconv.Itoa(int(f.Zone.Value)))
	}
	if f.Labels != ([16]byte{}) {
		add("label", labelsString(f.Labels))
	}
	if f.Helper != "" {
		add("helper", f.Helper)
	}
	return a
}

// String is the filter as conntrack(8) options, "" for the zero filter.
func (f Filter) String() string { return strings.Join(f.Args(), " ") }

func familyName(fam uint8) string {
	if fam == flow.FamilyIPv6 {
		return "ipv6"
	}
	return "ipv4"
}

func protoString(p uint8) string {
	if n := flow.ProtoName(p); n != "unknown" {
		return n
	}
	return strconv.Itoa(int(p))
}

func prefixString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func parseFamily(v string) (uint8, error) {
	switch strings.ToLower(v) {
	case "ipv4", "inet", "4":
		return flow.FamilyIPv4, nil
	case "ipv6", "inet6", "6":
		return flow.FamilyIPv6, nil
	}
	return 0, bad("family is ipv4 or ipv6")
}

func parseProto(v string) (uint8, error) {
	if p, ok := flow.ProtoByName(v); ok {
		return p, nil
	}
	if strings.EqualFold(v, "ipv6-icmp") {
		return flow.ProtoICMPv6, nil
	}
	n, err := strconv.ParseUint(v, 10, 8)
	if err != nil || n == 0 {
		return 0, bad("not a protocol name or number 1..255")
	}
	return uint8(n), nil
}

// parsePrefix parses an address or a CIDR prefix.
func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil || p.Addr().Zone() != "" {
			return netip.Prefix{}, bad("not an address or CIDR prefix")
		}
		a := p.Addr()
		if a.Is4In6() {
			return netip.Prefix{}, bad("IPv4-mapped address; give the IPv4 address")
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, bad("not an address or CIDR prefix")
	}
	if a.Is4In6() {
		return netip.Prefix{}, bad("IPv4-mapped address; give the IPv4 address")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parseU16(v, what string) (Opt[uint16], error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return Opt[uint16]{}, bad("not a %s (0..65535)", what)
	}
	return Some(uint16(n)), nil
}

func parseU8(v, what string) (Opt[uint8], error) {
	n, err := strconv.ParseUint(v, 10, 8)
	if err != nil {
		return Opt[uint8]{}, bad("not an %s (0..255)", what)
	}
	return Some(uint8(n)), nil
}

// ParseTCPStates parses a comma-separated list of TCP state names
// (ESTABLISHED, TIME_WAIT, ...; any case; LISTEN is SYN_SENT2) into a
// Filter.TCPStates set.
func ParseTCPStates(v string) (uint16, error) {
	var set uint16
	for _, name := range strings.Split(v, ",") {
		s, ok := flow.TCPStateByName(name)
		if !ok && strings.EqualFold(name, "LISTEN") {
			s, ok = flow.TCPSynSent2, true
		}
		if !ok {
			return 0, bad("unknown TCP state %q", name)
		}
		set |= StateBit(s)
	}
	return set, nil
}

// TCPStatesString formats a TCPStates set as ParseTCPStates reads it.
func TCPStatesString(set uint16) string {
	var names []string
	for s := uint8(0); s < 16; s++ {
		if set&StateBit(s) != 0 {
			names = append(names, flow.TCPStateName(s))
		}
	}
	return strings.Join(names, ",")
}

// ParseStatus parses a comma-separated list of status bit names (ASSURED,
// SEEN_REPLY, EXPECTED, FIXED_TIMEOUT, CONFIRMED, SRC_NAT, DST_NAT, ...;
// any case) into status bits.
func ParseStatus(v string) (uint32, error) {
	var bits uint32
	for _, name := range strings.Split(v, ",") {
		found := false
		for i := 0; i < 32; i++ {
			n := flow.StatusNames(1 << i)
			if len(n) == 1 && strings.EqualFold(n[0], name) {
				bits |= 1 << i
				found = true
				break
			}
		}
		if !found {
			return 0, bad("unknown status %q", name)
		}
	}
	return bits, nil
}

// StatusString formats status bits as ParseStatus reads them.
func StatusString(bits uint32) string { return strings.Join(flow.StatusNames(bits), ",") }

// ParseMark parses a mark with an optional mask, "VALUE[/MASK]", each
// decimal or 0x hexadecimal. mask is 0 when none is given (all bits); an
// explicit mask of 0 is refused, as it would match everything.
func ParseMark(v string) (mark, mask uint32, err error) {
	val, m, hasMask := strings.Cut(v, "/")
	n, err := strconv.ParseUint(val, 0, 32)
	if err != nil {
		return 0, 0, bad("mark is VALUE[/MASK], 32-bit numbers")
	}
	if hasMask {
		k, err := strconv.ParseUint(m, 0, 32)
		if err != nil {
			return 0, 0, bad("mark is VALUE[/MASK], 32-bit numbers")
		}
		if k == 0 {
			return 0, 0, bad("mask 0 matches every mark")
		}
		mask = uint32(k)
	}
	return uint32(n), mask, nil
}

// ConnlabelConf is where label names are looked up, as conntrack(8) and
// nftables do.
var ConnlabelConf = "/etc/xtables/connlabel.conf"

// ParseLabels parses a comma-separated list of conntrack labels: bit
// numbers 0..127, or names from ConnlabelConf.
func ParseLabels(v string) ([16]byte, error) {
	var l [16]byte
	var names map[string]int
	for _, name := range strings.Split(v, ",") {
		bit, err := strconv.Atoi(name)
		if err != nil {
			if names == nil {
				names = readConnlabels(ConnlabelConf)
			}
			b, ok := names[name]
			if !ok {
				return l, bad("label %q is not a bit number 0..127 nor a name in %s", name, ConnlabelConf)
			}
			bit = b
		}
		if bit < 0 || bit > 127 {
			return l, bad("label bit %d is not in 0..127", bit)
		}
		l[bit/8] |= 1 << (bit % 8)
	}
	return l, nil
}

// readConnlabels reads "BIT NAME" lines; a missing file is an empty map.
func readConnlabels(path string) map[string]int {
	m := map[string]int{}
	fh, err := os.Open(path)
	if err != nil {
		return m
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if b, err := strconv.Atoi(fields[0]); err == nil && b >= 0 && b < 128 {
			m[fields[1]] = b
		}
	}
	return m
}

func labelsString(l [16]byte) string {
	var bits []string
	for i := 0; i < 128; i++ {
		if l[i/8]&(1<<(i%8)) != 0 {
			bits = append(bits, strconv.Itoa(i))
		}
	}
	return strings.Join(bits, ",")
}

func parseHelper(v string) (string, error) {
	if v == "" || len(v) > 15 {
		return "", bad("helper name is 1..15 characters")
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "", bad("helper name has a character other than letters, digits, '-', '_', '.'")
		}
	}
	return v, nil
}
