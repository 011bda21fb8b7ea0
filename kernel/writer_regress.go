package kernel

import "github.com/ctsyncd/ctsyncd/flow"

// tcpRank orders the TCP states along a connection's life: handshake,
// established, teardown. States a connection reaches in either order
// (FIN_WAIT, CLOSE_WAIT) share a rank.
var tcpRank = [...]uint8{
	flow.TCPSynSent:     1,
	flow.TCPSynSent2:    1,
	flow.TCPSynRecv:     2,
	flow.TCPEstablished: 3,
	flow.TCPFinWait:     4,
	flow.TCPCloseWait:   4,
	flow.TCPLastAck:     5,
	flow.TCPTimeWait:    6,
	flow.TCPClose:       7,
}

// tcpBehind tells whether f, a TCP flow, is earlier in the state machine
// than cur, the kernel's entry of the same flow: writing f would move the
// entry back (a SYN_SENT arriving after the kernel saw the SYN-ACK). Unknown
// states are never behind.
func tcpBehind(f, cur *flow.Flow) bool {
	if f.Proto != flow.ProtoTCP || cur.Proto != flow.ProtoTCP {
		return false
	}
	a, b := int(f.TCP.State), int(cur.TCP.State)
	if a >= len(tcpRank) || b >= len(tcpRank) || tcpRank[a] == 0 || tcpRank[b] == 0 {
		return false
	}
	return tcpRank[a] < tcpRank[b]
}
