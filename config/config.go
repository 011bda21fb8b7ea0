// Package config loads and validates ctsyncd's TOML configuration
// (/etc/ctsyncd/ctsyncd.toml; configs/ctsyncd.toml is the annotated example).
//
// Load and Parse decode the file over Default, reject unknown keys, and
// validate every value, so that a Config they return can be used as is.
// Every problem is an *Error that names the file, the line and the key,
// printed as
//
//	/etc/ctsyncd/ctsyncd.toml:12: sync.transport: "tcp" is not one of udp, multicast, gossip
//
// and matched by errors.Is(err, ErrInvalid); when a file has several
// problems they are all reported, joined with errors.Join.
//
// What it is not: it does not read the sync key file (package sync does,
// and checks its permissions), resolve group names, look at interfaces or
// open sockets. It checks what can be checked from the text alone.
//
// Concurrency: a Config is plain data with no hidden state; it is safe to
// read from many goroutines and to copy. Parse keeps no state between calls.
// A reload parses a new Config; nothing mutates one in place.
package config

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/ctsyncd/ctsyncd/flow"
)

// Config is the whole configuration. The comment on each field gives its
// default; Default returns a Config with all of them applied.
type Config struct {
	Node    Node    `toml:"node"`
	Control Control `toml:"control"`
	Kernel  Kernel  `toml:"kernel"`
	Sync    Sync    `toml:"sync"`
	Filter  Filter  `toml:"filter"`
	// PeerPolicy is what a peer may put into this node's kernel.
	PeerPolicy PeerPolicy `toml:"peer_policy"`
	Failover   Failover   `toml:"failover"`
	Defer      Defer      `toml:"defer"`
	Metrics    Metrics    `toml:"metrics"`
	Log        Log        `toml:"log"`
	API        API        `toml:"api"`

	// Path is the file the config was loaded from (the name given to
	// Parse); it is not a TOML key.
	Path string `toml:"-"`
}

// Node identifies this node to its peers.
type Node struct {
	// Name of this node in the cluster, in logs and in ctsyncctl status.
	// Default: the hostname. At most 64 bytes, printable, no spaces.
	Name string `toml:"name"`
}

// Control is the local UNIX socket ctsyncctl talks to.
type Control struct {
	// Socket is the path of the control socket.
	// Default "/run/ctsyncd/ctsyncd.sock".
	Socket string `toml:"socket"`
	// Mode is the socket's permission bits as an octal string, at most
	// "0777". Default "0600". See FileMode.
	Mode string `toml:"mode"`
	// Group, if set, is the group (name or numeric gid) the socket is
	// given, so that its members may use ctsyncctl. Default: unset.
	Group string `toml:"group"`
}

// Kernel tunes the conntrack netlink sockets.
type Kernel struct {
	// EventBuffer is the receive buffer of the event socket
	// (SO_RCVBUFFORCE). Bigger survives longer bursts before the kernel
	// drops events (ENOBUFS, which forces a resync). Default 64MiB,
	// 64KiB..1GiB.
	EventBuffer ByteSize `toml:"event_buffer"`
	// ResyncInterval is how often the kernel table is dumped and the
	// internal cache reconciled with it, counted from the last reconcile;
	// a table whose dump takes longer than a tenth of it is dumped every
	// ten dump durations instead. Default 30s; "0s" disables it;
	// otherwise at least 1s.
	ResyncInterval Duration `toml:"resync_interval"`
	// WriteSockets is the number of netlink sockets a commit reads back
	// and updates existing entries through in parallel (creates go out on
	// one: the kernel serializes them). Default 2, 1..16.
	WriteSockets int `toml:"write_sockets"`
	// WriteBatch is the number of messages per sendmsg on a write socket.
	// Default 256, 1..4096.
	WriteBatch int `toml:"write_batch"`
}

// Sync is the replication channel between nodes.
type Sync struct {
	// Transport is "udp" (unicast to each peer; the default), "multicast"
	// (one group on a dedicated link) or "gossip" (clusters of N).
	Transport string `toml:"transport"`
	// Interface is the dedicated sync link. Required for multicast.
	Interface string `toml:"interface"`
	// Listen is this node's address, "IP:port" or "[IPv6]:port" (an IP
	// address, not a hostname). Required unless Disabled.
	Listen string `toml:"listen"`
	// Peers are the other nodes' addresses, same form as Listen. udp: at
	// least one; gossip: seeds to join (empty on the first node);
	// multicast: unused.
	Peers []string `toml:"peers"`
	// Group is the multicast group "IP:port", same family as Listen.
	// Required for multicast; unused otherwise.
	Group string `toml:"group"`
	// KeyFile holds the pre-shared key (64 hex characters). Required
	// unless Insecure or Disabled. Only its path is checked here.
	KeyFile string `toml:"key_file"`
	// Insecure runs without authentication. Default false.
	Insecure bool `toml:"insecure"`
	// Inject writes received flows, their updates and their removals
	// straight into this node's kernel as they arrive, not only at a
	// commit (active-active, and takeover without a commit; see
	// docs/active-active.md). Default false.
	Inject bool `toml:"inject"`
	// Disabled turns replication off (a single node, tests); Listen,
	// Peers and KeyFile are then not required. Default false.
	Disabled bool `toml:"disabled"`
	// MTU is the largest datagram payload sent. Default 1400, 576..65000.
	MTU int `toml:"mtu"`
	// ResendQueue is how many sent messages are kept for retransmission.
	// Default 4096, 16..1048576.
	ResendQueue int `toml:"resend_queue"`
	// AckInterval is how long a receiver waits before acknowledging.
	// Default 50ms, 1ms..10s.
	AckInterval Duration `toml:"ack_interval"`
	// HeartbeatInterval is how often an idle node says it is alive.
	// Default 1s, 10ms..1m.
	HeartbeatInterval Duration `toml:"heartbeat_interval"`
	// PeerTimeout is the silence after which a peer counts as gone.
	// Default 5s; longer than HeartbeatInterval.
	PeerTimeout Duration `toml:"peer_timeout"`
	// MinAge delays a flow's first replication until it has lived this
	// long, so that short-lived flows (DNS, health checks) are never sent,
	// nor their destroys. Bulk transfers and commit are unaffected. Default
	// "0s" (off), at most 1h.
	MinAge Duration `toml:"min_age"`
	// Link lists more dedicated sync links, for redundancy (transport udp
	// only), each a [[sync.link]] table with its interface, listen
	// address and the same peers in the same order as interface, listen
	// and peers above, which are the first link. Every datagram is sent on
	// every link, so that losing a link loses nothing. Default: none.
	Link []Link `toml:"link"`
	// Expectations replicates conntrack expectations (what the ftp, sip
	// and tftp helpers announce) and commits them on failover, after
	// their master flows. Default true.
	Expectations bool `toml:"expectations"`
	// ExpectationHelpers limits the expectations replicated, and accepted
	// from peers, to those of the named helpers ("ftp", "sip", "tftp"), and
	// lets peers' flows carry these helpers (added to PeerPolicy.Helpers).
	// Empty (the default): every helper is sent; peers' expectations are
	// accepted for the helpers PeerPolicy.Helpers lists.
	ExpectationHelpers []string `toml:"expectation_helpers"`
	// MaxBufferBytes bounds the memory held per peer for its messages
	// received ahead of a gap. Default 16MiB, 64KiB..4GiB.
	MaxBufferBytes ByteSize `toml:"max_buffer_bytes"`
	// MaxPeers bounds the peers accepted (and the origins kept in the
	// external cache). Default 64, 1..4096.
	MaxPeers int `toml:"max_peers"`
	// MaxFlowsPerOrigin bounds the flows kept per peer; new ones beyond
	// it are refused and counted. Default 2097152, 1..67108864.
	MaxFlowsPerOrigin int `toml:"max_flows_per_origin"`
	// ResendRate bounds the bytes per second resent to one peer on its
	// NACKs. Default 8MiB, 64KiB..1GiB.
	ResendRate ByteSize `toml:"resend_rate"`
	// DigestInterval is how often each node sends its peers a digest of
	// its table (bucketed hashes over flow keys and states), so that a
	// peer whose copy diverged without anyone noticing repairs the
	// buckets that differ. Default 10s; "0s" disables; otherwise 1s..1h.
	DigestInterval Duration `toml:"digest_interval"`
}

// Link is one more dedicated sync link (see Sync.Link).
type Link struct {
	// Interface is the link's network interface.
	Interface string `toml:"interface"`
	// Listen is this node's address on the link, "IP:port".
	Listen string `toml:"listen"`
	// Peers are the peers' addresses on the link, in the order of
	// sync.peers.
	Peers []string `toml:"peers"`
}

// Metrics is the HTTP listener for Prometheus and health checks.
type Metrics struct {
	// Listen is the "IP:port" ("[IPv6]:port") serving /metrics, /healthz
	// and /readyz over plain HTTP. Default: unset (no listener). Keep it
	// on a management address: the metrics name peers and addresses.
	Listen string `toml:"listen"`
}

// PeerPolicy is the receive policy for peers' flows (package peerpolicy):
// what a peer may put into this node's kernel. The node's own [filter]
// applies to peers' flows too.
type PeerPolicy struct {
	// Helpers are the conntrack helpers a peer's flow may carry; a flow
	// with another helper is refused. Default none: list the helpers this
	// node itself uses, e.g. ["ftp", "sip"].
	Helpers []string `toml:"helpers"`
	// Mark and Labels are "allow" (default), "strip" (cleared), "refuse"
	// (a flow carrying one is refused) or "require" (a flow without one
	// is refused).
	Mark   string `toml:"mark"`
	Labels string `toml:"labels"`
	// Zone and NAT are "allow" (default), "refuse" or "require".
	Zone string `toml:"zone"`
	NAT  string `toml:"nat"`
	// TimeoutFactor multiplies the per-protocol and per-state caps on a
	// peer's flow's timeout (Linux's default timeouts). Default 1, 1..1000.
	TimeoutFactor int `toml:"timeout_factor"`
	// KeepFixedTimeout keeps the FIXED_TIMEOUT status bit of peers'
	// flows. Default false: cleared.
	KeepFixedTimeout bool `toml:"keep_fixed_timeout"`
}

// Filter selects the flows that are replicated.
type Filter struct {
	// Protocols are the layer 4 protocols replicated, any of tcp, udp,
	// icmp, icmpv6, sctp, dccp, gre, udplite. Default all but udplite.
	Protocols []string `toml:"protocols"`
	// IgnoreAddresses are CIDRs or plain addresses (IPv4 or IPv6); a flow
	// with either original address in one of them is not replicated.
	// Default ["127.0.0.0/8", "::1/128"].
	IgnoreAddresses []string `toml:"ignore_addresses"`
	// TCPStates are the TCP states whose flows are replicated
	// (case-insensitive): syn_sent, syn_recv, established, fin_wait,
	// close_wait, last_ack, time_wait, close, syn_sent2. Default the
	// first seven.
	TCPStates []string `toml:"tcp_states"`
	// IgnoreOwnAddresses also ignores flows to or from this node's own
	// addresses. Default true; see IgnoreOwn.
	IgnoreOwnAddresses *bool `toml:"ignore_own_addresses"`
	// IgnorePorts are original destination ports of flows not replicated,
	// each a number or a range "FROM-TO" (inclusive), e.g. [53, "8000-8100"];
	// they apply to TCP, UDP, UDP-Lite, SCTP and DCCP. Default [].
	IgnorePorts []PortRange `toml:"ignore_ports"`
	// IgnoreMarks are "VALUE" or "VALUE/MASK" (decimal or 0x hex): a flow
	// whose mark & MASK equals VALUE is not replicated (no mask: all bits).
	// Default [].
	IgnoreMarks []string `toml:"ignore_marks"`
	// IgnoreZones are conntrack zones (0..65535) whose flows are not
	// replicated. Default [].
	IgnoreZones []int `toml:"ignore_zones"`
	// IgnoreHelpers are conntrack helper names ("ftp", "sip", "tftp", ...)
	// whose flows are not replicated. Default [].
	IgnoreHelpers []string `toml:"ignore_helpers"`
}

// Failover tunes commit and purge.
type Failover struct {
	// PurgeTimeout caps the kernel timeout of flows this node no longer
	// owns after it loses mastership: timeout = min(current, this).
	// Default 60s, at least 1s.
	PurgeTimeout Duration `toml:"purge_timeout"`
	// CommitTimeout bounds a commit of the external cache into the
	// kernel. Default 120s (1M flows took 6-17 s on a loaded 2-core
	// machine), at least 1s.
	CommitTimeout Duration `toml:"commit_timeout"`
	// MinTimeout is the floor for the timeout of committed flows, so that
	// a flow that was about to expire on the old master survives the
	// failover. Default 30s; "0s" for no floor.
	MinTimeout Duration `toml:"min_timeout"`
	// ReadyFile, if set, is an absolute path written when this node is
	// in sync and removed when it is not, for keepalived's track_file.
	ReadyFile string `toml:"ready_file"`
	// RulesetInterval is how often this node digests its netfilter
	// ruleset (`nft -j list ruleset`, counters and handles left out) to
	// compare it with its peers'; it also does at start and on every
	// ruleset change. "0s" turns the comparison off. Default 30s.
	RulesetInterval Duration `toml:"ruleset_interval"`
	// RequireSameRuleset keeps this node unready (ready_file, /readyz)
	// while its ruleset differs from a live peer's. Default false: a
	// difference is a warning in status and the log.
	RequireSameRuleset bool `toml:"require_same_ruleset"`
	// RulesetIgnoreTables are tables ("FAMILY NAME", e.g. "inet local")
	// left out of the comparison: rules that are meant to differ per
	// node. Default [].
	RulesetIgnoreTables []string `toml:"ruleset_ignore_tables"`
}

// Defer holds the first packet of each new flow (sent to an NFQUEUE by
// the operator's ruleset) until every live peer has acknowledged the flow,
// for two firewalls that both forward (docs/active-active.md).
type Defer struct {
	// Enabled turns first-packet defer on. It needs sync.inject = true
	// (on every node). Default false.
	Enabled bool `toml:"enabled"`
	// Queue is the NFQUEUE number the ruleset sends packets to
	// (--queue-num). Default 0, 0..65535.
	Queue int `toml:"queue"`
	// Timeout is how long a packet is held at most; it is released
	// (accepted, never dropped) then. Default 20ms, 1ms..1s.
	Timeout Duration `toml:"defer_timeout"`
	// MaxPending is how many packets may be held at once; beyond it new
	// ones are released at once. Default 4096, 1..1048576.
	MaxPending int `toml:"max_pending"`
}

// Log configures the log/slog handler on stderr.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `toml:"level"`
	// Format is text or json. Default text.
	Format string `toml:"format"`
	// Flows, if set, is a file (absolute path) that gets one line for each
	// destroyed flow with its counters (packets and bytes need
	// net.netfilter.nf_conntrack_acct=1, start and stop times
	// nf_conntrack_timestamp=1), for accounting. Reopened on SIGHUP, for
	// logrotate. Default: unset (off).
	Flows string `toml:"flows"`
	// FlowsFormat is "extended" (the time, then the flow as `conntrack -E -o
	// extended` prints a DESTROY event) or "json" (one object a line).
	// Default "extended".
	FlowsFormat string `toml:"flows_format"`
}

// DefaultSocket is the default path of the control socket, also
// ctsyncctl's default for --socket.
const DefaultSocket = "/run/ctsyncd/ctsyncd.sock"

// Defaults; Default applies them (and copies the slices).
const (
	defaultMode              = "0600"
	defaultEventBuffer       = 64 << 20
	defaultWriteSockets      = 2
	defaultWriteBatch        = 256
	defaultTransport         = "udp"
	defaultMTU               = 1400
	defaultResendQueue       = 4096
	defaultLogLevel          = "info"
	defaultLogFormat         = "text"
	defaultResyncInterval    = "30s"
	defaultAckInterval       = "50ms"
	defaultHeartbeatInterval = "1s"
	defaultPeerTimeout       = "5s"
	defaultDigestInterval    = "10s"
	defaultPurgeTimeout      = "60s"
	defaultCommitTimeout     = "120s"
	defaultMinTimeout        = "30s"
	defaultDeferTimeout      = "20ms"
	defaultDeferMaxPending   = 4096
	defaultMaxBufferBytes    = 16 << 20
	defaultMaxPeers          = 64
	defaultMaxFlowsPerOrigin = 2 << 20
	defaultResendRate        = 8 << 20
	defaultPolicyMode        = "allow"
	defaultTimeoutFactor     = 1
)

var (
	defaultProtocols       = []string{"tcp", "udp", "icmp", "icmpv6", "sctp", "dccp", "gre"}
	defaultIgnoreAddresses = []string{"127.0.0.0/8", "::1/128"}
	defaultTCPStates       = []string{"syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack", "time_wait"}
)

func mustDuration(s string) Duration {
	var d Duration
	if err := d.UnmarshalText([]byte(s)); err != nil {
		panic(err)
	}
	return d
}

// Default returns a Config with every default applied. Node.Name is the
// hostname (empty if it cannot be read). Sync is enabled, so Listen, Peers
// and KeyFile still have to be set for it to validate.
func Default() *Config {
	host, _ := os.Hostname()
	own := true
	return &Config{
		Node:    Node{Name: host},
		Control: Control{Socket: DefaultSocket, Mode: defaultMode},
		Kernel: Kernel{
			EventBuffer:    defaultEventBuffer,
			ResyncInterval: mustDuration(defaultResyncInterval),
			WriteSockets:   defaultWriteSockets,
			WriteBatch:     defaultWriteBatch,
		},
		Sync: Sync{
			Transport:          defaultTransport,
			MTU:                defaultMTU,
			ResendQueue:        defaultResendQueue,
			AckInterval:        mustDuration(defaultAckInterval),
			HeartbeatInterval:  mustDuration(defaultHeartbeatInterval),
			PeerTimeout:        mustDuration(defaultPeerTimeout),
			DigestInterval:     mustDuration(defaultDigestInterval),
			Expectations:       true,
			ExpectationHelpers: []string{},
			MaxBufferBytes:     defaultMaxBufferBytes,
			MaxPeers:           defaultMaxPeers,
			MaxFlowsPerOrigin:  defaultMaxFlowsPerOrigin,
			ResendRate:         defaultResendRate,
		},
		PeerPolicy: PeerPolicy{
			Helpers: []string{},
			Mark:    defaultPolicyMode, Labels: defaultPolicyMode, Zone: defaultPolicyMode, NAT: defaultPolicyMode,
			TimeoutFactor: defaultTimeoutFactor,
		},
		Filter: Filter{
			Protocols:          append([]string(nil), defaultProtocols...),
			IgnoreAddresses:    append([]string(nil), defaultIgnoreAddresses...),
			TCPStates:          append([]string(nil), defaultTCPStates...),
			IgnoreOwnAddresses: &own,
			IgnorePorts:        []PortRange{},
			IgnoreMarks:        []string{},
			IgnoreZones:        []int{},
			IgnoreHelpers:      []string{},
		},
		Failover: Failover{
			PurgeTimeout:  mustDuration(defaultPurgeTimeout),
			CommitTimeout: mustDuration(defaultCommitTimeout),
			MinTimeout:    mustDuration(defaultMinTimeout),

			RulesetInterval:     mustDuration("30s"),
			RulesetIgnoreTables: []string{},
		},
		Defer: Defer{
			Timeout:    mustDuration(defaultDeferTimeout),
			MaxPending: defaultDeferMaxPending,
		},
		Log: Log{Level: defaultLogLevel, Format: defaultLogFormat, FlowsFormat: "extended"},
	}
}

// Load reads the file at path and parses it with Parse. Errors reading the
// file are returned as they are (an *os.PathError); configuration problems
// as described in Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data over Default, rejects unknown keys and validates the
// result. Decoding over the defaults keeps "absent" apart from "zero": an
// absent key keeps its default, while resync_interval = "0s" disables the
// resync and mtu = 0 is an error. name is the file name used in errors and stored in Path. The
// error is an *Error, or several joined with errors.Join; either way it
// matches ErrInvalid.
func Parse(name string, data []byte) (*Config, error) {
	c := Default()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(c)
	if err != nil {
		return nil, fromDecodeError(name, data, err, len(md.Keys()) == 0)
	}
	loc := locate(string(data))
	if errs := unknownKeys(name, md, loc); len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	c.Path = name
	if err := c.validate(&md, loc); err != nil {
		return nil, err
	}
	return c, nil
}

// FileMode returns Mode as permission bits, or 0600 if Mode does not parse
// (Validate reports that).
func (c Control) FileMode() os.FileMode {
	m, err := parseMode(c.Mode)
	if err != nil {
		return 0o600
	}
	return m
}

func parseMode(s string) (os.FileMode, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	if t == "" {
		return 0, fmt.Errorf("%q is not an octal mode such as \"0600\"", s)
	}
	v, err := strconv.ParseUint(t, 8, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not an octal mode such as \"0600\"", s)
	}
	if v > 0o777 {
		return 0, fmt.Errorf("%q has bits beyond 0777 (setuid, setgid and sticky mean nothing on a socket)", s)
	}
	return os.FileMode(v), nil
}

// IgnoreOwn reports whether flows to or from this node's own addresses are
// ignored (IgnoreOwnAddresses, default true).
func (f Filter) IgnoreOwn() bool {
	return f.IgnoreOwnAddresses == nil || *f.IgnoreOwnAddresses
}

// ProtocolNumbers returns the IP protocol numbers of Protocols, without
// duplicates, in the order given.
func (f Filter) ProtocolNumbers() ([]uint8, error) {
	out := make([]uint8, 0, len(f.Protocols))
	seen := map[uint8]bool{}
	for _, name := range f.Protocols {
		p, ok := flow.ProtoByName(name)
		if !ok {
			return nil, errf("", 0, "filter.protocols", "%q is not one of %s", name, strings.Join(knownProtocols, ", "))
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

var knownProtocols = []string{"tcp", "udp", "icmp", "icmpv6", "sctp", "dccp", "gre", "udplite"}

// knownTCPStates are the names accepted in tcp_states; flow.TCPStateByName
// also knows "none", which no flow in the table has.
var knownTCPStates = []string{"syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack", "time_wait", "close", "syn_sent2"}

func tcpStateByName(name string) (uint8, bool) {
	for _, k := range knownTCPStates {
		if strings.EqualFold(k, name) {
			return flow.TCPStateByName(k)
		}
	}
	return 0, false
}

// TCPStateNumbers returns the conntrack numbers (TCP_CONNTRACK_*) of
// TCPStates, without duplicates, in the order given.
func (f Filter) TCPStateNumbers() ([]uint8, error) {
	out := make([]uint8, 0, len(f.TCPStates))
	seen := map[uint8]bool{}
	for _, name := range f.TCPStates {
		s, ok := tcpStateByName(name)
		if !ok {
			return nil, errf("", 0, "filter.tcp_states", "%q is not one of %s", name, strings.Join(knownTCPStates, ", "))
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out, nil
}

// Prefixes returns IgnoreAddresses as prefixes; a plain address becomes a
// /32 or /128.
func (f Filter) Prefixes() ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(f.IgnoreAddresses))
	for _, s := range f.IgnoreAddresses {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, errf("", 0, "filter.ignore_addresses", "%v", err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
		}
		if m := p.Masked(); m != p {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set: write %q", s, m.String())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q has a zone; zones are not allowed here", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
