package daemon

import (
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ctsyncd/ctsyncd/cache"
	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/peerpolicy"
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
		return ctsync.NewUDP(ctsync.UDPOptions{Listen: c.Listen, Peers: c.Peers, Interface: c.Interface})
	case "multicast":
		return ctsync.NewMulticast(ctsync.MulticastOptions{Group: c.Group, Interface: c.Interface})
	case "gossip":
		return ctsync.NewGossip(ctsync.GossipOptions{
			NodeName: d.cfg.Node.Name, Listen: c.Listen, Seeds: c.Peers, Key: d.key, Interface: c.Interface,
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
	first, err := ctsync.NewUDP(ctsync.UDPOptions{Listen: c.Listen, Peers: c.Peers, Interface: c.Interface})
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", c.Interface, err)
	}
	trs := []ctsync.Transport{first}
	for _, l := range c.Link {
		tr, err := ctsync.NewUDP(ctsync.UDPOptions{Listen: l.Listen, Peers: l.Peers, Interface: l.Interface})
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
		MaxBufferBytes:    int64(c.MaxBufferBytes),
		MaxPeers:          c.MaxPeers,
		MaxFlowsPerOrigin: c.MaxFlowsPerOrigin,
		ResendRate:        int(c.ResendRate),
		Policy:            d.policy,
		Logger:            d.log.With("part", "sync"),
		Applied:           d.injectHook(),
	}, d.internal, d.external, tr)
}

// currentFilter is the daemon's filter as it is now (replaced on reload),
// for the receive policy.
type currentFilter struct{ d *Daemon }

func (c currentFilter) Match(f *flow.Flow) bool { return c.d.filter.Load().Match(f) }

// newPolicy builds the receive policy of the config's [peer_policy]; the
// daemon's own filter applies to peers' flows too.
func (d *Daemon) newPolicy(c config.PeerPolicy) (*peerpolicy.Policy, error) {
	var opt peerpolicy.Options
	opt.Filter = currentFilter{d}
	// The helpers of sync.expectation_helpers may ride on peers' flows too:
	// an expectation is of no use without its master and the master's
	// helper.
	opt.Helpers = slices.Concat(c.Helpers, d.cfg.Sync.ExpectationHelpers)
	for _, m := range []struct {
		key        string
		val        string
		strippable bool
		dst        *peerpolicy.Mode
	}{
		{"peer_policy.mark", c.Mark, true, &opt.Mark},
		{"peer_policy.labels", c.Labels, true, &opt.Labels},
		{"peer_policy.zone", c.Zone, false, &opt.Zone},
		{"peer_policy.nat", c.NAT, false, &opt.NAT},
	} {
		mode, err := peerpolicy.ParseMode(m.val, m.strippable)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.key, err)
		}
		*m.dst = mode
	}
	opt.TimeoutFactor = uint32(c.TimeoutFactor)
	opt.KeepFixedTimeout = c.KeepFixedTimeout
	return peerpolicy.New(opt)
}

// externalView is one line of `dump external`.
func externalLine(e *cache.ExternalEntry, now time.Time) (string, uint32) {
	elapsed := uint32(max(0, now.Sub(e.Received)/time.Second))
	return ctsync.Escape(e.Origin), e.Flow.Timeout - min(e.Flow.Timeout, elapsed)
}

// policyRef is the current receive policy, replaced whole on reload.
type policyRef struct {
	p atomic.Pointer[peerpolicy.Policy]
}

// Admit applies the current policy (see peerpolicy.Policy.Admit). New
// always sets one; without one (a Daemon not made by New) every flow is
// admitted, as sync and failover do without a policy.
func (r *policyRef) Admit(origin string, f *flow.Flow) bool {
	if r == nil {
		return true
	}
	p := r.p.Load()
	return p == nil || p.Admit(origin, f)
}
