package sync

// Rate limits and bounds against peers and strangers that send too much.

import "time"

// bucket is a token bucket: rate tokens per second, at most burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// refill adds the tokens earned since the last call (a new bucket is full).
func (b *bucket) refill(now time.Time, rate, burst float64) {
	if b.last.IsZero() {
		b.tokens = burst
	} else if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens = min(burst, b.tokens+d*rate)
	}
	b.last = now
}

// take takes cost tokens if there are enough.
func (b *bucket) take(now time.Time, rate, burst, cost float64) bool {
	b.refill(now, rate, burst)
	if b.tokens < cost {
		return false
	}
	b.tokens -= cost
	return true
}

// limiter is a token bucket per key, for at most max keys: when full, an
// arbitrary key is forgotten (it starts again with a full bucket).
type limiter[K comparable] struct {
	rate, burst float64
	max         int
	m           map[K]*bucket
}

func newLimiter[K comparable](rate, burst float64, max int) *limiter[K] {
	return &limiter[K]{rate: rate, burst: burst, max: max, m: make(map[K]*bucket)}
}

// allow reports whether one more event of key is allowed at now.
func (l *limiter[K]) allow(key K, now time.Time) bool {
	b, ok := l.m[key]
	if !ok {
		if len(l.m) >= l.max {
			for k := range l.m {
				delete(l.m, k)
				break
			}
		}
		b = &bucket{}
		l.m[key] = b
	}
	return b.take(now, l.rate, l.burst, 1)
}

// Rate limits on the handshake and on strangers. They bound what a replay
// or a forgery can make a node do; a live peer needs a handful of each.
const (
	// deriveRate and deriveBurst bound the key derivations per second for
	// (node, epoch) pairs that are not accepted peers: what a forged
	// datagram with a random node id and epoch costs before it fails
	// authentication.
	deriveRate, deriveBurst = 200, 200
	// handshakeRate and handshakeBurst bound the CHALLENGEs and RESPONSEs
	// sent per second to one source address, and the RESPONSEs per second
	// to one challenger (node id and epoch).
	handshakeRate, handshakeBurst = 10, 10
	// handshakeGlobalRate and handshakeGlobalBurst bound them per second
	// in all.
	handshakeGlobalRate, handshakeGlobalBurst = 100, 100
	// maxLimited bounds the keys each limiter tracks.
	maxLimited = 1024
)
