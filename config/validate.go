package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Limits checked by Validate.
const (
	minEventBuffer = 64 << 10
	maxEventBuffer = 1 << 30 // the kernel caps SO_RCVBUFFORCE at INT_MAX/2
	maxWriteSocket = 16
	maxWriteBatch  = 4096
	minMTU         = 576
	maxMTU         = 65000
	minResendQueue = 16
	maxResendQueue = 1 << 20
	maxNodeName    = 64  // HOST_NAME_MAX
	maxSocketPath  = 107 // sizeof(sun_path) - 1
	maxIfName      = 15  // IFNAMSIZ - 1
	// Kernel conntrack timeouts are 32-bit seconds.
	maxKernelTimeout = time.Duration(1<<32-1) * time.Second
)

var (
	transports = []string{"udp", "multicast", "gossip"}
	logLevels  = []string{"debug", "info", "warn", "error"}
	logFormats = []string{"text", "json"}
)

// Validate checks every value and every combination of values. It reports
// all problems, each an *Error naming the key; the lines are known only for
// a Config that came from Parse or Load, which validate already, so this is
// for a Config built or changed in code. File is c.Path.
func (c *Config) Validate() error { return c.validate(nil, nil) }

type validator struct {
	file string
	md   *toml.MetaData // nil for a Config built in code
	loc  *locator       // nil for a Config built in code
	errs []*Error
}

func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, errf(v.file, v.loc.line(key), key, format, args...))
}

func (v *validator) addElem(key string, i int, format string, args ...any) {
	v.errs = append(v.errs, errf(v.file, v.loc.elemLine(key, i), key, format, args...))
}

// inFile reports whether key (bare parts only) was written in the file, as
// opposed to left at its default.
func (v *validator) inFile(key string) bool {
	return v.md != nil && v.md.IsDefined(strings.Split(key, ".")...)
}

func (v *validator) intRange(key string, n, lo, hi int) {
	if n < lo || n > hi {
		v.add(key, "%d is out of range %d..%d", n, lo, hi)
	}
}

func (v *validator) durRange(key string, d Duration, lo, hi time.Duration) {
	switch {
	case d.Duration < 0:
		v.add(key, "negative duration %s", d.Duration)
	case d.Duration < lo:
		v.add(key, "%s is too short: at least %s", d.Duration, lo)
	case hi > 0 && d.Duration > hi:
		v.add(key, "%s is too long: at most %s", d.Duration, hi)
	}
}

func (v *validator) oneOf(key, val string, allowed []string) {
	if !slices.Contains(allowed, val) {
		v.add(key, "%q is not one of %s", val, strings.Join(allowed, ", "))
	}
}

func (c *Config) validate(md *toml.MetaData, loc *locator) error {
	v := &validator{file: c.Path, md: md, loc: loc}

	// [node]
	switch n := c.Node.Name; {
	case n == "" && !v.inFile("node.name"):
		v.add("node.name", "required: it defaults to the hostname, which could not be read")
	case n == "":
		v.add("node.name", "must not be empty")
	case len(n) > maxNodeName:
		v.add("node.name", "%q is %d bytes long; at most %d", n, len(n), maxNodeName)
	case strings.IndexFunc(n, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		v.add("node.name", "%q contains spaces or control characters", n)
	}

	// [control]
	switch s := c.Control.Socket; {
	case s == "":
		v.add("control.socket", "must not be empty")
	case len(s) > maxSocketPath:
		v.add("control.socket", "path is %d bytes long; a UNIX socket path has at most %d", len(s), maxSocketPath)
	}
	if _, err := parseMode(c.Control.Mode); err != nil {
		v.add("control.mode", "%v", err)
	}
	if g := c.Control.Group; g != "" {
		if strings.Trim(g, "0123456789") == "" {
			if n, err := strconv.ParseUint(g, 10, 32); err != nil || n == 1<<32-1 {
				v.add("control.group", "%q is not a valid numeric gid", g)
			}
		} else if strings.ContainsAny(g, ":/,") || strings.IndexFunc(g, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0 {
			v.add("control.group", "%q is not a group name or a numeric gid", g)
		}
	}

	// [kernel]
	if b := c.Kernel.EventBuffer; b < minEventBuffer || b > maxEventBuffer {
		v.add("kernel.event_buffer", "%s is out of range %s..%s", sizeString(b), ByteSize(minEventBuffer), ByteSize(maxEventBuffer))
	}
	switch d := c.Kernel.ResyncInterval.Duration; {
	case d < 0:
		v.add("kernel.resync_interval", "negative duration %s", d)
	case d > 0 && d < time.Second:
		v.add("kernel.resync_interval", "%s is too short: at least 1s (\"0s\" disables the periodic resync)", d)
	}
	v.intRange("kernel.write_sockets", c.Kernel.WriteSockets, 1, maxWriteSocket)
	v.intRange("kernel.write_batch", c.Kernel.WriteBatch, 1, maxWriteBatch)

	c.Sync.validate(v)
	c.Filter.validate(v)
	c.PeerPolicy.validate(v)

	// [failover]
	f := c.Failover
	v.durRange("failover.purge_timeout", f.PurgeTimeout, time.Second, maxKernelTimeout)
	v.durRange("failover.commit_timeout", f.CommitTimeout, time.Second, 0)
	v.durRange("failover.min_timeout", f.MinTimeout, 0, maxKernelTimeout)
	switch d := f.RulesetInterval.Duration; {
	case d < 0:
		v.add("failover.ruleset_interval", "negative duration %s", d)
	case d > 0 && d < time.Second:
		v.add("failover.ruleset_interval", "%s is too short: at least 1s (\"0s\" turns the comparison off)", d)
	}
	if f.RequireSameRuleset && f.RulesetInterval.Duration == 0 {
		v.add("failover.require_same_ruleset", "needs the ruleset comparison: ruleset_interval is \"0s\"")
	}
	for i, t := range f.RulesetIgnoreTables {
		if fs := strings.Fields(t); len(fs) != 2 || !slices.Contains([]string{"ip", "ip6", "inet", "arp", "bridge", "netdev"}, fs[0]) {
			v.addElem("failover.ruleset_ignore_tables", i, "%q is not \"FAMILY NAME\" (family ip, ip6, inet, arp, bridge or netdev)", t)
		}
	}
	if r := f.ReadyFile; r != "" {
		if !filepath.IsAbs(r) || strings.HasSuffix(r, "/") {
			v.add("failover.ready_file", "%q is not an absolute file path", r)
		}
	}

	// [defer]
	if d := c.Defer; d.Enabled || v.inFile("defer") {
		v.intRange("defer.queue", d.Queue, 0, 65535)
		v.durRange("defer.defer_timeout", d.Timeout, time.Millisecond, time.Second)
		v.intRange("defer.max_pending", d.MaxPending, 1, 1<<20)
		switch {
		case d.Enabled && c.Sync.Disabled:
			v.add("defer.enabled", "needs replication: sync.disabled is true")
		case d.Enabled && !c.Sync.Inject:
			v.add("defer.enabled", "needs sync.inject = true: a peer that only caches a deferred flow cannot forward its reply")
		}
	}

	// [metrics]
	if l := c.Metrics.Listen; l != "" {
		if _, err := parseAddrPort(l); err != nil {
			v.add("metrics.listen", "%v", err)
		}
	}

	// [log]
	v.oneOf("log.level", c.Log.Level, logLevels)
	v.oneOf("log.format", c.Log.Format, logFormats)
	if p := c.Log.Flows; p != "" && (!filepath.IsAbs(p) || strings.HasSuffix(p, "/")) {
		v.add("log.flows", "%q is not an absolute file path", p)
	}
	v.oneOf("log.flows_format", c.Log.FlowsFormat, []string{"extended", "json"})

	c.API.validate(v)

	return joinErrors(v.errs)
}

// sizeString shows a size as written and in bytes when they differ.
func sizeString(b ByteSize) string {
	s := b.String()
	if n := strconv.FormatInt(int64(b), 10); n != s {
		return s + " (" + n + " bytes)"
	}
	return s
}

func (s Sync) validate(v *validator) {
	v.oneOf("sync.transport", s.Transport, transports)
	multicast := s.Transport == "multicast" && !s.Disabled

	if s.Interface != "" {
		if err := checkIfName(s.Interface); err != nil {
			v.add("sync.interface", "%v", err)
		}
	} else if multicast {
		v.add("sync.interface", "required with transport = \"multicast\" (the dedicated link)")
	}

	var listen netip.AddrPort
	if s.Listen != "" {
		ap, err := parseAddrPort(s.Listen)
		switch {
		case err != nil:
			v.add("sync.listen", "%v", err)
		case ap.Addr().IsMulticast():
			v.add("sync.listen", "%q is a multicast address; listen is this node's own address (the group goes in sync.group)", s.Listen)
		default:
			listen = ap
		}
	} else if !s.Disabled {
		v.add("sync.listen", "required unless disabled = true: this node's address, e.g. \"10.200.0.1:3780\"")
	}

	seen := map[netip.AddrPort]int{}
	for i, p := range s.Peers {
		ap, err := parseAddrPort(p)
		switch {
		case err != nil:
			v.addElem("sync.peers", i, "%v", err)
			continue
		case ap.Addr().IsUnspecified() || ap.Addr().IsMulticast():
			v.addElem("sync.peers", i, "%q is not a peer's unicast address", p)
			continue
		case listen.IsValid() && ap == listen:
			v.addElem("sync.peers", i, "%q is this node's own listen address", p)
			continue
		case listen.IsValid() && !familyCompatible(listen.Addr(), ap.Addr()):
			v.addElem("sync.peers", i, "%q is %s but listen %q is %s", p, family(ap.Addr()), s.Listen, family(listen.Addr()))
			continue
		}
		if j, dup := seen[ap]; dup {
			v.addElem("sync.peers", i, "%q is listed twice (also element %d)", p, j+1)
			continue
		}
		seen[ap] = i
	}
	if s.Transport == "udp" && !s.Disabled && len(s.Peers) == 0 {
		v.add("sync.peers", "transport = \"udp\" needs at least one peer, e.g. peers = [\"10.200.0.2:3780\"]")
	}

	if s.Group != "" {
		ap, err := parseAddrPort(s.Group)
		switch {
		case err != nil:
			v.add("sync.group", "%v", err)
		case !ap.Addr().IsMulticast():
			v.add("sync.group", "%q is not a multicast address (IPv4 224.0.0.0/4, IPv6 ff00::/8)", s.Group)
		case multicast && listen.IsValid() && ap.Addr().Is4() != listen.Addr().Is4():
			v.add("sync.group", "%q is %s but listen %q is %s", s.Group, family(ap.Addr()), s.Listen, family(listen.Addr()))
		}
	} else if multicast {
		v.add("sync.group", "required with transport = \"multicast\", e.g. \"225.0.0.50:3780\"")
	}

	switch {
	case s.Insecure && s.KeyFile != "":
		v.add("sync.key_file", "set together with insecure = true; remove one of them")
	case !s.Insecure && !s.Disabled && strings.TrimSpace(s.KeyFile) == "":
		if v.inFile("sync.key_file") {
			v.add("sync.key_file", "must not be empty")
		} else {
			v.add("sync.key_file", "required unless insecure = true: the pre-shared key file, e.g. \"/etc/ctsyncd/sync.key\"")
		}
	}

	v.intRange("sync.mtu", s.MTU, minMTU, maxMTU)
	v.intRange("sync.resend_queue", s.ResendQueue, minResendQueue, maxResendQueue)
	v.durRange("sync.ack_interval", s.AckInterval, time.Millisecond, 10*time.Second)
	v.durRange("sync.heartbeat_interval", s.HeartbeatInterval, 10*time.Millisecond, time.Minute)
	v.durRange("sync.peer_timeout", s.PeerTimeout, 0, 0)
	if d := s.DigestInterval.Duration; d != 0 {
		v.durRange("sync.digest_interval", s.DigestInterval, time.Second, time.Hour)
	}
	v.durRange("sync.min_age", s.MinAge, 0, time.Hour)
	s.validateLinks(v)
	for i, h := range s.ExpectationHelpers {
		if !validHelperName(h) {
			v.addElem("sync.expectation_helpers", i, "%q is not a conntrack helper name (1 to 15 of a-z, 0-9, -, _; e.g. \"ftp\", \"sip\", \"tftp\")", h)
		}
	}
	if s.MaxBufferBytes < 64<<10 || s.MaxBufferBytes > 4<<30 {
		v.add("sync.max_buffer_bytes", "%d is out of range 64KiB..4GiB", int64(s.MaxBufferBytes))
	}
	v.intRange("sync.max_peers", s.MaxPeers, 1, 4096)
	v.intRange("sync.max_flows_per_origin", s.MaxFlowsPerOrigin, 1, 1<<26)
	if s.ResendRate < 64<<10 || s.ResendRate > 1<<30 {
		v.add("sync.resend_rate", "%d is out of range 64KiB..1GiB", int64(s.ResendRate))
	}
	if s.HeartbeatInterval.Duration > 0 && s.PeerTimeout.Duration >= 0 && s.PeerTimeout.Duration <= s.HeartbeatInterval.Duration {
		key := "sync.peer_timeout"
		if !v.inFile(key) && v.inFile("sync.heartbeat_interval") {
			key = "sync.heartbeat_interval"
		}
		v.add(key, "peer_timeout (%s) must be longer than heartbeat_interval (%s); 3 to 5 heartbeats is usual",
			s.PeerTimeout.Duration, s.HeartbeatInterval.Duration)
	}
}

var (
	policyModes        = []string{"allow", "strip", "refuse", "require"}
	policyModesNoStrip = []string{"allow", "refuse", "require"}
)

func (p PeerPolicy) validate(v *validator) {
	for i, h := range p.Helpers {
		if !validHelperName(h) {
			v.addElem("peer_policy.helpers", i, "%q is not a conntrack helper name (1 to 15 of a-z, 0-9, -, _; e.g. \"ftp\", \"sip\")", h)
		}
	}
	v.oneOf("peer_policy.mark", p.Mark, policyModes)
	v.oneOf("peer_policy.labels", p.Labels, policyModes)
	v.oneOf("peer_policy.zone", p.Zone, policyModesNoStrip)
	v.oneOf("peer_policy.nat", p.NAT, policyModesNoStrip)
	v.intRange("peer_policy.timeout_factor", p.TimeoutFactor, 1, 1000)
}

func (f Filter) validate(v *validator) {
	if len(f.Protocols) == 0 {
		v.add("filter.protocols", "empty: nothing would be replicated; list at least one of %s", strings.Join(knownProtocols, ", "))
	}
	tcp := false
	for i, p := range f.Protocols {
		n, ok := flow.ProtoByName(p)
		if !ok {
			v.addElem("filter.protocols", i, "%q is not one of %s", p, strings.Join(knownProtocols, ", "))
			continue
		}
		tcp = tcp || n == flow.ProtoTCP
	}
	for i, a := range f.IgnoreAddresses {
		if _, err := parsePrefix(a); err != nil {
			v.addElem("filter.ignore_addresses", i, "%v", err)
		}
	}
	for i, s := range f.TCPStates {
		if _, ok := tcpStateByName(s); !ok {
			v.addElem("filter.tcp_states", i, "%q is not one of %s", s, strings.Join(knownTCPStates, ", "))
		}
	}
	if tcp && len(f.TCPStates) == 0 {
		v.add("filter.tcp_states", "empty while protocols include tcp: no TCP flow would be replicated (to replicate none, remove tcp from protocols)")
	}
	f.validateExclusions(v)
}

// parseAddrPort parses "IP:port" or "[IPv6]:port" with a literal address
// and a port 1..65535.
func parseAddrPort(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not IP:port or [IPv6]:port", s)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: %q is not an IP address (hostnames are not resolved: write the address)", s, host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: port %q is not a number 1..65535", s, port)
	}
	return netip.AddrPortFrom(a, uint16(n)), nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// familyCompatible reports whether a socket bound to listen can reach peer:
// same family, or listen on the IPv6 wildcard (dual stack).
func familyCompatible(listen, peer netip.Addr) bool {
	return listen.Is4() == peer.Is4() || (listen.Is6() && listen.IsUnspecified())
}

// checkIfName applies the kernel's dev_valid_name rules.
func checkIfName(name string) error {
	switch {
	case len(name) > maxIfName:
		return fmt.Errorf("%q is %d bytes long; an interface name has at most %d", name, len(name), maxIfName)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid interface name", name)
	case strings.ContainsAny(name, "/:") || strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		return fmt.Errorf("%q is not a valid interface name (no '/', ':' or spaces)", name)
	}
	return nil
}

// sections maps each table to its keys, from the toml tags of Config.
var sections = sync.OnceValue(func() map[string][]string {
	m := map[string][]string{}
	t := reflect.TypeFor[Config]()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := f.Tag.Get("toml")
		if name == "" || name == "-" || f.Type.Kind() != reflect.Struct {
			continue
		}
		var keys []string
		for j := 0; j < f.Type.NumField(); j++ {
			if k := f.Type.Field(j).Tag.Get("toml"); k != "" && k != "-" {
				keys = append(keys, k)
			}
		}
		m[name] = keys
	}
	return m
})

func sectionNames() []string {
	var names []string
	t := reflect.TypeFor[Config]()
	for i := 0; i < t.NumField(); i++ {
		if n := t.Field(i).Tag.Get("toml"); n != "" && n != "-" {
			names = append(names, n)
		}
	}
	return names
}

// unknownKeys reports every key in the document that is not a field of
// Config, spelled exactly (the decoder matches field names
// case-insensitively; ctsyncd does not). Keys below an unknown key are not
// reported again.
func unknownKeys(file string, md toml.MetaData, loc *locator) []*Error {
	secs := sections()
	var errs []*Error
	reported := map[string]bool{}
	isKnown := func(k toml.Key) bool {
		keys, ok := secs[k[0]]
		switch len(k) {
		case 1:
			return ok
		case 2:
			return ok && slices.Contains(keys, k[1])
		case 3:
			sub, ok := nestedTables[k[0]+"."+k[1]]
			return ok && slices.Contains(sub, k[2])
		}
		return false
	}
	check := func(k toml.Key) {
		// Report the shortest unknown prefix: for sync.ack.interval
		// that is sync.ack.
		for i := 1; i <= len(k); i++ {
			if !isKnown(k[:i]) {
				k = k[:i]
				break
			}
		}
		if len(k) == 0 || isKnown(k) || reported[k.String()] {
			return
		}
		name := k.String()
		reported[name] = true
		e := errf(file, loc.line(name), name, "%s", unknownMsg(md, k))
		errs = append(errs, e)
	}
	for _, k := range md.Keys() {
		check(k)
	}
	for _, k := range md.Undecoded() {
		check(k)
	}
	return errs
}

// nestedTables are the arrays of tables below a section, with their keys.
var nestedTables = map[string][]string{"sync.link": tomlKeys(reflect.TypeOf(Link{}))}

func tomlKeys(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if tag := strings.Split(t.Field(i).Tag.Get("toml"), ",")[0]; tag != "" && tag != "-" {
			out = append(out, tag)
		}
	}
	return out
}

func unknownMsg(md toml.MetaData, k toml.Key) string {
	secs := sections()
	if len(k) == 1 {
		for _, s := range sectionNames() {
			if strings.EqualFold(s, k[0]) {
				return fmt.Sprintf("unknown table; did you mean [%s]? (keys are case-sensitive)", s)
			}
		}
		if md.Type(k...) == "Hash" {
			return "unknown table; the tables are " + strings.Join(bracketed(sectionNames()), ", ")
		}
		for _, s := range sectionNames() {
			if slices.Contains(secs[s], k[0]) {
				return fmt.Sprintf("unknown key at the top level; did you mean %s.%s (under [%s])?", s, k[0], s)
			}
		}
		return "unknown key at the top level; every key belongs in a table: " + strings.Join(bracketed(sectionNames()), ", ")
	}
	keys, ok := secs[k[0]]
	if !ok {
		return "unknown key" // below a known key that is not a table; the decoder reports those
	}
	if sub, ok := nestedTables[k[0]+"."+k[1]]; ok && len(k) == 3 {
		return fmt.Sprintf("unknown key; [[%s.%s]] has %s", k[0], k[1], strings.Join(sub, ", "))
	}
	if len(k) > 2 {
		return fmt.Sprintf("unknown key: %s.%s is not a table", k[0], k[1])
	}
	if s := closest(k[1], keys); s != "" {
		return fmt.Sprintf("unknown key; did you mean %s?", s)
	}
	for _, s := range sectionNames() {
		if slices.Contains(secs[s], k[1]) {
			return fmt.Sprintf("unknown key in [%s]; %s belongs in [%s]", k[0], k[1], s)
		}
	}
	return fmt.Sprintf("unknown key; [%s] has %s", k[0], strings.Join(keys, ", "))
}

func bracketed(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "[" + n + "]"
	}
	return out
}

// closest returns the candidate that equals s ignoring case or is within
// edit distance 2 of it, or "".
func closest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if strings.EqualFold(s, c) {
			return c
		}
		if d := editDistance(strings.ToLower(s), c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// validHelperName reports whether h can name a conntrack helper
// (NF_CT_HELPER_NAME_LEN is 16 with the NUL).
func validHelperName(h string) bool {
	if h == "" || len(h) > 15 {
		return false
	}
	for _, c := range h {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
