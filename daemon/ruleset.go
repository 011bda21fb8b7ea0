package daemon

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ctsyncd/ctsyncd/kernel"
	"github.com/ctsyncd/ctsyncd/ruleset"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

// The ruleset guard: this node digests its nftables ruleset at start, on
// every change (NFNLGRP_NFTABLES) and every failover.ruleset_interval,
// announces the digest to its peers (NODE_INFO), and compares it with
// theirs. A difference is a warning in status and a log line naming the
// tables, chains and sets that differ; with failover.require_same_ruleset
// it also keeps the node unready.

// capabilities this version announces in NODE_INFO.
var capabilities = []string{"expect", "node-info", "ruleset", "digest"}

// rulesetGuard is the guard's state, shared by its loop and status.
type rulesetGuard struct {
	mu      sync.Mutex
	local   ruleset.Digest
	have    bool
	checked time.Time
	err     string
	differ  map[string][]string // live peer → parts that differ ("(more)" when truncated)
}

// RulesetStatus is the ruleset part of `ctsyncctl status`.
type RulesetStatus struct {
	Digest  string              `json:"digest,omitempty"`
	Checked time.Time           `json:"checked,omitzero"`
	Error   string              `json:"error,omitempty"`
	Same    bool                `json:"same"` // every live peer that sent a digest has the same
	Differ  map[string][]string `json:"differ,omitempty"`
}

func (d *Daemon) rulesetEnabled() bool {
	return d.node != nil && d.cfg.Failover.RulesetInterval.Duration > 0
}

// guardRuleset runs the guard until ctx ends.
func (d *Daemon) guardRuleset(ctx context.Context) error {
	if d.netns != 0 {
		// In-process tests follow another namespace; nft would read ours.
		d.log.Debug("ruleset guard off: the daemon follows another network namespace")
		return nil
	}
	changed := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := kernel.WatchRuleset(wctx, 0, func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
		if err != nil {
			d.log.Warn("ruleset guard: changes are not watched, only read every interval", "err", err)
		}
	}()
	read := time.NewTicker(d.cfg.Failover.RulesetInterval.Duration)
	defer read.Stop()
	compare := time.NewTicker(time.Second)
	defer compare.Stop()
	d.readRuleset(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			// A burst of changes (nft -f) ends quickly: read once after it.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
			select {
			case <-changed:
			default:
			}
			d.readRuleset(ctx)
		case <-read.C:
			d.readRuleset(ctx)
		case <-compare.C:
			d.compareRulesets()
		}
	}
}

// readRuleset digests the local ruleset and announces it when it changed.
func (d *Daemon) readRuleset(ctx context.Context) {
	dig, err := ruleset.Read(ctx, d.cfg.Failover.RulesetIgnoreTables)
	g := &d.rs
	g.mu.Lock()
	g.checked = time.Now()
	if err != nil {
		first := g.err == ""
		g.err = err.Error()
		g.mu.Unlock()
		if first {
			d.log.Error("ruleset guard: cannot read the ruleset", "err", err)
		}
		return
	}
	same := g.have && g.local.Equal(dig)
	g.local, g.have, g.err = dig, true, ""
	g.mu.Unlock()
	if same {
		return
	}
	d.log.Info("ruleset digest", "digest", dig.String(), "parts", len(dig.Parts))
	parts := make(map[string][ruleset.PartHashLen]byte, len(dig.Parts))
	for k, v := range dig.Parts {
		parts[k] = v
	}
	d.node.SetInfo(ctsync.NodeInfo{Version: d.version, Caps: capabilities, Ruleset: dig.Sum[:], Parts: parts})
	d.compareRulesets()
}

// compareRulesets compares the local digest with each live peer's and logs
// what changed.
func (d *Daemon) compareRulesets() {
	g := &d.rs
	g.mu.Lock()
	if !g.have {
		g.mu.Unlock()
		return
	}
	local := g.local
	g.mu.Unlock()
	stats := d.node.Stats()
	differ := map[string][]string{}
	for name, info := range d.node.PeerInfo() {
		if !stats[name].Up || len(info.Ruleset) == 0 || bytes.Equal(info.Ruleset, local.Sum[:]) {
			continue
		}
		parts := ruleset.Diff(local, ruleset.Digest{Parts: info.Parts})
		if info.Truncated {
			parts = append(parts, "(more: the peer's list was truncated)")
		}
		if len(parts) == 0 {
			parts = []string{"(the peer's list was truncated)"}
		}
		differ[name] = parts
	}
	g.mu.Lock()
	old := g.differ
	g.differ = differ
	g.mu.Unlock()
	for name, parts := range differ {
		if !slices.Equal(old[name], parts) {
			d.log.Warn("ruleset differs from a peer's: replicated flows may not be accepted there, or here after a failover",
				"peer", name, "differ", strings.Join(parts, "; "))
		}
	}
	for name := range old {
		if _, still := differ[name]; !still {
			d.log.Info("ruleset matches the peer's again", "peer", name)
		}
	}
}

// rulesetSame reports whether no live peer's ruleset differs, and why not.
func (d *Daemon) rulesetSame() (bool, string) {
	if !d.rulesetEnabled() {
		return true, ""
	}
	g := &d.rs
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.have {
		return false, "own ruleset not read yet" + errSuffix(g.err)
	}
	if len(g.differ) == 0 {
		return true, ""
	}
	var names []string
	for n := range g.differ {
		names = append(names, n)
	}
	slices.Sort(names)
	return false, "ruleset differs from " + strings.Join(names, ", ")
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return ": " + e
}

// rulesetStatus reports the guard's state.
func (d *Daemon) rulesetStatus() *RulesetStatus {
	if !d.rulesetEnabled() {
		return nil
	}
	g := &d.rs
	g.mu.Lock()
	defer g.mu.Unlock()
	s := &RulesetStatus{Checked: g.checked, Error: g.err, Same: len(g.differ) == 0}
	if g.have {
		s.Digest = g.local.String()
	}
	if len(g.differ) > 0 {
		s.Differ = make(map[string][]string, len(g.differ))
		for k, v := range g.differ {
			s.Differ[k] = slices.Clone(v)
		}
	}
	return s
}

// rulesetWarnings are the status warnings of the guard.
func (d *Daemon) rulesetWarnings() []string {
	s := d.rulesetStatus()
	if s == nil {
		return nil
	}
	var w []string
	if s.Error != "" {
		w = append(w, "ruleset guard: "+s.Error)
	}
	names := make([]string, 0, len(s.Differ))
	for n := range s.Differ {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		w = append(w, fmt.Sprintf("ruleset differs from %s's: %s", n, strings.Join(s.Differ[n], "; ")))
	}
	return w
}
