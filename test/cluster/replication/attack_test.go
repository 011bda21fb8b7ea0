//go:build cluster

package replication_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/internal/daemontest"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

// capture records the UDP payloads that arrive in ns on ifc from src to
// port 3780, until the returned stop function is called.
func capture(t *testing.T, ns *netnstest.NS, ifc, src string) (stop func() [][]byte) {
	t.Helper()
	netnstest.Need(t, "tcpdump")
	file := filepath.Join(t.TempDir(), "sync.pcap")
	// -Z root: tcpdump's own user may not write into the test's directory.
	cmd := ns.Cmd("tcpdump", "-Z", "root", "-i", ifc, "-U", "-n", "-w", file, "udp and dst port 3780 and src host "+src)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				close(listening)
				break
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case <-listening:
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not start listening")
	}
	return func() [][]byte {
		time.Sleep(time.Second) // let the last packets be written
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return pcapUDPPayloads(t, b)
	}
}

// pcapUDPPayloads extracts the UDP payloads of an Ethernet/IPv4 pcap file.
func pcapUDPPayloads(t *testing.T, b []byte) [][]byte {
	t.Helper()
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 {
		t.Fatalf("not a little-endian pcap file (%d bytes)", len(b))
	}
	var out [][]byte
	b = b[24:]
	for len(b) >= 16 {
		n := int(binary.LittleEndian.Uint32(b[8:12]))
		if len(b) < 16+n {
			break
		}
		pkt := b[16 : 16+n]
		b = b[16+n:]
		if len(pkt) < 14+20+8 || binary.BigEndian.Uint16(pkt[12:14]) != 0x0800 {
			continue
		}
		ip := pkt[14:]
		ihl := int(ip[0]&0xf) * 4
		if len(ip) < ihl+8 || ip[9] != 17 {
			continue
		}
		out = append(out, append([]byte(nil), ip[ihl+8:]...))
	}
	return out
}

// replay sends datagrams to dst from a socket bound to src in ns.
func replay(t *testing.T, ns *netnstest.NS, src, dst string, datagrams [][]byte) {
	t.Helper()
	var c *net.UDPConn
	ns.Do(t, func() {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)})
		if err != nil {
			t.Fatal(err)
		}
	})
	defer c.Close()
	to, _ := net.ResolveUDPAddr("udp4", dst)
	for _, d := range datagrams {
		if _, err := c.WriteToUDP(d, to); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
}

func (n *node) dropsOf(t *testing.T, peer string) uint64 {
	p := n.peers(t)[peer]
	d := p.Drops
	return d.Replay + d.OldEpoch + d.Unverified + d.Duplicate + d.Auth + d.Window
}

// TestClusterReplicationReplay: datagrams captured on the sync link and
// replayed after the flows they carried were destroyed resurrect nothing,
// neither at a running receiver nor at one that restarted since.
func TestClusterReplicationReplay(t *testing.T) {
	a, b := pair(t)
	key := writeKey(t)
	a.start(t, syncConfig("udp", a, []*node{b}, key))
	b.start(t, syncConfig("udp", b, []*node{a}, key))
	stop := capture(t, b.ns, "sync0", "10.200.0.1")
	victims := mkFlows(0, 200)
	write(t, a.ns, victims)
	converged(t, a, b)
	captured := stop()
	if len(captured) < 5 {
		t.Fatalf("captured %d datagrams", len(captured))
	}
	remove(t, a.ns, victims)
	keep := mkFlows(1000, 50)
	write(t, a.ns, keep)
	converged(t, a, b)

	for round, restart := range []bool{false, true} {
		if restart {
			b.proc.Stop()
			b.proc.Restart()
			converged(t, a, b)
		}
		before := b.dropsOf(t, a.name)
		replay(t, a.ns, "10.200.0.1", b.addr, captured)
		time.Sleep(3 * time.Second)
		ext := filterOrigin(b.proc.Lines("dump", "external"), a.name)
		if len(ext) != len(keep) {
			t.Errorf("round %d (restart %v): B holds %d flows from A after the replay, want %d", round, restart, len(ext), len(keep))
		}
		after := b.dropsOf(t, a.name)
		t.Logf("round %d (restart %v): %d datagrams replayed, %d counted as dropped; drops %+v", round, restart, len(captured), after-before, b.peers(t)[a.name].Drops)
		if after-before == 0 {
			t.Errorf("round %d: replayed datagrams not counted as dropped", round)
		}
	}
	converged(t, a, b)
}

// TestClusterReplicationMulticastInterface: a valid node's multicast
// datagrams arriving on another interface than the sync link are ignored.
func TestClusterReplicationMulticastInterface(t *testing.T) {
	a, b := pair(t)
	c := &node{name: "fw-c", ns: netnstest.New(t), addr: "10.201.0.3:3780"}
	// C reaches B only over B's "other0", never over its sync link.
	netnstest.Veth(t, c.ns, "sync0", "10.201.0.3/24", b.ns, "other0", "10.201.0.2/24")
	key := writeKey(t)
	a.start(t, syncConfig("multicast", a, nil, key))
	b.start(t, syncConfig("multicast", b, nil, key))
	c.start(t, syncConfig("multicast", c, nil, key))
	// Make the kernel accept the group on other0 too (a membership there,
	// on another port: the transport's socket owns the group's port), so
	// that only ctsyncd's socket (bound to sync0) and its own check stand
	// between C's datagrams and B's cache.
	var g *net.UDPConn
	b.ns.Do(t, func() {
		ifc, err := net.InterfaceByName("other0")
		if err != nil {
			t.Fatal(err)
		}
		if g, err = net.ListenMulticastUDP("udp4", ifc, &net.UDPAddr{IP: net.ParseIP("225.0.0.50"), Port: 3799}); err != nil {
			t.Fatal(err)
		}
	})
	defer g.Close()
	stop := capture(t, b.ns, "other0", "10.201.0.3")
	write(t, a.ns, mkFlows(0, 300))
	write(t, c.ns, mkFlows(5000, 300))
	converged(t, a, b)
	// C's datagrams do reach B's namespace on other0 ...
	time.Sleep(3 * time.Second)
	if n := len(stop()); n == 0 {
		t.Fatal("no datagram from C arrives on B's other0")
	}
	// ... and are not applied.
	if n := len(filterOrigin(b.proc.Lines("dump", "external"), c.name)); n != 0 {
		t.Errorf("B applied %d flows that arrived on other0", n)
	}
}

// gossipCluster makes n namespaces on one sync bridge (10.200.0.i/24).
func gossipCluster(t *testing.T, n int) []*node {
	t.Helper()
	sw := netnstest.New(t)
	sw.Exec(t, "ip", "link", "add", "br0", "type", "bridge")
	sw.Exec(t, "ip", "link", "set", "br0", "up")
	var nodes []*node
	for i := 1; i <= n; i++ {
		nd := &node{name: fmt.Sprintf("fw-%c", 'a'+i-1), ns: netnstest.New(t), addr: fmt.Sprintf("10.200.0.%d:3780", i)}
		netnstest.Veth(t, nd.ns, "sync0", fmt.Sprintf("10.200.0.%d/24", i), sw, fmt.Sprintf("p%d", i), "")
		sw.Exec(t, "ip", "link", "set", fmt.Sprintf("p%d", i), "master", "br0")
		nodes = append(nodes, nd)
	}
	return nodes
}

// TestClusterGossipThreeNodes: a three-node gossip cluster converges; when a
// node is killed the other two keep its flows and still replicate between
// them; when it comes back it converges again.
func TestClusterGossipThreeNodes(t *testing.T) {
	nodes := gossipCluster(t, 3)
	key := writeKey(t)
	for i, nd := range nodes {
		var seeds []*node
		for j, o := range nodes {
			if j != i {
				seeds = append(seeds, o)
			}
		}
		nd.start(t, syncConfig("gossip", nd, seeds, key))
	}
	for i, nd := range nodes {
		write(t, nd.ns, mkFlows(10000*i, 2000))
	}
	all := func() {
		for _, src := range nodes {
			for _, dst := range nodes {
				if src != dst {
					converged(t, src, dst)
				}
			}
		}
	}
	all()
	a, b, c := nodes[0], nodes[1], nodes[2]
	c.proc.Kill()
	daemontest.WaitFor(t, converge, "A and B to see C down", func() (bool, string) {
		pa, pb := a.peers(t)[c.name], b.peers(t)[c.name]
		return !pa.Up && !pb.Up, fmt.Sprintf("A sees C up=%v, B sees C up=%v", pa.Up, pb.Up)
	})
	for _, nd := range []*node{a, b} {
		if n := len(filterOrigin(nd.proc.Lines("dump", "external"), c.name)); n != 2000 {
			t.Errorf("%s keeps %d of C's 2000 flows after C died", nd.name, n)
		}
	}
	write(t, a.ns, mkFlows(40000, 500))
	converged(t, a, b)
	c.proc.Restart()
	all()
}
