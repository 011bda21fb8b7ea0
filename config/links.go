package config

import (
	"fmt"
	"net/netip"
)

// validateLinks checks the [[sync.link]] tables: udp only, each with a
// valid interface, a listen address unlike every other link's, and as many
// peers as sync.peers, none of them another link's peer address.
func (s Sync) validateLinks(v *validator) {
	if len(s.Link) == 0 {
		return
	}
	if s.Transport != "udp" {
		v.add("sync.link", "redundant sync links need transport = \"udp\" (this is %q)", s.Transport)
		return
	}
	if s.Interface == "" {
		v.add("sync.interface", "required with [[sync.link]]: the first link's interface")
	}
	listens := map[netip.AddrPort]string{}
	if ap, err := parseAddrPort(s.Listen); err == nil {
		listens[ap] = "sync.listen"
	}
	peers := map[netip.AddrPort]string{}
	for _, p := range s.Peers {
		if ap, err := parseAddrPort(p); err == nil {
			peers[ap] = "sync.peers"
		}
	}
	ifaces := map[string]string{s.Interface: "sync.interface"}
	for i, l := range s.Link {
		key := func(k string) string { return fmt.Sprintf("sync.link.%d.%s", i, k) }
		if l.Interface == "" {
			v.add(key("interface"), "required: the link's network interface")
		} else if err := checkIfName(l.Interface); err != nil {
			v.add(key("interface"), "%v", err)
		} else if other, dup := ifaces[l.Interface]; dup {
			v.add(key("interface"), "%q is also %s: a redundant link needs its own interface", l.Interface, other)
		} else {
			ifaces[l.Interface] = key("interface")
		}
		if ap, err := parseAddrPort(l.Listen); err != nil {
			v.add(key("listen"), "%v", err)
		} else if other, dup := listens[ap]; dup {
			v.add(key("listen"), "%q is also %s", l.Listen, other)
		} else {
			listens[ap] = key("listen")
		}
		if len(l.Peers) != len(s.Peers) {
			v.add(key("peers"), "%d peers, but sync.peers has %d: list the same peers, in the same order, by their addresses on this link", len(l.Peers), len(s.Peers))
		}
		for j, p := range l.Peers {
			ap, err := parseAddrPort(p)
			if err != nil {
				v.addElem(key("peers"), j, "%v", err)
				continue
			}
			if other, dup := peers[ap]; dup {
				v.addElem(key("peers"), j, "%q is also in %s", p, other)
				continue
			}
			peers[ap] = key("peers")
		}
	}
}
