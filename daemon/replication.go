package daemon

import (
	"fmt"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/config"
	ctsync "github.com/ctsyncd/ctsyncd/sync"
)

// loadKey reads the pre-shared sync key, or returns nil when the config
// runs insecure or without sync.
func loadKey(c config.Sync) (*[ctsync.KeyLen]byte, error) {
	if c.Disabled || c.Insecure {
		return nil, nil
	}
	k, err := ctsync.LoadKey(c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("sync.key_file: %w", err)
	}
	return &k, nil
}

// newTransport opens the transport the config names.
func (d *Daemon) newTransport() (ctsync.Transport, error) {
	c := d.cfg.Sync
	switch c.Transport {
	case "udp":
		if len(c.Link) > 0 {
			return d.newLinks()
		}
		return ctsync.NewUDP(ctsync.UDPOptions{Listen: c.Listen, Peers: c.Peers})
	case "multicast":
		return ctsync.NewMulticast(ctsync.MulticastOptions{Group: c.Group, Interface: c.Interface})
	case "gossip":
		return ctsync.NewGossip(ctsync.GossipOptions{
			NodeName: d.cfg.Node.Name, Listen: c.Listen, Seeds: c.Peers, Key: d.key,
			Logger: d.log.With("part", "memberlist"),
		})
	}
	return nil, fmt.Errorf("sync.transport: %q is not one of udp, multicast, gossip", c.Transport)
}

// newLinks opens one UDP transport per sync link and joins them
// (redundant links: every datagram on every link).
func (d *Daemon) newLinks() (ctsync.Transport, error) {
	c := d.cfg.Sync
	names := []string{c.Interface}
	first, err := ctsync.NewUDP(ctsync.UDPOptions{Listen: c.Listen, Peers: c.Peers})
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", c.Interface, err)
	}
	trs := []ctsync.Transport{first}
	for _, l := range c.Link {
		tr, err := ctsync.NewUDP(ctsync.UDPOptions{Listen: l.Listen, Peers: l.Peers})
		if err != nil {
			for _, t := range trs {
				t.Close()
			}
			return nil, fmt.Errorf("link %s: %w", l.Interface, err)
		}
		trs = append(trs, tr)
		names = append(names, l.Interface)
	}
	links, err := ctsync.NewLinks(names, trs, c.PeerTimeout.Duration)
	if err != nil {
		for _, t := range trs {
			t.Close()
		}
		return nil, err
	}
	d.links = links
	return links, nil
}

// newNode builds the replication node over tr.
func (d *Daemon) newNode(tr ctsync.Transport) (*ctsync.Node, error) {
	c := d.cfg.Sync
	return ctsync.New(ctsync.Options{
		NodeName:          d.cfg.Node.Name,
		Key:               d.key,
		MTU:               c.MTU,
		ResendQueue:       c.ResendQueue,
		AckInterval:       c.AckInterval.Duration,
		HeartbeatInterval: c.HeartbeatInterval.Duration,
		PeerTimeout:       c.PeerTimeout.Duration,
		Logger:            d.log.With("part", "sync"),
		Applied:           d.injectHook(),
	}, d.internal, d.external, tr)
}

// SyncStatus is the replication part of `ctsyncctl status`.
type SyncStatus struct {
	ctsync.NodeStatus
	Transport     string `json:"transport"`
	ExternalFlows int    `json:"external_flows"`
	Peers         int    `json:"peers"`
	PeersUp       int    `json:"peers_up"`
	// Links is the state of each sync link when there are several.
	Links []ctsync.LinkStatus `json:"links,omitempty"`
}

func (d *Daemon) syncStatus() *SyncStatus {
	if d.node == nil {
		return nil
	}
	s := &SyncStatus{NodeStatus: d.node.Status(), Transport: d.cfg.Sync.Transport, ExternalFlows: d.external.Len()}
	if d.links != nil {
		s.Links = d.links.Status()
	}
	for _, p := range d.node.Stats() {
		s.Peers++
		if p.Up {
			s.PeersUp++
		}
	}
	return s
}

// externalView is one line of `dump external`.
func externalLine(e *cache.ExternalEntry, now time.Time) (string, uint32) {
	elapsed := uint32(max(0, now.Sub(e.Received)/time.Second))
	return e.Origin, e.Flow.Timeout - min(e.Flow.Timeout, elapsed)
}
