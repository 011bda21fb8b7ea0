// Package sync replicates conntrack flows between ctsyncd nodes: it batches
// the changes of this node's internal cache into datagrams, authenticates
// and encrypts them, delivers them reliably and in order to every peer, and
// applies what peers send to the external cache, per origin node.
//
// It is not a membership protocol and does not talk to the kernel:
// datagrams travel over a Transport (NewUDP: unicast to a list of peers;
// NewMulticast: a group on a dedicated link; NewGossip: memberlist
// membership with the data on a UDP channel; MemNetwork: in memory, for
// tests), and the set of peers is the transport's.
//
// # Protocol
//
// Each node sends one stream of sequenced messages (DATA, BULK_BEGIN,
// BULK_END) to all its peers, plus unsequenced control messages (ACK,
// NACK, HEARTBEAT, RESYNC_REQUEST, HELLO, CHALLENGE, RESPONSE); see
// wire.go for the format. A receiver applies a stream strictly in sequence
// order, buffers what arrives early, drops what it applied already,
// acknowledges cumulatively and NACKs gaps. The sender keeps the last
// Options.ResendQueue messages and answers a NACK by sending each lost
// message again under its sequence number with the current state of the
// flows it carried (cache.Internal.Current), so that a flow destroyed since
// goes as a removal and nothing stale is resurrected. A gap that can no
// longer be repaired is healed by a bulk: BULK_BEGIN, the whole internal
// cache, BULK_END; at BULK_END the receiver drops the origin's entries the
// bulk did not refresh, and a bulk supersedes every gap before its
// BULK_BEGIN. Heartbeats carry the last sequence number sent so that a
// lost tail is noticed.
//
// # Security
//
// With a pre-shared key, each node derives a key per start (its random
// epoch) with HKDF-SHA256 over the pre-shared key, its node id and the
// epoch, and seals every datagram body with AES-256-GCM under a counter
// nonce, the header as associated data. A message for one peer (ACK,
// NACK, RESYNC_REQUEST, CHALLENGE, RESPONSE, resends) names that peer's
// node id and epoch in the header; every other node drops it, so a
// datagram captured on its way to one peer cannot be replayed to another.
// A receiver authenticates before it decodes. It accepts a peer's epoch
// only after the peer answered a fresh random challenge sealed under that
// epoch and addressed to the challenger's own epoch; challenges are kept
// per (node, epoch), several at once, so a replayed datagram of an old
// epoch cannot crowd out the challenge of the current one. Within an
// accepted epoch a replay window drops repeated and too old counters.
// Replies go only to addresses the transport knows as peers (or to every
// peer), never to a datagram's unauthenticated source. Key derivations for
// unknown epochs, CHALLENGEs and RESPONSEs are rate limited; what a peer
// can make a node hold or send is bounded (Options: MaxDatagramIn,
// MaxBufferBytes, MaxPeers, MaxFlowsPerOrigin, ResendRate,
// MinBulkInterval), and an Options.Policy decides what of a peer's flows
// enters the external cache. Every drop is counted by kind in
// PeerStats.Drops. Without a key the node runs insecure: the same
// protocol, unauthenticated. docs/SECURITY.md has the threat model.
//
// Accepting a peer's epoch (its first contact, or its return after a
// restart) makes the receiver ask that peer for a bulk, so a node that
// starts or returns gets every peer's table, and every peer gets its table
// when it accepts the node's new epoch.
//
// # Concurrency
//
// A Node's state is guarded by one mutex. Run handles one event at a time
// (a datagram, a change notification, a timer tick) on the goroutine that
// called it, holding the mutex for the event; it starts no goroutine.
// Stats, Status, Bulk and RequestResync are safe to call from any goroutine
// at any time and do not block on the network (Stats and Status wait for
// the event in hand, Bulk and RequestResync only signal Run). The caches
// are called with the node's mutex held and no lock of theirs held across
// calls. Run is the single reader of the internal cache's Changed channel
// and of the transport's Packets channel. Transports must not block in Send
// or SendTo and must not retain the buffer passed to them; see Transport.
//
// # Source layout
//
// node.go: Options, Node, Run's event loop and the exported methods;
// dispatch.go: datagram verification and the single switch that maps a
// message type to its handler; handshake.go: epoch keys, challenges and
// responses; receive.go: in-order delivery, ACK and NACK; send.go: batching,
// sealing, NACK repair; bulk.go: bulk transfers; ring.go: the resend queue;
// wire.go: the wire codec; crypto.go: keys, sealing, the replay window;
// limit.go: rate limits; names.go: node name checks and escaping;
// expect.go: expectation replication.
package sync
