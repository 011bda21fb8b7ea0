package status

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func sample() *Status {
	n := 3
	return &Status{
		SchemaVersion: SchemaVersion, Node: "fw-a", Version: "test", Started: time.Now().Add(-time.Minute),
		UptimeSeconds: 60, Role: "MASTER", Ready: true,
		Sync:  &Sync{Transport: "udp", Secure: true, LastSeq: 7, DigestIntervalSeconds: 10, Links: []Link{}},
		Peers: []Peer{{Name: "fw-b", Addr: "10.0.0.2:3780", Alive: false, LastSeen: time.Now().Add(-6 * time.Second), LastSeenSeconds: 6, FlowsAtRisk: 40, BulkReceived: true, ExternalFlows: 12}},
		Caches: Caches{InternalFlows: 50, ExternalFlows: 12, ExternalByOrigin: map[string]int{"fw-b": 12},
			InternalExpectations: &n, ExternalExpectations: &n},
		FlowsAtRisk: 40,
		LastResync:  &Resync{At: time.Now(), Reason: "periodic", Flows: 50},
		Warnings:    []string{"peer fw-b is down (last seen 6s ago)"},
	}
}

func TestWriteText(t *testing.T) {
	var b bytes.Buffer
	if err := sample().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"role:", "MASTER", "50 internal, 12 external (fw-b 12)", "at risk:", "40 flows",
		"fw-b", "10.0.0.2:3780", "WARNING: peer fw-b is down", "last commit:", "none since start", "expectations:"} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
}

// TestJSONShape: the documented field names, and empty lists as [] (a
// stable form for scripts).
func TestJSONShape(t *testing.T) {
	s := &Status{SchemaVersion: SchemaVersion, Peers: []Peer{}, Warnings: []string{}, Caches: Caches{ExternalByOrigin: map[string]int{}}}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"schema_version", "node", "version", "started", "uptime_seconds", "role", "ready", "sync",
		"peers", "caches", "flows_at_risk", "last_commit", "last_resync", "last_drift_repair", "warnings"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
	if !strings.Contains(string(b), `"peers":[]`) || !strings.Contains(string(b), `"warnings":[]`) {
		t.Errorf("empty lists not []: %s", b)
	}
	b, _ = json.Marshal(sample())
	for _, k := range []string{`"last_seen_seconds":6`, `"flows_at_risk":40`, `"external_by_origin":{"fw-b":12}`, `"digest_interval_seconds":10`, `"internal_expectations":3`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("no %s in %s", k, b)
		}
	}
}
