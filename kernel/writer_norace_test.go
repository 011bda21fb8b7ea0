//go:build !race

package kernel

// manyFlows: see writer_race_test.go.
const manyFlows = 100000
