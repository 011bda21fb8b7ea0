#!/usr/bin/env bash
# ctsyncd demo: builds the binaries, makes a small network in namespaces
#   client (10.0.1.2) — fw (router, runs ctsyncd) — server (10.0.2.2)
# opens real TCP connections and a ping through fw, and shows what ctsyncd
# cached from the kernel's conntrack table. Tears everything down at the end.
# Run as root on Debian with Go installed:  sudo ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

id=$$
C=ctdemo-c-$id; F=ctdemo-fw-$id; S=ctdemo-s-$id
work=$(mktemp -d /tmp/ctsyncd-demo.XXXXXX)
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for n in $C $F $S; do ip netns del "$n" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building ctsyncd and ctsyncctl"
go build -o "$work/ctsyncd" ./cmd/ctsyncd
go build -o "$work/ctsyncctl" ./cmd/ctsyncctl

step "network: client — fw — server in namespaces"
for n in $C $F $S; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add dc$id type veth peer name df$id
ip link set dc$id netns $C name eth0; ip link set df$id netns $F name lan0
ip link add ds$id type veth peer name dg$id
ip link set ds$id netns $S name eth0; ip link set dg$id netns $F name lan1
ip -n $C addr add 10.0.1.2/24 dev eth0; ip -n $C link set eth0 up; ip -n $C route add default via 10.0.1.1
ip -n $F addr add 10.0.1.1/24 dev lan0; ip -n $F link set lan0 up
ip -n $F addr add 10.0.2.1/24 dev lan1; ip -n $F link set lan1 up
ip -n $S addr add 10.0.2.2/24 dev eth0; ip -n $S link set eth0 up; ip -n $S route add default via 10.0.2.1
ip netns exec $F sysctl -qw net.ipv4.ip_forward=1
ip netns exec $F nft -f - <<'NFT'
table inet filter {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
		iifname "lan0" ct state new accept
	}
}
NFT

step "starting ctsyncd in fw"
cat >"$work/ctsyncd.toml" <<TOML
[node]
name = "fw-demo"

[control]
socket = "$work/ctsyncd.sock"

[sync]
disabled = true   # one node: this demo shows the kernel side

[kernel]
resync_interval = "5s"
TOML
ip netns exec $F "$work/ctsyncd" --config "$work/ctsyncd.toml" 2>"$work/ctsyncd.log" &
pids+=($!)
ctl() { "$work/ctsyncctl" --socket "$work/ctsyncd.sock" "$@"; }
for _ in $(seq 50); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
ctl status

step "traffic: 3 TCP connections (socat) and a ping, client → server through fw"
ip netns exec $S socat TCP-LISTEN:8080,fork,reuseaddr EXEC:cat >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
for i in 1 2 3; do
  (while sleep 0.2; do echo "hello $i"; done) | ip netns exec $C socat - TCP:10.0.2.2:8080 >/dev/null 2>&1 &
  pids+=($!)
done
ip netns exec $C ping -c 2 -i 0.2 10.0.2.2 | tail -n 2
sleep 1

step "the kernel's table in fw (conntrack -L)"
ip netns exec $F conntrack -L 2>/dev/null

step "ctsyncd's internal cache (ctsyncctl dump internal)"
ctl dump internal

step "counters (ctsyncctl stats)"
ctl stats

step "ctsyncd's log"
cat "$work/ctsyncd.log"
echo
echo "demo done: tearing down"
