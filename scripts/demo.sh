#!/usr/bin/env bash
# ctsyncd demo: an HA firewall pair in network namespaces.
#
#   client 10.0.1.10 ── lan-c ──┬── fw-a (lan0 .2) ──┬── lan-s ── server 10.0.2.10
#                               └── fw-b (lan0 .3) ──┘
#                                   fw-a sync0 10.200.0.1 ═══ fw-b sync0 10.200.0.2
#
# Real keepalived (VRRP) holds the virtual gateways 10.0.1.1 and 10.0.2.1 on
# the master; its notify hook is `ctsyncctl keepalived`. The firewalls'
# forward chains accept only established flows plus new connections from the
# client side, and nf_conntrack_tcp_loose=0: without the replicated state, a
# stream cannot survive the move. The demo runs a live TCP stream through
# fw-a, kills fw-a (keepalived, ctsyncd and its links), and shows the stream
# going on through fw-b. Then it tears everything down.
#
# Run as root on Debian with Go installed:  sudo ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

id=$$
NS_C=ctd-client-$id NS_S=ctd-server-$id NS_A=ctd-fwa-$id NS_B=ctd-fwb-$id NS_SW=ctd-sw-$id
work=$(mktemp -d /tmp/ctsyncd-demo.XXXXXX)
pids=()
# kill_ns NS: kills every process left in namespace NS. A process that exits
# meanwhile (a keepalived child following its parent) is not an error.
kill_ns() {
  local p
  for p in $(ip netns pids "$1" 2>/dev/null || true); do kill -9 "$p" 2>/dev/null || true; done
}
# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it
# succeeds; after SECONDS the demo stops, saying what it waited for.
wait_for() {
  local secs=$1 what=$2 i; shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  echo "demo: gave up after ${secs}s waiting for $what" >&2
  return 1
}
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for n in $NS_C $NS_S $NS_A $NS_B $NS_SW; do kill_ns "$n"; done
  for _ in $(seq 50); do
    [ -z "$(for n in $NS_C $NS_S $NS_A $NS_B $NS_SW; do ip netns pids "$n" 2>/dev/null; done)" ] && break
    sleep 0.1
  done
  for n in $NS_C $NS_S $NS_A $NS_B $NS_SW; do ip netns del "$n" 2>/dev/null; done
  # veth ends still in this namespace (a setup that stopped half way)
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^(v${id}[xy][0-9]+|s[ab]${id})\$"); do
    ip link del "$l" 2>/dev/null
  done
  if [ "${status:-1}" -ne 0 ] && [ -d "$work" ]; then
    for f in "$work"/*.log; do echo "--- $f"; tail -n 20 "$f"; done >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
inns() { local n=$1; shift; ip netns exec "$n" "$@"; }

step "building ctsyncd and ctsyncctl"
go build -o "$work/ctsyncd" ./cmd/ctsyncd
go build -o "$work/ctsyncctl" ./cmd/ctsyncctl

step "network: client, server, two firewalls, LAN bridges, a sync link"
for n in $NS_C $NS_S $NS_A $NS_B $NS_SW; do ip netns add "$n"; ip -n "$n" link set lo up; done
inns $NS_SW ip link add brc type bridge; inns $NS_SW ip link set brc up
inns $NS_SW ip link add brs type bridge; inns $NS_SW ip link set brs up
k=0
plug() { # plug NS IFNAME BRIDGE ADDR
  k=$((k+1)); local a=v${id}x$k b=v${id}y$k
  ip link add "$a" type veth peer name "$b"
  ip link set "$a" netns "$1" name "$2"; ip -n "$1" addr add "$4" dev "$2"; ip -n "$1" link set "$2" up
  ip link set "$b" netns $NS_SW; ip -n $NS_SW link set "$b" master "$3" up
}
plug $NS_C eth0 brc 10.0.1.10/24
plug $NS_A lan0 brc 10.0.1.2/24
plug $NS_B lan0 brc 10.0.1.3/24
plug $NS_S eth0 brs 10.0.2.10/24
plug $NS_A lan1 brs 10.0.2.2/24
plug $NS_B lan1 brs 10.0.2.3/24
ip link add sa$id type veth peer name sb$id
ip link set sa$id netns $NS_A name sync0; ip -n $NS_A addr add 10.200.0.1/24 dev sync0; ip -n $NS_A link set sync0 up
ip link set sb$id netns $NS_B name sync0; ip -n $NS_B addr add 10.200.0.2/24 dev sync0; ip -n $NS_B link set sync0 up
ip -n $NS_C route add default via 10.0.1.1
ip -n $NS_S route add default via 10.0.2.1

"$work/ctsyncctl" keygen >"$work/sync.key"; chmod 600 "$work/sync.key"
for fw in a b; do
  ns=$NS_A; self=10.200.0.1; peer=10.200.0.2; prio=150
  [ $fw = b ] && { ns=$NS_B; self=10.200.0.2; peer=10.200.0.1; prio=100; }
  inns "$ns" sysctl -qw net.ipv4.ip_forward=1 net.netfilter.nf_conntrack_tcp_loose=0 2>/dev/null || {
    inns "$ns" nft -f - <<<'table inet probe { chain c { type filter hook output priority 0; ct state new accept; } }'
    inns "$ns" nft delete table inet probe
    inns "$ns" sysctl -qw net.ipv4.ip_forward=1 net.netfilter.nf_conntrack_tcp_loose=0
  }
  inns "$ns" nft -f - <<'NFT'
table inet filter {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
		iifname "lan0" ct state new tcp flags & (syn | ack) == syn accept
		iifname "lan0" ct state new meta l4proto { udp, icmp } accept
	}
}
NFT
  cat >"$work/$fw.toml" <<TOML
[node]
name = "fw-$fw"
[control]
socket = "$work/$fw.sock"
[sync]
transport = "udp"
interface = "sync0"
listen = "$self:3780"
peers = ["$peer:3780"]
key_file = "$work/sync.key"
[failover]
purge_timeout = "60s"
ready_file = "$work/$fw.ready"
TOML
  cat >"$work/$fw.keepalived.conf" <<KA
global_defs {
	script_user root
	enable_script_security
	vrrp_garp_master_delay 1
}
track_file ctsyncd_ready {
	file "$work/$fw.ready"
	weight -60
	init_file 1
}
vrrp_sync_group G {
	group { LAN_C LAN_S }
	notify "$work/ctsyncctl --socket $work/$fw.sock keepalived"
	track_file { ctsyncd_ready }
}
vrrp_instance LAN_C {
	state BACKUP
	interface lan0
	virtual_router_id 51
	priority $prio
	advert_int 0.2
	nopreempt
	virtual_ipaddress { 10.0.1.1/24 dev lan0 }
}
vrrp_instance LAN_S {
	state BACKUP
	interface lan1
	virtual_router_id 52
	priority $prio
	advert_int 0.2
	nopreempt
	virtual_ipaddress { 10.0.2.1/24 dev lan1 }
}
KA
  chmod 600 "$work/$fw.keepalived.conf"
done

step "starting ctsyncd and keepalived on both firewalls"
inns $NS_A "$work/ctsyncd" --config "$work/a.toml" 2>"$work/a.log" & pids+=($!)
inns $NS_B "$work/ctsyncd" --config "$work/b.toml" 2>"$work/b.log" & pids+=($!)
ctl() { "$work/ctsyncctl" --socket "$work/$1.sock" "${@:2}"; }
ctl_up() { ctl "$1" status >/dev/null 2>&1; }
for fw in a b; do wait_for 20 "ctsyncd on fw-$fw" ctl_up $fw; done
start_keepalived() {
  local fw=$1 ns=$NS_A; [ "$fw" = b ] && ns=$NS_B
  inns "$ns" keepalived -P -n -l -G -f "$work/$fw.keepalived.conf" -p "$work/$ns.keepalived.pid" \
    -r "$work/$ns.vrrp.pid" >"$work/$fw.keepalived.log" 2>&1 &
  pids+=($!)
}
# master: the firewalls holding the client-side VIP on a link that is up.
master() { for n in $NS_A $NS_B; do ip -n "$n" -4 addr show dev lan0 up | grep -q 10.0.1.1/ && echo "$n"; done; return 0; }
is_master() { [ "$(master)" = "$1" ]; }
start_keepalived a
wait_for 30 "fw-a to become VRRP master" is_master $NS_A   # fw-a wins the first election
start_keepalived b
sleep 1   # fw-b joins as backup (nopreempt: fw-a stays master)
is_master $NS_A || { echo "demo: fw-a lost mastership to $(master) before the failure" >&2; exit 1; }
echo "VRRP master: $(master)"

step "a live TCP stream client → server through fw-a (one line every 50 ms, echoed back)"
inns $NS_S socat TCP-LISTEN:8080,reuseaddr,fork EXEC:cat >/dev/null 2>&1 & pids+=($!)
sleep 0.3
( i=0; while sleep 0.05; do i=$((i+1)); echo "$i"; done ) |
  inns $NS_C socat -t 30 - TCP:10.0.2.10:8080 >"$work/echo.txt" 2>"$work/socat.err" & pids+=($!)
stream_pid=$!
echoed() { wc -l <"$work/echo.txt"; }
wait_for 20 "the stream's first echoes" test -s "$work/echo.txt"
replicated() { ctl b dump external 2>/dev/null | grep -q 8080; }
wait_for 20 "the stream's flow to reach fw-b's external cache" replicated
sleep 1
echo "lines echoed so far: $(echoed)"
echo "fw-b's external cache (replicated from fw-a):"
ctl b dump external | grep 8080 || true

step "fw-a dies: keepalived and ctsyncd killed, links down"
before=$(echoed)
kill_ns $NS_A   # keepalived (parent and VRRP child) and ctsyncd
for l in lan0 lan1 sync0; do ip -n $NS_A link set "$l" down; done
wait_for 30 "fw-b to become VRRP master" is_master $NS_B || true
echo "VRRP master: $(master)"
# The stream goes on through fw-b if the state was there: wait for 20 more
# lines (one second of stream), at most 15 s.
grown() { [ "$(echoed)" -gt "$((before + 20))" ]; }
wait_for 15 "the stream to go on through fw-b" grown || true
after=$(echoed)

step "result"
echo "lines echoed before the failure: $before, after it: $after"
if [ "$after" -gt "$((before + 20))" ] && kill -0 $stream_pid 2>/dev/null; then
  echo "the TCP stream SURVIVED the failover: it now flows through fw-b"
  gap=$(awk 'NR>1 && $1!=prev+1 {print "missing lines", prev+1, "to", $1-1} {prev=$1}' "$work/echo.txt" | head -3)
  [ -n "$gap" ] && echo "$gap" || echo "no line lost (TCP retransmitted what was in flight)"
  status=0
else
  echo "the TCP stream BROKE"; cat "$work/socat.err"; status=1
fi
echo; echo "fw-b's commit, from its log:"
grep -E 'keepalived notify|commit done' "$work/b.log" | sed 's/^/  /'
echo; echo "fw-b's kernel table now:"
inns $NS_B conntrack -L -p tcp 2>/dev/null | grep 8080 || true
echo; echo "demo done: tearing down"
exit $status
