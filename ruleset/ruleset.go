// Package ruleset computes a digest of a node's netfilter ruleset so that
// the nodes of a cluster can tell whether they would accept the same
// replicated flows: a standby whose ruleset differs is found before a
// failover, not at it.
//
// The digest is canonical: it reads `nft -j list ruleset` and leaves out
// what differs between identical rulesets — handles, counter and quota
// values, the expiry of set elements, and the elements of dynamic sets
// (filled by traffic). It is kept per part, a part being a table's own
// definition, a chain (its definition and rules in order) or a set, so that
// two digests name the parts that differ.
//
// What it is not: it does not read iptables-legacy rules, and it does not
// tell which rules differ inside a chain, only which chains.
//
// Concurrency: values are immutable once made; functions keep no state.
package ruleset

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
)

// PartHashLen is the length of a part's hash: enough to tell parts apart,
// small enough to announce a few hundred of them in one datagram.
const PartHashLen = 8

// Digest is a ruleset's digest: one hash over everything, and one per part
// keyed by the part's name ("table inet filter", "chain inet filter
// forward", "set inet filter blocked").
type Digest struct {
	Sum   [sha256.Size]byte
	Parts map[string][PartHashLen]byte
}

// Equal reports whether two digests are of the same ruleset.
func (d Digest) Equal(o Digest) bool { return d.Sum == o.Sum }

// String is the digest's first 12 hex digits.
func (d Digest) String() string { return fmt.Sprintf("%x", d.Sum[:6]) }

// Diff names the parts that differ between a and b, sorted: present in one
// only, or with other contents.
func Diff(a, b Digest) []string {
	var out []string
	for name, h := range a.Parts {
		if g, ok := b.Parts[name]; !ok || g != h {
			out = append(out, name)
		}
	}
	for name := range b.Parts {
		if _, ok := a.Parts[name]; !ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// ErrNoNft is returned by Read when the nft command is missing.
var ErrNoNft = errors.New("nft not found: the ruleset guard reads the ruleset with `nft -j list ruleset` (Debian package nftables)")

// Read runs `nft -j list ruleset` in the caller's network namespace and
// digests it. ignoreTables are "FAMILY NAME" pairs ("inet local") left out.
func Read(ctx context.Context, ignoreTables []string) (Digest, error) {
	path, err := exec.LookPath("nft")
	if err != nil {
		return Digest{}, ErrNoNft
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "-j", "list", "ruleset")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Digest{}, fmt.Errorf("nft -j list ruleset: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return Parse(out, ignoreTables)
}

// Parse digests the output of `nft -j list ruleset`.
func Parse(js []byte, ignoreTables []string) (Digest, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		return Digest{}, fmt.Errorf("ruleset: nft's JSON: %w", err)
	}
	ignored := map[string]bool{}
	for _, t := range ignoreTables {
		ignored[strings.Join(strings.Fields(t), " ")] = true
	}
	parts := map[string]*bytes.Buffer{}
	add := func(name string, v any) {
		b, ok := parts[name]
		if !ok {
			b = &bytes.Buffer{}
			parts[name] = b
		}
		enc, _ := json.Marshal(v) // maps marshal with sorted keys: canonical
		b.Write(enc)
		b.WriteByte('\n')
	}
	for _, obj := range doc.Nftables {
		for kind, raw := range obj {
			if kind == "metainfo" {
				continue
			}
			var v map[string]any
			if err := json.Unmarshal(raw, &v); err != nil {
				return Digest{}, fmt.Errorf("ruleset: nft's JSON: %s: %w", kind, err)
			}
			family, _ := v["family"].(string)
			table, _ := v["table"].(string)
			if kind == "table" {
				table, _ = v["name"].(string)
			}
			if ignored[family+" "+table] {
				continue
			}
			canonical(v)
			var name string
			switch kind {
			case "table":
				name = fmt.Sprintf("table %s %s", family, table)
			case "chain":
				name = fmt.Sprintf("chain %s %s %s", family, table, v["name"])
			case "rule":
				name = fmt.Sprintf("chain %s %s %s", family, table, v["chain"])
			default: // set, map, flowtable, ct helper, counter, quota, ...
				name = fmt.Sprintf("%s %s %s %v", kind, family, table, v["name"])
				if kind == "set" || kind == "map" {
					if flags, _ := v["flags"].([]any); slices.Contains(flags, any("dynamic")) {
						delete(v, "elem") // filled by traffic
					}
				}
			}
			add(name, map[string]any{kind: v})
		}
	}
	d := Digest{Parts: make(map[string][PartHashLen]byte, len(parts))}
	names := make([]string, 0, len(parts))
	for name, b := range parts {
		sum := sha256.Sum256(b.Bytes())
		d.Parts[name] = [PartHashLen]byte(sum[:PartHashLen])
		names = append(names, name)
	}
	slices.Sort(names)
	all := sha256.New()
	for _, name := range names {
		h := d.Parts[name]
		all.Write([]byte(name))
		all.Write(h[:])
	}
	copy(d.Sum[:], all.Sum(nil))
	return d, nil
}

// canonical removes, in place, what differs between equal rulesets:
// handles, counter and quota values, element expiry.
func canonical(v any) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range []string{"handle", "packets", "bytes", "used", "expires"} {
			delete(x, k)
		}
		for _, e := range x {
			canonical(e)
		}
	case []any:
		for _, e := range x {
			canonical(e)
		}
	}
}
