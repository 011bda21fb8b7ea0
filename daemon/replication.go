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
}

func (d *Daemon) syncStatus() *SyncStatus {
	if d.node == nil {
		return nil
	}
	s := &SyncStatus{NodeStatus: d.node.Status(), Transport: d.cfg.Sync.Transport, ExternalFlows: d.external.Len()}
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
