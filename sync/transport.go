package sync

// Packet is one datagram received by a transport.
type Packet struct {
	// From is the sender's transport address, in the form SendTo takes.
	From string
	// Data is the datagram. It belongs to the receiver of the Packet.
	Data []byte
}

// Transport carries datagrams between nodes. Implementations: UDP unicast
// (NewUDP), UDP multicast (NewMulticast) and the in-memory MemNetwork for
// tests.
//
// Contracts: Send and SendTo never block for long (a full socket buffer
// drops the datagram, as the network would) and do not retain b after they
// return. Datagrams may be lost, duplicated or reordered; the Node repairs
// that. Packets is read by one goroutine. Close makes Packets' channel
// close, interrupts blocked reads, and is safe to call twice. Every method
// is safe for concurrent use.
type Transport interface {
	// Send sends one datagram to every current peer (unicast: to each;
	// multicast: once to the group).
	Send(b []byte) error
	// SendTo sends one datagram to one peer, named by a Packet's From
	// (replies: ACK, NACK, CHALLENGE, RESPONSE).
	SendTo(peer string, b []byte) error
	// Packets returns the channel of received datagrams. It is closed when
	// the transport is closed.
	Packets() <-chan Packet
	// Peers returns the addresses Send currently sends to.
	Peers() []string
	// Close stops the transport.
	Close() error
}

// Deliverer is a Transport that can hand each received datagram to a
// function, called on its receive goroutine, instead of sending it on the
// Packets channel (which still closes when the transport does). A Node
// uses it when its transport has it: a datagram is then handled where it
// was read, without waking a second goroutine (on a busy standby, one
// goroutine handoff per datagram was a measurable share of its CPU). fn
// nil goes back to the channel.
type Deliverer interface {
	Deliver(fn func(Packet))
}
