// Package status is the stable model of "how is this node doing", shared by
// `ctsyncctl status --json`, the HTTP API (/api/v1/status) and the human
// form of `ctsyncctl status`. docs/status.md documents every field.
//
// Stability: fields are only ever added. A field's name, type and meaning
// do not change within a SchemaVersion; a change that would break a reader
// bumps SchemaVersion. Times are RFC 3339 with the zone; durations are
// seconds as numbers, named *_seconds.
//
// The package holds plain data and a text renderer; the daemon fills it.
package status

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// SchemaVersion is the version of the Status layout.
const SchemaVersion = 1

// Status is a snapshot of one node.
type Status struct {
	SchemaVersion int       `json:"schema_version"`
	Node          string    `json:"node"`
	Version       string    `json:"version"`
	Started       time.Time `json:"started"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	// Role is keepalived's last notified state for this node: "MASTER",
	// "BACKUP", "FAULT", ... or "" when no notify came yet.
	Role string `json:"role"`
	// Ready is the readiness condition (/readyz, systemd READY=1, the
	// failover ready file): the initial kernel dump is done and every
	// live peer has sent its table in bulk. ReadyReason says why not.
	Ready       bool   `json:"ready"`
	ReadyReason string `json:"ready_reason,omitempty"`
	// Sync is nil when replication is disabled.
	Sync *Sync `json:"sync"`
	// Peers are sorted by name. Empty without sync.
	Peers  []Peer `json:"peers"`
	Caches Caches `json:"caches"`
	// FlowsAtRisk counts this node's flows (states or removals) that at
	// least one known peer has not acknowledged yet: what a takeover by
	// that peer would lose now. A peer that went silent still counts (a
	// cut sync link is exactly the risk); a peer that never acknowledged
	// anything counts every flow.
	FlowsAtRisk uint64 `json:"flows_at_risk"`
	// LastCommit is the last commit of the external cache into the
	// kernel; nil when none ran since start.
	LastCommit *Commit `json:"last_commit"`
	// LastResync is the last reconcile of the internal cache with a dump
	// of the kernel table; nil before the first.
	LastResync *Resync `json:"last_resync"`
	// LastDriftRepair is the last repair of an external cache after a
	// digest showed it diverged from its origin; nil when none happened.
	LastDriftRepair *DriftRepair `json:"last_drift_repair"`
	// Ruleset is the ruleset guard's state (failover.ruleset_interval);
	// null when the guard is off.
	Ruleset *Ruleset `json:"ruleset"`
	// Warnings are short sentences for an operator, empty when all is
	// well: peers down, flows at risk, not ready, event overruns, rulesets
	// that differ, ...
	Warnings []string `json:"warnings"`
}

// Ruleset is the ruleset guard's view: this node's ruleset digest and
// whether every live peer that sent one has the same.
type Ruleset struct {
	Digest  string    `json:"digest,omitempty"`
	Checked time.Time `json:"checked"`
	Error   string    `json:"error,omitempty"`
	Same    bool      `json:"same"`
	// Differ names, by peer, the tables and chains that differ.
	Differ map[string][]string `json:"differ,omitempty"`
}

// Sync is this node's side of the replication protocol.
type Sync struct {
	Transport string `json:"transport"`
	Secure    bool   `json:"secure"`
	ID        string `json:"id"`
	Epoch     string `json:"epoch"`
	LastSeq   uint64 `json:"last_seq"`
	Queued    int    `json:"queued"`
	// ExternalFlows repeats Caches.ExternalFlows (older readers use it).
	ExternalFlows int `json:"external_flows"`
	// DigestIntervalSeconds is 0 when drift detection is off.
	DigestIntervalSeconds float64 `json:"digest_interval_seconds"`
	// Links are the sync links when there are several ([[sync.link]]);
	// empty with one.
	Links []Link `json:"links"`
}

// Link is the state of one sync link.
type Link struct {
	Name string `json:"name"`
	// Up: a datagram arrived on it within the peer timeout.
	Up         bool      `json:"up"`
	LastIn     time.Time `json:"last_in"`
	PacketsIn  uint64    `json:"packets_in"`
	BytesIn    uint64    `json:"bytes_in"`
	PacketsOut uint64    `json:"packets_out"`
	BytesOut   uint64    `json:"bytes_out"`
	SendErrors uint64    `json:"send_errors"`
}

// Peer is what this node knows of one peer.
type Peer struct {
	Name  string `json:"name"`
	Addr  string `json:"addr"`
	Alive bool   `json:"alive"`
	// LastSeen is when the last authenticated datagram from the peer
	// arrived; LastSeenSeconds is its age (-1: never).
	LastSeen        time.Time `json:"last_seen"`
	LastSeenSeconds float64   `json:"last_seen_seconds"`
	// LagSeconds is the age of the oldest of this node's messages the
	// peer has not acknowledged; Pending how many there are.
	LagSeconds float64 `json:"lag_seconds"`
	Pending    uint64  `json:"pending"`
	// FlowsAtRisk counts this node's flows the peer has not acknowledged.
	FlowsAtRisk uint64 `json:"flows_at_risk"`
	// BulkReceived tells whether the peer's table arrived in bulk at
	// least once (the readiness condition).
	BulkReceived bool `json:"bulk_received"`
	// ExternalFlows is how many of the peer's flows this node holds.
	ExternalFlows int `json:"external_flows"`
	// DriftRepairs counts repairs of the peer's flows held here.
	DriftRepairs uint64 `json:"drift_repairs"`
	// Version and Caps are what the peer announced (NODE_INFO): its
	// ctsyncd version and protocol capabilities; empty from a version
	// older than NODE_INFO or before it was heard.
	Version string   `json:"version"`
	Caps    []string `json:"caps"`
}

// Caches are the cache sizes.
type Caches struct {
	InternalFlows int `json:"internal_flows"`
	ExternalFlows int `json:"external_flows"`
	// ExternalByOrigin is the external cache by origin node name.
	ExternalByOrigin map[string]int `json:"external_by_origin"`
	// InternalExpectations and ExternalExpectations count the cached
	// conntrack expectations; null when sync.expectations is off.
	InternalExpectations *int `json:"internal_expectations"`
	ExternalExpectations *int `json:"external_expectations"`
}

// Commit summarizes the last commit.
type Commit struct {
	At              time.Time `json:"at"`
	DurationSeconds float64   `json:"duration_seconds"`
	Flows           int       `json:"flows"`
	Failed          int       `json:"failed"`
}

// Resync summarizes the last reconcile with the kernel table.
type Resync struct {
	At              time.Time `json:"at"`
	Reason          string    `json:"reason"`
	DurationSeconds float64   `json:"duration_seconds"`
	Flows           int       `json:"flows"`
	Added           int       `json:"added"`
	Fixed           int       `json:"fixed"`
	Removed         int       `json:"removed"`
	Error           string    `json:"error,omitempty"`
}

// DriftRepair summarizes the last drift repair.
type DriftRepair struct {
	At      time.Time `json:"at"`
	Origin  string    `json:"origin"`
	Buckets int       `json:"buckets"`
	// Flows is how many flows the repair added, fixed or removed.
	Flows int `json:"flows"`
}

// WriteText prints s for a human: a few aligned lines, peers as a table,
// warnings last.
func (s *Status) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	role := s.Role
	if role == "" {
		role = "unknown (no keepalived notify yet)"
	}
	ready := "yes"
	if !s.Ready {
		ready = "no"
		if s.ReadyReason != "" {
			ready += " (" + s.ReadyReason + ")"
		}
	}
	fmt.Fprintf(tw, "node:\t%s (ctsyncd %s, up %s)\n", s.Node, s.Version, ago(s.UptimeSeconds))
	fmt.Fprintf(tw, "role:\t%s\n", role)
	fmt.Fprintf(tw, "ready:\t%s\n", ready)
	if s.Sync == nil {
		fmt.Fprintf(tw, "sync:\tdisabled\n")
	} else {
		sec := "authenticated+encrypted"
		if !s.Sync.Secure {
			sec = "INSECURE"
		}
		digest := "drift detection off"
		if s.Sync.DigestIntervalSeconds > 0 {
			digest = "digest every " + ago(s.Sync.DigestIntervalSeconds)
		}
		fmt.Fprintf(tw, "sync:\t%s, %s, seq %d, %d queued, %s\n", s.Sync.Transport, sec, s.Sync.LastSeq, s.Sync.Queued, digest)
	}
	fmt.Fprintf(tw, "flows:\t%d internal, %d external", s.Caches.InternalFlows, s.Caches.ExternalFlows)
	if len(s.Caches.ExternalByOrigin) > 0 {
		var parts []string
		for o, n := range s.Caches.ExternalByOrigin {
			parts = append(parts, fmt.Sprintf("%s %d", o, n))
		}
		sort.Strings(parts)
		fmt.Fprintf(tw, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintf(tw, "\n")
	if s.Caches.InternalExpectations != nil {
		ext := 0
		if s.Caches.ExternalExpectations != nil {
			ext = *s.Caches.ExternalExpectations
		}
		fmt.Fprintf(tw, "expectations:\t%d internal, %d external\n", *s.Caches.InternalExpectations, ext)
	}
	if s.Sync != nil {
		for _, l := range s.Sync.Links {
			fmt.Fprintf(tw, "link %s:\t%s, %d datagrams in, %d out, %d send errors\n", l.Name, map[bool]string{true: "up", false: "DOWN"}[l.Up], l.PacketsIn, l.PacketsOut, l.SendErrors)
		}
	}
	fmt.Fprintf(tw, "at risk:\t%d flows not yet held by every peer\n", s.FlowsAtRisk)
	if r := s.LastResync; r != nil {
		e := ""
		if r.Error != "" {
			e = ", FAILED: " + r.Error
		}
		fmt.Fprintf(tw, "last resync:\t%s ago (%s): %d flows, +%d ~%d -%d%s\n", since(r.At), r.Reason, r.Flows, r.Added, r.Fixed, r.Removed, e)
	} else {
		fmt.Fprintf(tw, "last resync:\tnone yet\n")
	}
	if c := s.LastCommit; c != nil {
		fmt.Fprintf(tw, "last commit:\t%s ago: %d flows, %d failed, took %.3fs\n", since(c.At), c.Flows, c.Failed, c.DurationSeconds)
	} else {
		fmt.Fprintf(tw, "last commit:\tnone since start\n")
	}
	if d := s.LastDriftRepair; d != nil {
		fmt.Fprintf(tw, "last drift repair:\t%s ago: %s, %d buckets, %d flows\n", since(d.At), d.Origin, d.Buckets, d.Flows)
	} else {
		fmt.Fprintf(tw, "last drift repair:\tnone\n")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Peers) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PEER\tADDR\tALIVE\tLAST SEEN\tLAG\tPENDING\tAT RISK\tFLOWS HELD\tBULK\tREPAIRS")
		for _, p := range s.Peers {
			seen := "never"
			if p.LastSeenSeconds >= 0 {
				seen = ago(p.LastSeenSeconds) + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%d\n", p.Name, p.Addr, yesNo(p.Alive), seen,
				ago(p.LagSeconds), p.Pending, p.FlowsAtRisk, p.ExternalFlows, yesNo(p.BulkReceived), p.DriftRepairs)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(s.Warnings) > 0 {
		fmt.Fprintln(w)
		for _, m := range s.Warnings {
			fmt.Fprintf(w, "WARNING: %s\n", m)
		}
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func since(t time.Time) string { return ago(time.Since(t).Seconds()) }

// ago formats seconds the way an operator reads them: 0.3s, 12s, 5m3s.
func ago(sec float64) string {
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}
