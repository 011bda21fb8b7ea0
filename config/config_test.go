package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/ctsyncd/ctsyncd/flow"
)

const file = "/etc/ctsyncd/ctsyncd.toml"

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	c, err := Parse(file, []byte(src))
	if err != nil {
		t.Fatalf("Parse:\n%s\nerror: %v", src, err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate after Parse: %v", err)
	}
	return c
}

func TestExampleConfig(t *testing.T) {
	c, err := Load("../configs/ctsyncd.toml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Path != "../configs/ctsyncd.toml" {
		t.Errorf("Path = %q", c.Path)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if c.Sync.Transport != "udp" || c.Sync.Interface != "sync0" || c.Sync.Listen != "10.200.0.1:3780" ||
		!reflect.DeepEqual(c.Sync.Peers, []string{"10.200.0.2:3780"}) || c.Sync.KeyFile == "" {
		t.Errorf("sync = %+v", c.Sync)
	}
	if c.Failover.ReadyFile != "/run/ctsyncd/ready" {
		t.Errorf("failover.ready_file = %q, want the file configs/keepalived.conf tracks", c.Failover.ReadyFile)
	}
	// Everything else in the example is a default: the example documents them.
	d := Default()
	d.Node.Name = c.Node.Name
	d.Sync.Interface, d.Sync.Listen, d.Sync.Peers, d.Sync.KeyFile = c.Sync.Interface, c.Sync.Listen, c.Sync.Peers, c.Sync.KeyFile
	d.Failover.ReadyFile = c.Failover.ReadyFile
	d.Path = c.Path
	if !reflect.DeepEqual(c, d) {
		t.Errorf("example differs from the defaults:\n got %+v\nwant %+v", c, d)
	}
	// Every key of Config appears in the example, set or commented out.
	data, err := os.ReadFile("../configs/ctsyncd.toml")
	if err != nil {
		t.Fatal(err)
	}
	for sec, keys := range sections() {
		if !strings.Contains(string(data), "["+sec+"]") {
			t.Errorf("example lacks [%s]", sec)
		}
		for _, k := range keys {
			if !strings.Contains(string(data), "\n"+k+" = ") && !strings.Contains(string(data), "# "+k+" = ") &&
				!strings.Contains(string(data), "# [["+sec+"."+k+"]]") {
				t.Errorf("example lacks %s.%s", sec, k)
			}
		}
	}
}

func TestMinimalPerTransport(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want func(*Config) bool
	}{
		{"udp", `
[sync]
listen = "10.200.0.1:3780"
peers = ["10.200.0.2:3780"]
key_file = "/etc/ctsyncd/sync.key"
`, func(c *Config) bool { return c.Sync.Transport == "udp" }},
		{"udp-ipv6", `
[sync]
listen = "[fd00:200::1]:3780"
peers = ["[fd00:200::2]:3780", "[fd00:200::3]:3780"]
key_file = "/etc/ctsyncd/sync.key"
`, func(c *Config) bool { return len(c.Sync.Peers) == 2 }},
		{"udp-dual-stack-wildcard", `
[sync]
listen = "[::]:3780"
peers = ["10.200.0.2:3780", "[fd00::2]:3780"]
insecure = true
`, func(c *Config) bool { return c.Sync.Insecure }},
		{"multicast", `
[sync]
transport = "multicast"
interface = "sync0"
listen = "10.200.0.1:3780"
group = "225.0.0.50:3780"
key_file = "/etc/ctsyncd/sync.key"
`, func(c *Config) bool { return c.Sync.Group == "225.0.0.50:3780" && len(c.Sync.Peers) == 0 }},
		{"multicast-ipv6", `
[sync]
transport = "multicast"
interface = "sync0"
listen = "[fe80::1%sync0]:3780"
group = "[ff02::1:3780]:3780"
key_file = "/etc/ctsyncd/sync.key"
`, func(c *Config) bool { return c.Sync.Transport == "multicast" }},
		{"gossip-first-node", `
[sync]
transport = "gossip"
listen = "10.200.0.1:3780"
key_file = "/etc/ctsyncd/sync.key"
`, func(c *Config) bool { return c.Sync.Transport == "gossip" && len(c.Sync.Peers) == 0 }},
		{"gossip-seeds", `
[sync]
transport = "gossip"
listen = "10.200.0.3:3780"
peers = ["10.200.0.1:3780", "10.200.0.2:3780"]
key_file = "/etc/ctsyncd/sync.key"
`, func(c *Config) bool { return len(c.Sync.Peers) == 2 }},
		{"disabled", `
[sync]
disabled = true
`, func(c *Config) bool { return c.Sync.Disabled }},
		// The minimal configuration operators rely on (docs/ARCHITECTURE.md,
		// "Operator contracts") must be accepted: group is set but unused
		// with udp.
		{"design-contract", `
[node]
name = "fw-a"

[control]
socket = "/run/ctsyncd/ctsyncd.sock"

[sync]
transport = "udp"
interface = "sync0"
listen = "10.200.0.1:3780"
peers = ["10.200.0.2:3780"]
group = "225.0.0.50:3780"
key_file = "/etc/ctsyncd/sync.key"
# insecure = false
# inject = false

[filter]
protocols = ["tcp", "udp", "icmp", "icmpv6", "sctp", "dccp"]
ignore_addresses = ["127.0.0.0/8", "::1"]
tcp_states = ["established", "syn_sent", "syn_recv", "fin_wait", "close_wait", "last_ack", "time_wait"]
`, func(c *Config) bool { return c.Node.Name == "fw-a" && len(c.Filter.Protocols) == 6 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.src)
			if !tt.want(c) {
				t.Errorf("unexpected config: %+v", c)
			}
			if c.Path != file {
				t.Errorf("Path = %q, want %q", c.Path, file)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c := mustParse(t, "[sync]\ndisabled = true\n")
	host, _ := os.Hostname()
	checks := []struct {
		name      string
		got, want any
	}{
		{"node.name", c.Node.Name, host},
		{"control.socket", c.Control.Socket, "/run/ctsyncd/ctsyncd.sock"},
		{"control.mode", c.Control.FileMode(), os.FileMode(0o600)},
		{"control.group", c.Control.Group, ""},
		{"kernel.event_buffer", c.Kernel.EventBuffer, ByteSize(64 << 20)},
		{"kernel.resync_interval", c.Kernel.ResyncInterval.Duration, 30 * time.Second},
		{"kernel.write_sockets", c.Kernel.WriteSockets, 2},
		{"kernel.write_batch", c.Kernel.WriteBatch, 256},
		{"sync.transport", c.Sync.Transport, "udp"},
		{"sync.mtu", c.Sync.MTU, 1400},
		{"sync.resend_queue", c.Sync.ResendQueue, 4096},
		{"sync.ack_interval", c.Sync.AckInterval.Duration, 50 * time.Millisecond},
		{"sync.heartbeat_interval", c.Sync.HeartbeatInterval.Duration, time.Second},
		{"sync.peer_timeout", c.Sync.PeerTimeout.Duration, 5 * time.Second},
		{"sync.expectations", c.Sync.Expectations, true},
		{"sync.expectation_helpers", c.Sync.ExpectationHelpers, []string{}},
		{"sync.max_buffer_bytes", c.Sync.MaxBufferBytes, ByteSize(16 << 20)},
		{"sync.max_peers", c.Sync.MaxPeers, 64},
		{"sync.max_flows_per_origin", c.Sync.MaxFlowsPerOrigin, 2 << 20},
		{"sync.resend_rate", c.Sync.ResendRate, ByteSize(8 << 20)},
		{"peer_policy.helpers", c.PeerPolicy.Helpers, []string{}},
		{"peer_policy.mark", c.PeerPolicy.Mark, "allow"},
		{"peer_policy.labels", c.PeerPolicy.Labels, "allow"},
		{"peer_policy.zone", c.PeerPolicy.Zone, "allow"},
		{"peer_policy.nat", c.PeerPolicy.NAT, "allow"},
		{"peer_policy.timeout_factor", c.PeerPolicy.TimeoutFactor, 1},
		{"peer_policy.keep_fixed_timeout", c.PeerPolicy.KeepFixedTimeout, false},
		{"filter.protocols", c.Filter.Protocols, []string{"tcp", "udp", "icmp", "icmpv6", "sctp", "dccp", "gre"}},
		{"filter.ignore_addresses", c.Filter.IgnoreAddresses, []string{"127.0.0.0/8", "::1/128"}},
		{"filter.tcp_states", c.Filter.TCPStates, []string{"syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack", "time_wait"}},
		{"filter.ignore_own_addresses", c.Filter.IgnoreOwn(), true},
		{"failover.purge_timeout", c.Failover.PurgeTimeout.Duration, 60 * time.Second},
		{"failover.commit_timeout", c.Failover.CommitTimeout.Duration, 120 * time.Second},
		{"failover.min_timeout", c.Failover.MinTimeout.Duration, 30 * time.Second},
		{"failover.ready_file", c.Failover.ReadyFile, ""},
		{"defer.enabled", c.Defer.Enabled, false},
		{"defer.queue", c.Defer.Queue, 0},
		{"defer.defer_timeout", c.Defer.Timeout.Duration, 20 * time.Millisecond},
		{"defer.max_pending", c.Defer.MaxPending, 4096},
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "text"},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}

	// Default itself: the same values, sync enabled, and independent slices.
	d := Default()
	if d.Sync.Disabled {
		t.Error("Default().Sync.Disabled = true")
	}
	d.Filter.Protocols[0] = "changed"
	*d.Filter.IgnoreOwnAddresses = false
	if e := Default(); e.Filter.Protocols[0] != "tcp" || !e.Filter.IgnoreOwn() {
		t.Error("Default shares slices or pointers between calls")
	}
	// Not enabled sync without listen, peers and key: Default alone is incomplete.
	err := Default().Validate()
	for _, key := range []string{"sync.listen", "sync.peers", "sync.key_file"} {
		if err == nil || !strings.Contains(err.Error(), key+": required") && !strings.Contains(err.Error(), key+": transport") {
			t.Errorf("Default().Validate() = %v, want a problem with %s", err, key)
		}
	}
}

// Explicit zero values are not replaced by defaults.
func TestExplicitValuesOverDefaults(t *testing.T) {
	c := mustParse(t, `
[kernel]
resync_interval = "0s"
event_buffer = 8388608
[sync]
disabled = true
[filter]
ignore_addresses = []
ignore_own_addresses = false
protocols = ["TCP", "udp", "tcp"]
tcp_states = ["ESTABLISHED", "close", "syn_sent2"]
[failover]
min_timeout = "0s"
[control]
mode = "0660"
group = "990"
`)
	if c.Control.FileMode() != 0o660 || c.Control.Group != "990" {
		t.Errorf("control = %+v", c.Control)
	}
	if c.Kernel.ResyncInterval.Duration != 0 || c.Failover.MinTimeout.Duration != 0 {
		t.Errorf("explicit 0s replaced: resync %v, min %v", c.Kernel.ResyncInterval, c.Failover.MinTimeout)
	}
	if c.Kernel.EventBuffer != 8<<20 {
		t.Errorf("event_buffer = %d", c.Kernel.EventBuffer)
	}
	if len(c.Filter.IgnoreAddresses) != 0 || c.Filter.IgnoreOwn() {
		t.Errorf("filter = %+v", c.Filter)
	}
	if p, err := c.Filter.ProtocolNumbers(); err != nil || !reflect.DeepEqual(p, []uint8{flow.ProtoTCP, flow.ProtoUDP}) {
		t.Errorf("ProtocolNumbers = %v, %v", p, err)
	}
	if s, err := c.Filter.TCPStateNumbers(); err != nil || !reflect.DeepEqual(s, []uint8{flow.TCPEstablished, flow.TCPClose, flow.TCPSynSent2}) {
		t.Errorf("TCPStateNumbers = %v, %v", s, err)
	}

	for _, src := range []string{
		"[sync]\ndisabled = true\nmtu = 0\n",
		"[sync]\ndisabled = true\n[kernel]\nwrite_sockets = 0\n",
		"[node]\nname = \"\"\n[sync]\ndisabled = true\n",
	} {
		if _, err := Parse(file, []byte(src)); err == nil {
			t.Errorf("explicit zero accepted:\n%s", src)
		}
	}
}

// base is a valid [sync] table of four lines; fixtures append to it so that
// their line numbers start at 5.
const base = `[sync]
listen = "10.200.0.1:3780"
peers = ["10.200.0.2:3780"]
key_file = "/etc/ctsyncd/sync.key"
`

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		line int    // expected line; 0: none
		key  string // expected key; "": none
		msg  string // substring of the message
	}{
		// Syntax errors: the decoder's message and line.
		{"syntax-value", base + "[kernel]\nwrite_batch = 25 6\n", 6, "kernel.write_batch", "expected a top-level item to end"},
		{"syntax-unterminated-string", "[sync]\nlisten = \"10.200.0.1:3780\ndisabled = true\n", 2, "sync.listen", "strings cannot contain newlines"},
		{"syntax-table-header", "[node]\nname = \"a\"\n[sync\n", 3, "", "to end table name"},
		{"syntax-duplicate-key", base + "\nlisten = \"10.200.0.1:3781\"\n", 6, "", "already been defined"},
		{"syntax-duplicate-table", base + "[log]\n[sync]\n", 6, "", "already been defined"},

		// Wrong types: the decoder finds them, the key and line are kept.
		{"type-peers-string", "[sync]\nlisten = \"10.200.0.1:3780\"\npeers = \"10.200.0.2:3780\"\n", 3, "sync.peers", "want an array, got a string"},
		{"type-mtu-string", base + "mtu = \"big\"\n", 5, "sync.mtu", "want an integer, got a string"},
		{"type-mtu-float", base + "mtu = 1400.5\n", 5, "sync.mtu", "want an integer, got a float"},
		{"type-bool", base + "insecure = \"yes\"\n", 5, "sync.insecure", "want a boolean, got a string"},
		{"type-peer-element", "[sync]\npeers = [\"10.200.0.2:3780\", 3780]\n", 2, "sync.peers", "want a string, got an integer"},
		{"type-mode-integer", base + "[control]\nmode = 384\n", 6, "control.mode", `quoted octal string`},
		{"type-table", "sync = 1\n", 1, "sync", "want a table, got an integer"},
		{"type-array-of-tables", "[[node]]\nname = \"a\"\n", 1, "node", "want a table"},
		{"type-duration-number", base + "ack_interval = 50\n", 5, "sync.ack_interval", `"50" has no unit`},
		{"type-duration-bad", base + "peer_timeout = \"5 seconds\"\n", 5, "sync.peer_timeout", `invalid duration "5 seconds"`},
		{"type-duration-array", base + "peer_timeout = [5]\n", 5, "sync.peer_timeout", "want a string, got an array"},
		{"type-size-unit", base + "[kernel]\nevent_buffer = \"64MBit\"\n", 6, "kernel.event_buffer", `unknown unit "MBit"`},
		{"type-size-float", base + "[kernel]\nevent_buffer = 1.5\n", 6, "kernel.event_buffer", "got a float"},
		{"type-size-negative", base + "[kernel]\nevent_buffer = -1\n", 6, "kernel.event_buffer", "negative"},
		{"type-int-overflow", base + "mtu = 99999999999999999999\n", 5, "sync.mtu", "out of range"},

		// Unknown keys: found by the scanner.
		{"unknown-in-section", base + "key_fille = \"x\"\n", 5, "sync.key_fille", "did you mean key_file?"},
		{"unknown-top-level", "debug = true\n" + base, 1, "debug", "unknown key at the top level"},
		{"unknown-top-level-misplaced", "transport = \"udp\"\n" + base, 1, "transport", "did you mean sync.transport"},
		{"unknown-table", base + "\n[prometheus]\nlisten = \":9100\"\n", 6, "prometheus", "unknown table"},
		{"metrics-listen-host", base + "\n[metrics]\nlisten = \":9100\"\n", 7, "metrics.listen", "is not an IP address"},
		{"digest-interval-short", base + "digest_interval = \"100ms\"\n", 5, "sync.digest_interval", "too short"},
		{"unknown-case", base + "[Log]\nlevel = \"debug\"\n", 5, "Log", "did you mean [log]?"},
		{"unknown-key-case", base + "MTU = 1500\n", 5, "sync.MTU", "did you mean mtu?"},
		{"unknown-wrong-section", base + "purge_timeout = \"10s\"\n", 5, "sync.purge_timeout", "belongs in [failover]"},
		{"unknown-dotted", base + "ack.interval = \"1s\"\n", 5, "sync.ack", "unknown key; [sync] has"},
		{"unknown-dotted-top", "failover.purge = \"1s\"\n" + base, 1, "failover.purge", "unknown key; [failover] has purge_timeout"},
		{"unknown-quoted", base + "\"key file\" = \"x\"\n", 5, `sync."key file"`, "unknown key"},
		{"unknown-inline-table", base + "\n[node]\n\n\ncontrol = 1\n", 9, "node.control", "unknown key"},

		// [defer]
		{"defer-needs-inject", base + "[defer]\nenabled = true\n", 6, "defer.enabled", "needs sync.inject = true"},
		{"defer-queue-range", base + "inject = true\n[defer]\nenabled = true\nqueue = 70000\n", 8, "defer.queue", "out of range 0..65535"},
		{"defer-timeout-short", base + "inject = true\n[defer]\nenabled = true\ndefer_timeout = \"100us\"\n", 8, "defer.defer_timeout", "too short"},
		{"defer-timeout-long", base + "[defer]\ndefer_timeout = \"2s\"\n", 6, "defer.defer_timeout", "too long"},
		{"defer-max-pending", base + "[defer]\nmax_pending = 0\n", 6, "defer.max_pending", "out of range"},
		{"unknown-in-inline", "node = { name = \"a\", nick = \"b\" }\n" + base, 1, "node.nick", "unknown key"},
		{"unknown-after-multiline", base + "# peers = [\"x\"]\ninterface = \"\"\"\nsync0\nbogus = 1\n\"\"\"\nbogus = 2\n", 10, "sync.bogus", "unknown key"},
		{"unknown-after-array", "[sync]\npeers = [\n  \"10.200.0.2:3780\", # a comment ]\n  \"10.200.0.3:3780\",\n]\nbogus = 2\n", 6, "sync.bogus", "unknown key"},

		// [node], [control], [kernel]
		{"node-name-empty", "[node]\nname = \"\"\n" + base, 2, "node.name", "must not be empty"},
		{"node-name-space", "[node]\nname = \"fw a\"\n" + base, 2, "node.name", "spaces"},
		{"socket-empty", base + "[control]\nsocket = \"\"\n", 6, "control.socket", "must not be empty"},
		{"socket-too-long", base + "[control]\nsocket = \"/" + strings.Repeat("x", 110) + "\"\n", 6, "control.socket", "at most 107"},
		{"mode-not-octal", base + "[control]\nmode = \"0999\"\n", 6, "control.mode", "not an octal mode"},
		{"mode-high-bits", base + "[control]\nmode = \"01777\"\n", 6, "control.mode", "bits beyond 0777"},
		{"group-bad", base + "[control]\ngroup = \"wheel staff\"\n", 6, "control.group", "not a group name"},
		{"event-buffer-small", base + "[kernel]\nevent_buffer = \"4KiB\"\n", 6, "kernel.event_buffer", "4KiB (4096 bytes) is out of range 64KiB..1GiB"},
		{"event-buffer-large", base + "[kernel]\nevent_buffer = \"2G\"\n", 6, "kernel.event_buffer", "out of range"},
		{"resync-short", base + "[kernel]\nresync_interval = \"500ms\"\n", 6, "kernel.resync_interval", `"0s" disables`},
		{"resync-negative", base + "[kernel]\nresync_interval = \"-30s\"\n", 6, "kernel.resync_interval", "negative duration"},
		{"write-sockets", base + "[kernel]\nwrite_sockets = 17\n", 6, "kernel.write_sockets", "17 is out of range 1..16"},
		{"write-batch", base + "[kernel]\nwrite_batch = 0\n", 6, "kernel.write_batch", "0 is out of range 1..4096"},

		// [sync]
		{"transport", "[sync]\ntransport = \"tcp\"\nlisten = \"10.200.0.1:3780\"\ninsecure = true\n", 2, "sync.transport", `"tcp" is not one of udp, multicast, gossip`},
		{"listen-hostname", "[sync]\nlisten = \"fw-a:3780\"\npeers = [\"10.200.0.2:3780\"]\ninsecure = true\n", 2, "sync.listen", "hostnames are not resolved"},
		{"listen-no-port", "[sync]\nlisten = \"10.200.0.1\"\npeers = [\"10.200.0.2:3780\"]\ninsecure = true\n", 2, "sync.listen", "not IP:port"},
		{"listen-ipv6-no-brackets", "[sync]\nlisten = \"fd00::1:3780\"\npeers = [\"[fd00::2]:3780\"]\ninsecure = true\n", 2, "sync.listen", "[IPv6]:port"},
		{"listen-port-zero", "[sync]\nlisten = \"10.200.0.1:0\"\npeers = [\"10.200.0.2:3780\"]\ninsecure = true\n", 2, "sync.listen", "port \"0\""},
		{"listen-port-range", "[sync]\nlisten = \"10.200.0.1:65536\"\npeers = [\"10.200.0.2:3780\"]\ninsecure = true\n", 2, "sync.listen", "not a number 1..65535"},
		{"listen-multicast", "[sync]\nlisten = \"225.0.0.50:3780\"\npeers = [\"10.200.0.2:3780\"]\ninsecure = true\n", 2, "sync.listen", "is a multicast address"},
		{"listen-missing", "[sync]\npeers = [\"10.200.0.2:3780\"]\ninsecure = true\n", 1, "sync.listen", "required unless disabled"},
		{"peer-hostname", "[sync]\nlisten = \"10.200.0.1:3780\"\ninsecure = true\npeers = [\n  \"10.200.0.2:3780\",\n  \"fw-c:3780\",\n]\n", 6, "sync.peers", `"fw-c" is not an IP address`},
		{"peer-self", "[sync]\nlisten = \"10.200.0.1:3780\"\ninsecure = true\npeers = [\"10.200.0.1:3780\"]\n", 4, "sync.peers", "own listen address"},
		{"peer-duplicate", "[sync]\nlisten = \"10.200.0.1:3780\"\ninsecure = true\npeers = [\n\"10.200.0.2:3780\",\n\"10.200.0.2:3780\"]\n", 6, "sync.peers", "listed twice"},
		{"peer-family", "[sync]\nlisten = \"10.200.0.1:3780\"\ninsecure = true\npeers = [\"[fd00::2]:3780\"]\n", 4, "sync.peers", "is IPv6 but listen"},
		{"peer-unspecified", "[sync]\nlisten = \"10.200.0.1:3780\"\ninsecure = true\npeers = [\"0.0.0.0:3780\"]\n", 4, "sync.peers", "not a peer's unicast address"},
		{"udp-no-peers", "[sync]\nlisten = \"10.200.0.1:3780\"\ninsecure = true\npeers = []\n", 4, "sync.peers", "at least one peer"},
		{"udp-no-peers-absent", "[node]\nname = \"a\"\n\n[sync]\nlisten = \"10.200.0.1:3780\"\ninsecure = true\n", 4, "sync.peers", "at least one peer"},
		{"multicast-no-interface", "[sync]\ntransport = \"multicast\"\nlisten = \"10.200.0.1:3780\"\ngroup = \"225.0.0.50:3780\"\ninsecure = true\n", 1, "sync.interface", "required with transport = \"multicast\""},
		{"multicast-no-group", "[sync]\ntransport = \"multicast\"\ninterface = \"sync0\"\nlisten = \"10.200.0.1:3780\"\ninsecure = true\n", 1, "sync.group", "required with transport = \"multicast\""},
		{"group-not-multicast", "[sync]\ntransport = \"multicast\"\ninterface = \"sync0\"\nlisten = \"10.200.0.1:3780\"\ngroup = \"10.0.0.50:3780\"\ninsecure = true\n", 5, "sync.group", "not a multicast address"},
		{"group-family", "[sync]\ntransport = \"multicast\"\ninterface = \"sync0\"\nlisten = \"10.200.0.1:3780\"\ngroup = \"[ff02::50]:3780\"\ninsecure = true\n", 5, "sync.group", "is IPv6 but listen"},
		{"interface-long", base + "interface = \"a-very-long-interface\"\n", 5, "sync.interface", "at most 15"},
		{"interface-slash", base + "interface = \"eth/0\"\n", 5, "sync.interface", "not a valid interface name"},
		{"key-missing", "[sync]\nlisten = \"10.200.0.1:3780\"\npeers = [\"10.200.0.2:3780\"]\n", 1, "sync.key_file", "required unless insecure = true"},
		{"key-empty", "[sync]\nlisten = \"10.200.0.1:3780\"\npeers = [\"10.200.0.2:3780\"]\nkey_file = \"\"\n", 4, "sync.key_file", "must not be empty"},
		{"key-and-insecure", base + "insecure = true\n", 4, "sync.key_file", "insecure = true"},
		{"mtu-small", base + "mtu = 100\n", 5, "sync.mtu", "100 is out of range 576..65000"},
		{"mtu-large", base + "mtu = 65536\n", 5, "sync.mtu", "out of range"},
		{"resend-queue", base + "resend_queue = 0\n", 5, "sync.resend_queue", "out of range"},
		{"max-peers", base + "max_peers = 0\n", 5, "sync.max_peers", "out of range"},
		{"resend-rate", base + "resend_rate = \"1KiB\"\n", 5, "sync.resend_rate", "out of range"},
		{"policy-zone", "[peer_policy]\nzone = \"strip\"\n", 2, "peer_policy.zone", "not one of allow, refuse, require"},
		{"policy-helper", "[peer_policy]\nhelpers = [\"ftp\", \"a b\"]\n", 2, "peer_policy.helpers", "not a conntrack helper name"},
		{"ack-negative", base + "ack_interval = \"-50ms\"\n", 5, "sync.ack_interval", "negative duration -50ms"},
		{"ack-zero", base + "ack_interval = \"0s\"\n", 5, "sync.ack_interval", "too short"},
		{"heartbeat-long", base + "heartbeat_interval = \"2m\"\n", 5, "sync.heartbeat_interval", "too long"},
		{"link-no-interface", base + "[[sync.link]]\nlisten = \"10.201.0.1:3780\"\npeers = [\"10.201.0.2:3780\"]\n", 1, "sync.interface", "required with [[sync.link]]"},
		{"link-peer-count", base + "interface = \"sync0\"\n[[sync.link]]\ninterface = \"sync1\"\nlisten = \"10.201.0.1:3780\"\npeers = []\n", 9, "sync.link.0.peers", "0 peers, but sync.peers has 1"},
		{"link-second-bad-listen", base + "interface = \"sync0\"\n[[sync.link]]\ninterface = \"sync1\"\nlisten = \"10.201.0.1:3780\"\npeers = [\"10.201.0.2:3780\"]\n[[sync.link]]\ninterface = \"sync2\"\nlisten = \"10.201.0.1:3780\"\npeers = [\"10.202.0.2:3780\"]\n", 12, "sync.link.1.listen", "is also sync.link.0.listen"},
		{"link-same-interface", base + "interface = \"sync0\"\n[[sync.link]]\ninterface = \"sync0\"\nlisten = \"10.201.0.1:3780\"\npeers = [\"10.201.0.2:3780\"]\n", 7, "sync.link.0.interface", "needs its own interface"},
		{"link-multicast", "[sync]\ntransport = \"multicast\"\ninterface = \"sync0\"\nlisten = \"10.200.0.1:3780\"\ngroup = \"225.0.0.50:3780\"\ninsecure = true\n[[sync.link]]\ninterface = \"sync1\"\nlisten = \"10.201.0.1:3780\"\n", 7, "sync.link", "need transport = \"udp\""},
		{"link-unknown-key", base + "interface = \"sync0\"\n[[sync.link]]\ninterface = \"sync1\"\nlisten_addr = \"10.201.0.1:3780\"\n", 8, "sync.link.listen_addr", "[[sync.link]] has interface, listen, peers"},
		{"min-age-long", base + "min_age = \"2h\"\n", 5, "sync.min_age", "too long: at most 1h0m0s"},
		{"peer-timeout-short", base + "heartbeat_interval = \"1s\"\npeer_timeout = \"1s\"\n", 6, "sync.peer_timeout", "must be longer than heartbeat_interval"},
		{"peer-timeout-default-short", base + "heartbeat_interval = \"10s\"\n", 5, "sync.heartbeat_interval", "must be longer than heartbeat_interval"},

		// [filter]
		{"protocol-unknown", base + "[filter]\nprotocols = [\"tcp\", \"quic\"]\n", 6, "filter.protocols", `"quic" is not one of tcp, udp`},
		{"protocol-empty", base + "[filter]\nprotocols = []\n", 6, "filter.protocols", "nothing would be replicated"},
		{"port-zero", base + "[filter]\nignore_ports = [0]\n", 6, "filter.ignore_ports", "port 0 is not 1..65535"},
		{"port-range-backwards", base + "[filter]\nignore_ports = [\n  53,\n  \"9000-8000\",\n]\n", 6, "filter.ignore_ports", "ends before it starts"},
		{"port-word", base + "[filter]\nignore_ports = [\"dns\"]\n", 6, "filter.ignore_ports", `"dns" is not a port`},
		{"mark-bits-outside-mask", base + "[filter]\nignore_marks = [\"0x1/0xf0\"]\n", 6, "filter.ignore_marks", "bits outside the mask"},
		{"mark-not-number", base + "[filter]\nignore_marks = [\"0x10\", \"red\"]\n", 6, "filter.ignore_marks", `"red" is not a 32-bit number`},
		{"zone-range", base + "[filter]\nignore_zones = [70000]\n", 6, "filter.ignore_zones", "zone 70000 is not 0..65535"},
		{"helper-long", base + "[filter]\nignore_helpers = [\"a-very-long-helper\"]\n", 6, "filter.ignore_helpers", "at most 15"},
		{"cidr-invalid", base + "[filter]\nignore_addresses = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n", 8, "filter.ignore_addresses", `"10.0.0.0/33" is not a CIDR`},
		{"cidr-host-bits", base + "[filter]\nignore_addresses = [\"192.168.1.1/24\"]\n", 6, "filter.ignore_addresses", `write "192.168.1.0/24"`},
		{"address-hostname", base + "[filter]\nignore_addresses = [\"localhost\"]\n", 6, "filter.ignore_addresses", "not a CIDR or an IP address"},
		{"tcp-state-unknown", base + "[filter]\ntcp_states = [\"established\", \"listen\"]\n", 6, "filter.tcp_states", `"listen" is not one of`},
		{"tcp-state-none", base + "[filter]\ntcp_states = [\"none\"]\n", 6, "filter.tcp_states", `"none" is not one of`},
		{"tcp-states-empty", base + "[filter]\ntcp_states = []\n", 6, "filter.tcp_states", "remove tcp from protocols"},

		// [failover], [log]
		{"purge-zero", base + "[failover]\npurge_timeout = \"0s\"\n", 6, "failover.purge_timeout", "too short"},
		{"purge-huge", base + "[failover]\npurge_timeout = \"2000000h\"\n", 6, "failover.purge_timeout", "too long"},
		{"commit-negative", base + "[failover]\ncommit_timeout = \"-1s\"\n", 6, "failover.commit_timeout", "negative"},
		{"min-negative", base + "[failover]\nmin_timeout = \"-1s\"\n", 6, "failover.min_timeout", "negative"},
		{"ready-relative", base + "[failover]\nready_file = \"ready\"\n", 6, "failover.ready_file", "not an absolute file path"},
		{"ruleset-interval-short", base + "[failover]\nruleset_interval = \"100ms\"\n", 6, "failover.ruleset_interval", "too short"},
		{"require-ruleset-off", base + "[failover]\nruleset_interval = \"0s\"\nrequire_same_ruleset = true\n", 7, "failover.require_same_ruleset", "needs the ruleset comparison"},
		{"ruleset-ignore-bad", base + "[failover]\nruleset_ignore_tables = [\"local\"]\n", 6, "failover.ruleset_ignore_tables", "is not \"FAMILY NAME\""},
		{"log-level", base + "[log]\nlevel = \"trace\"\n", 6, "log.level", `"trace" is not one of debug, info, warn, error`},
		{"log-format", base + "[log]\nformat = \"logfmt\"\n", 6, "log.format", `"logfmt" is not one of text, json`},
		{"flows-relative", base + "[log]\nflows = \"flows.log\"\n", 6, "log.flows", "not an absolute file path"},
		{"flows-format", base + "[log]\nflows_format = \"csv\"\n", 6, "log.flows_format", `"csv" is not one of extended, json`},

		// [api]
		{"api-no-tls", base + "[api]\nlisten = \"10.0.0.1:9470\"\ntokens_file = \"/t\"\n", 6, "api.listen", "not a loopback address: TLS is required"},
		{"api-bad-listen", base + "[api]\nlisten = \"localhost:9470\"\ntokens_file = \"/t\"\n", 6, "api.listen", "not an IP address"},
		{"api-no-tokens", base + "[api]\nlisten = \"127.0.0.1:9470\"\n", 5, "api.tokens_file", "required with api.listen"},
		{"api-cert-alone", base + "[api]\nlisten = \"127.0.0.1:9470\"\ntokens_file = \"/t\"\ncert_file = \"/c\"\n", 8, "api.cert_file", "set both or neither"},
		{"api-ca-no-tls", base + "[api]\nlisten = \"127.0.0.1:9470\"\ntokens_file = \"/t\"\nclient_ca_file = \"/ca\"\n", 8, "api.client_ca_file", "need TLS"},
		{"api-audit-relative", base + "[api]\nlisten = \"127.0.0.1:9470\"\ntokens_file = \"/t\"\naudit_file = \"audit.log\"\n", 8, "api.audit_file", "not an absolute file path"},
		{"api-off-but-set", base + "[api]\ntokens_file = \"/t\"\n", 6, "api.tokens_file", "the API is off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(file, []byte(tt.src))
			if err == nil {
				t.Fatalf("no error for\n%s\nconfig %+v", tt.src, c)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not a *config.Error", err)
			}
			// The expected problem is one of the reported lines, exactly.
			want := file + ":"
			if tt.line > 0 {
				want += strconv.Itoa(tt.line) + ":"
			}
			want += " "
			if tt.key != "" {
				want += tt.key + ": "
			}
			found := false
			for _, l := range strings.Split(err.Error(), "\n") {
				if strings.HasPrefix(l, want) && strings.Contains(l[len(want):], tt.msg) {
					found = true
				}
			}
			if !found {
				t.Errorf("error:\n%v\nwant a line %q…%q", err, want, tt.msg)
			}
		})
	}
}

// Several problems are all reported, in file order, each its own *Error.
func TestAllProblemsReported(t *testing.T) {
	src := `[sync]
transport = "udp"
listen = "10.200.0.1:3780"
peers = ["fw-b:3780"]
insecure = true
mtu = 10

[log]
level = "verbose"
`
	_, err := Parse("f.toml", []byte(src))
	want := `f.toml:4: sync.peers: "fw-b:3780": "fw-b" is not an IP address (hostnames are not resolved: write the address)
f.toml:6: sync.mtu: 10 is out of range 576..65000
f.toml:9: log.level: "verbose" is not one of debug, info, warn, error`
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 3 {
		t.Fatalf("not three joined errors: %#v", err)
	}
	for _, e := range joined.Unwrap() {
		if _, ok := e.(*Error); !ok || !errors.Is(e, ErrInvalid) {
			t.Errorf("%T %v", e, e)
		}
	}

	// Unknown keys are reported before values are checked, all of them,
	// but not the keys below an unknown table.
	_, err = Parse("f.toml", []byte("[sync]\nbogus = 1\n[extra]\na = 1\nb = 2\n[log]\nlevl = \"x\"\n"))
	want = "f.toml:2: sync.bogus: unknown key; [sync] has transport, interface, listen, peers, group, key_file, insecure, inject, disabled, mtu, resend_queue, ack_interval, heartbeat_interval, peer_timeout, min_age, link, expectations, expectation_helpers, max_buffer_bytes, max_peers, max_flows_per_origin, resend_rate, digest_interval\n" +
		"f.toml:3: extra: unknown table; the tables are [node], [control], [kernel], [sync], [filter], [peer_policy], [failover], [defer], [metrics], [log], [api]\n" +
		"f.toml:7: log.levl: unknown key; did you mean level?"
	if err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "/etc/ctsyncd/ctsyncd.toml", Line: 12, Key: "sync.transport", Msg: `"tcp" is not one of udp, multicast, gossip`},
			`/etc/ctsyncd/ctsyncd.toml:12: sync.transport: "tcp" is not one of udp, multicast, gossip`},
		{Error{File: "c.toml", Key: "sync.key_file", Msg: "required"}, "c.toml: sync.key_file: required"},
		{Error{File: "c.toml", Line: 3, Msg: "bad syntax"}, "c.toml:3: bad syntax"},
		{Error{Key: "sync.mtu", Msg: "out of range"}, "sync.mtu: out of range"},
		{Error{Line: 2, Key: "log.level", Msg: "bad"}, "line 2: log.level: bad"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
		if !errors.Is(&tt.e, ErrInvalid) {
			t.Errorf("%v does not match ErrInvalid", &tt.e)
		}
	}
}

func TestDecoderErrorUnwraps(t *testing.T) {
	_, err := Parse("f.toml", []byte("[sync\n"))
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		t.Errorf("syntax error %v does not unwrap to toml.ParseError", err)
	}
}

func TestValidateWithoutFile(t *testing.T) {
	c := Default()
	c.Sync.Disabled = true
	if err := c.Validate(); err != nil {
		t.Fatalf("Default with sync disabled: %v", err)
	}
	c.Sync.Transport = "tcp"
	c.Log.Format = "xml"
	want := "sync.transport: \"tcp\" is not one of udp, multicast, gossip\nlog.format: \"xml\" is not one of text, json"
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
	c.Path = "x.toml"
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "x.toml: sync.transport: ") {
		t.Errorf("got %v", err)
	}
}

func TestLoad(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.toml"))
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrInvalid) {
		t.Errorf("missing file: %v", err)
	}
	path := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(path, []byte("[sync]\ndisabled = true\n\n[log]\nlevel = \"loud\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	if err == nil || err.Error() != path+`:5: log.level: "loud" is not one of debug, info, warn, error` {
		t.Errorf("got %v", err)
	}
}

func TestByteSize(t *testing.T) {
	good := map[string]ByteSize{
		"0": 0, "1048576": 1 << 20, "512KiB": 512 << 10, "64MiB": 64 << 20, "64 MiB": 64 << 20,
		"8M": 8 << 20, "8m": 8 << 20, "1GiB": 1 << 30, "1G": 1 << 30, "2TiB": 2 << 40,
		"1kB": 1000, "5MB": 5e6, "1GB": 1e9, "100B": 100,
	}
	for s, want := range good {
		if got, err := ParseByteSize(s); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "MiB", "-1MiB", "1.5GiB", "1 XB", "9999999999999999999", "9000000TiB"} {
		if got, err := ParseByteSize(s); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want error", s, got)
		}
	}
	for b, want := range map[ByteSize]string{0: "0", 1000: "1000", 1024: "1KiB", 64 << 20: "64MiB", 1 << 30: "1GiB", 3 << 40: "3TiB"} {
		if got := b.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int64(b), got, want)
		}
		if back, err := ParseByteSize(want); err != nil || back != b {
			t.Errorf("round trip of %q: %d, %v", want, back, err)
		}
	}
}

func TestDuration(t *testing.T) {
	var d Duration
	for s, want := range map[string]time.Duration{"50ms": 50 * time.Millisecond, "1m30s": 90 * time.Second, "0": 0, "0s": 0, "-1s": -time.Second} {
		if err := d.UnmarshalText([]byte(s)); err != nil || d.Duration != want {
			t.Errorf("%q: %v, %v", s, d.Duration, err)
		}
	}
	for _, s := range []string{"", "30", "5 seconds", "1d"} {
		if err := d.UnmarshalText([]byte(s)); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	if b, _ := (Duration{90 * time.Second}).MarshalText(); string(b) != "1m30s" {
		t.Errorf("MarshalText = %q", b)
	}
}

func TestHelpers(t *testing.T) {
	f := Filter{IgnoreAddresses: []string{"10.0.0.0/8", "192.0.2.1", "2001:db8::1", "fd00::/8"}}
	got, err := f.Prefixes()
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"),
		netip.MustParsePrefix("2001:db8::1/128"), netip.MustParsePrefix("fd00::/8"),
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Prefixes = %v, %v", got, err)
	}
	if _, err := (Filter{IgnoreAddresses: []string{"fe80::1%eth0"}}).Prefixes(); !errors.Is(err, ErrInvalid) {
		t.Errorf("zoned address: %v", err)
	}
	if _, err := (Filter{Protocols: []string{"ipip"}}).ProtocolNumbers(); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown protocol: %v", err)
	}
	if n, err := (Filter{Protocols: knownProtocols}).ProtocolNumbers(); err != nil || len(n) != 8 {
		t.Errorf("all protocols: %v, %v", n, err)
	}
	if _, err := (Filter{TCPStates: []string{"none"}}).TCPStateNumbers(); !errors.Is(err, ErrInvalid) {
		t.Errorf("state none: %v", err)
	}
	if n, err := (Filter{TCPStates: defaultTCPStates}).TCPStateNumbers(); err != nil ||
		!reflect.DeepEqual(n, []uint8{flow.TCPSynSent, flow.TCPSynRecv, flow.TCPEstablished, flow.TCPFinWait, flow.TCPCloseWait, flow.TCPLastAck, flow.TCPTimeWait}) {
		t.Errorf("default states: %v, %v", n, err)
	}
	no := false
	if (Filter{}).IgnoreOwn() != true || (Filter{IgnoreOwnAddresses: &no}).IgnoreOwn() {
		t.Error("IgnoreOwn")
	}
	for mode, want := range map[string]os.FileMode{"0600": 0o600, "660": 0o660, "0o770": 0o770, "0": 0, "bad": 0o600, "01777": 0o600} {
		if got := (Control{Mode: mode}).FileMode(); got != want {
			t.Errorf("FileMode(%q) = %o, want %o", mode, got, want)
		}
	}
}

func TestLocate(t *testing.T) {
	src := "# comment [not.a.table]\r\n" + // 1
		"top = 1\r\n" + // 2
		"[ a . \"b c\" ]  # header\n" + // 3
		"x.y = { p = 1, q = [1,\n" + // 4
		"  2] }\n" + // 5
		"s = '''\n" + // 6
		"fake = 1\n" + // 7
		"'''\n" + // 8
		"'lit' = \"\\\"quoted\\\" = 2\"\n" + // 9
		"arr = [\n" + // 10
		"  \"one\", # ]\n" + // 11
		"  [\"two\"],\n" + // 12
		"  { k = \"three\" },\n" + // 13
		"]\n" + // 14
		"[[aot]]\n" + // 15
		"\"\\u0041\" = 1\n" + // 16
		"ml = \"\"\"a\\\n" + // 17
		"b\"\"\"\"\n" + // 18
		"after = 1\n" // 19
	if _, err := toml.Decode(src, new(map[string]any)); err != nil {
		t.Fatalf("fixture is not valid TOML: %v", err)
	}
	loc := locate(src)
	for key, line := range map[string]int{
		"top": 2, "a": 3, `a."b c"`: 3, `a."b c".x`: 4, `a."b c".x.y`: 4, `a."b c".x.y.p`: 4, `a."b c".x.y.q`: 4,
		`a."b c".s`: 6, `a."b c".lit`: 9, `a."b c".arr`: 10, "aot": 15, "aot.A": 16, "aot.ml": 17, "aot.after": 19,
		"missing": 0, "top.below": 2,
	} {
		if got := loc.line(key); got != line {
			t.Errorf("line(%s) = %d, want %d", key, got, line)
		}
	}
	if _, ok := loc.keys[`a."b c".fake`]; ok {
		t.Error("a key inside a multi-line string was recorded")
	}
	if got := loc.elems[`a."b c".arr`]; !reflect.DeepEqual(got, []int{11, 12, 13}) {
		t.Errorf("elements = %v", got)
	}
	if got := loc.elemLine(`a."b c".arr`, 5); got != 10 {
		t.Errorf("elemLine past the end = %d", got)
	}
	var nilLoc *locator
	if nilLoc.line("x") != 0 || nilLoc.elemLine("x", 0) != 0 {
		t.Error("nil locator")
	}
	// Broken input: no panic, no hang.
	for _, s := range []string{"[", "a = [", "a = {", "a = \"\"\"", "'", "= 1", "a = '''x", "[[a", "a.\"b", "a = [1,,]"} {
		locate(s)
	}
}

func TestExpectationHelpersValidated(t *testing.T) {
	_, err := Parse("f.toml", []byte("[node]\nname = \"a\"\n[sync]\ndisabled = true\nexpectation_helpers = [\"ftp\", \"Bad Name\"]\n"))
	if err == nil || !strings.Contains(err.Error(), "f.toml:5: sync.expectation_helpers: \"Bad Name\"") {
		t.Errorf("err = %v", err)
	}
}
