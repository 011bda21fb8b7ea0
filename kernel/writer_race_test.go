//go:build race

package kernel

// manyFlows is the size of TestWriterCommitMany. Under -race the dumps'
// decoding is ~10x slower and 100k flows take 20-30 s, so the race run
// writes 20k; the non-race run (CI runs both) writes 100k.
const manyFlows = 20000
