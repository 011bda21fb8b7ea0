package cluster

// HelperRuleset is the firewalls' ruleset for the protocols whose data
// connections conntrack helpers announce (FTP, TFTP): the ftp helper is
// assigned to new client connections to TCP port 21 and the tftp helper to
// UDP port 69, and forward accepts new connections only to those ports
// from the client side; anything else must be established or RELATED (an
// expectation), counted by the "related" rule. Input is Ruleset's. With
// snat, client traffic leaves with the server-side VIP as source.
func HelperRuleset(snat bool) string {
	r := `table inet fw {
	ct helper ftp-standard {
		type "ftp" protocol tcp;
	}
	ct helper tftp-standard {
		type "tftp" protocol udp;
	}
	chain prerouting {
		type filter hook prerouting priority filter;
		iifname "lan0" tcp dport 21 ct helper set "ftp-standard"
		iifname "lan0" udp dport 69 ct helper set "tftp-standard"
	}
	chain input {
		type filter hook input priority filter; policy drop;
		iifname "lo" accept
		ct state established,related accept
		meta l4proto vrrp accept
		meta l4proto { icmp, ipv6-icmp } accept
		iifname "sync0" accept
		counter comment "input dropped"
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established accept
		ct state related counter accept comment "related"
		iifname "lan0" tcp dport 21 tcp flags & (fin|syn|rst|ack) == syn ct state new accept
		iifname "lan0" udp dport 69 ct state new accept
		meta l4proto { icmp, ipv6-icmp } accept
		counter comment "dropped"
	}
`
	if snat {
		r += `	chain postrouting {
		type nat hook postrouting priority srcnat;
		oifname "lan1" meta nfproto ipv4 snat ip to ` + ServerVIPv4 + `
		oifname "lan1" meta nfproto ipv6 snat ip6 to ` + ServerVIPv6 + `
	}
`
	}
	return r + "}\n"
}
