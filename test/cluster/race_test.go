//go:build race

package cluster

// raceEnabled: the race detector slows netlink-heavy work several times;
// scenarios with 100k+ flows run only without it (docs/ARCHITECTURE.md,
// "Test tiers").
const raceEnabled = true
