#!/usr/bin/env bash
# Takeover stall benchmark (issue 7): a live TCP stream through fwA, then
# BG idle background flows created on fwA after it (ctgen), both firewalls
# replicating; fwA dies (its LAN links go down), fwB takes the VIPs (VIP
# first, as keepalived does: the client's and server's neighbour caches are
# flushed, the equivalent of gratuitous ARP) and commits its external cache
# (ctsyncctl commit / conntrackd -c). The stream's largest gap between two
# arrivals at the server is the stall. For ctsyncd and conntrackd in turn,
# RUNS times each. Called by scripts/bench.sh (TAKEOVER=1) or alone:
#
#   sudo bench/takeover.sh BIN_DIR OUT_DIR     # BIN_DIR: ctsyncd ctsyncctl ctgen streamgap
#
# Environment: BG (default 200000), RUNS (3), DAEMONS ("ctsyncd conntrackd
# none"; none runs no daemon: the control, whose stream must break),
# BG_RATE (flows/s at which the background flows are created, default
# 50000: a pace both daemons replicate without loss, so that the takeover
# measures the commit, not a burst).
#
#   client 10.0.1.2 ─ brc ─┬─ fwA lan0 .11 ─ fwA ─ lan1 .11 ─┬─ brs ─ server 10.0.2.2
#   (gw VIP 10.0.1.1)      └─ fwB lan0 .12 ─ fwB ─ lan1 .12 ─┘       (gw VIP 10.0.2.1)
#                             fwA sync0 10.200.0.1 ── 10.200.0.2 sync0 fwB
#
# The firewalls forward with policy drop, accepting ct state
# established,related and new TCP SYNs from the client side, with
# nf_conntrack_tcp_loose=0: without the replicated entry, fwB drops the
# stream. Before the takeover ctsyncd's fwA re-reads its kernel once
# (`ctsyncctl resync`, what its periodic reconcile does every 30 s) so that
# the stream's activity, and the background flows' idleness, reach fwB.
set -euo pipefail
bin=$1
out=$2
BG=${BG:-200000}
RUNS=${RUNS:-3}
DAEMONS=${DAEMONS:-"ctsyncd conntrackd none"}
BG_RATE=${BG_RATE:-50000}
mkdir -p "$out"
id=$$
work=$(mktemp -d /tmp/cttakeover.XXXXXX)
pids=()
nss=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for n in "${nss[@]}"; do ip netns del "$n" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

key=$work/sync.key
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$key"
chmod 600 "$key"
csv=$out/takeover.csv
[ -f "$csv" ] || echo "daemon,bg,run,metric,value" >"$csv"
record() { echo "$1,$BG,$2,$3,$4" >>"$csv"; printf '   %-10s run %s  %-24s %s\n' "$1" "$2" "$3" "$4" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

ns() { ip netns add "$1"; nss+=("$1"); ip -n "$1" link set lo up; }

topology() { # SUFFIX
  local s=$1
  SW=tks-$s C=tkc-$s S=tkv-$s A=tka-$s B=tkb-$s
  for n in $SW $C $S $A $B; do ns "$n"; done
  ip -n "$SW" link add brc type bridge
  ip -n "$SW" link add brs type bridge
  ip -n "$SW" link set brc up
  ip -n "$SW" link set brs up
  local port=0
  plug() { # NS IFNAME BRIDGE ADDR
    port=$((port + 1))
    ip link add tkx$id type veth peer name tky$id
    ip link set tkx$id netns "$1" name "$2"
    ip link set tky$id netns "$SW" name "p$port"
    ip -n "$SW" link set "p$port" master "$3" up
    ip -n "$1" addr add "$4" dev "$2"
    ip -n "$1" link set "$2" up
  }
  plug "$C" eth0 brc 10.0.1.2/24
  plug "$S" eth0 brs 10.0.2.2/24
  plug "$A" lan0 brc 10.0.1.11/24
  plug "$A" lan1 brs 10.0.2.11/24
  plug "$B" lan0 brc 10.0.1.12/24
  plug "$B" lan1 brs 10.0.2.12/24
  ip link add tkx$id type veth peer name tky$id
  ip link set tkx$id netns "$A" name sync0
  ip link set tky$id netns "$B" name sync0
  ip -n "$A" addr add 10.200.0.1/24 dev sync0
  ip -n "$B" addr add 10.200.0.2/24 dev sync0
  ip -n "$A" link set sync0 up
  ip -n "$B" link set sync0 up
  ip -n "$C" route add default via 10.0.1.1
  ip -n "$S" route add default via 10.0.2.1
  for f in $A $B; do
    ip netns exec "$f" sysctl -qw net.ipv4.ip_forward=1 net.netfilter.nf_conntrack_events=1 net.netfilter.nf_conntrack_tcp_loose=0
    ip netns exec "$f" nft -f - <<'NFT'
table inet fw {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
		iifname "lan0" tcp flags & (syn | ack) == syn ct state new accept
	}
}
table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
	}
}
table ip6 nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
	}
}
NFT
  done
  ip -n "$A" addr add 10.0.1.1/24 dev lan0
  ip -n "$A" addr add 10.0.2.1/24 dev lan1
}

start_ctsyncd() { # NS NAME SELF PEER DIR
  mkdir -p "$5"
  cat >"$5/ctsyncd.toml" <<TOML
[node]
name = "$2"
[control]
socket = "$5/ctsyncd.sock"
[sync]
transport = "udp"
interface = "sync0"
listen = "$3:3780"
peers = ["$4:3780"]
key_file = "$key"
[log]
level = "warn"
TOML
  ip netns exec "$1" "$bin/ctsyncd" --config "$5/ctsyncd.toml" >/dev/null 2>"$5/ctsyncd.log" &
  started=$!
  pids+=("$started")
  for _ in $(seq 300); do "$bin/ctsyncctl" --socket "$5/ctsyncd.sock" status >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
start_conntrackd() { # NS NAME SELF PEER DIR
  mkdir -p "$5"
  local hs=$((2 * BG))
  cat >"$5/conntrackd.conf" <<CONF
Sync {
	Mode FTFW {
		ResendQueueSize 131072
	}
	UDP {
		IPv4_address $3
		IPv4_Destination_Address $4
		Port 3780
		Interface sync0
		SndSocketBuffer 4194304
		RcvSocketBuffer 8388608
		Checksum on
	}
}
General {
	HashSize $hs
	HashLimit $((4 * BG))
	LogFile $5/conntrackd.log
	Syslog off
	LockFile $5/conntrackd.lock
	UNIX {
		Path $5/conntrackd.ctl
	}
	NetlinkBufferSize 67108864
	NetlinkBufferSizeMaxGrowth 67108864
	Filter From Kernelspace {
		Address Ignore {
			IPv4_address 127.0.0.1
		}
	}
}
CONF
  ip netns exec "$1" conntrackd -C "$5/conntrackd.conf" >"$5/conntrackd.out" 2>&1 &
  started=$!
  pids+=("$started")
  for _ in $(seq 300); do conntrackd -C "$5/conntrackd.conf" -s >/dev/null 2>&1 && break; sleep 0.1; done
  chrt -o -p 0 "$started" >/dev/null
}
# none: no daemon at all, the control run: the stream must not survive.
start_none() { mkdir -p "$5"; started=; }
external_none() { echo $((BG + 1)); }
commit_none() { :; }

external_ctsyncd() { "$bin/ctsyncctl" --socket "$1/ctsyncd.sock" --json status | jq '.sync.external_flows // 0'; }
external_conntrackd() {
  conntrackd -C "$1/conntrackd.conf" -s 2>/dev/null |
    awk '$0 == "cache external:" { f = 1; next } f && /current active connections/ { print $NF; exit }'
}
commit_ctsyncd() { "$bin/ctsyncctl" --socket "$2/ctsyncd.sock" commit >"$2/commit.out" 2>&1; }
commit_conntrackd() { ip netns exec "$1" conntrackd -C "$2/conntrackd.conf" -c >"$2/commit.out" 2>&1; }

run() { # DAEMON RUN
  local d=$1 r=$2 dir=$work/$1-$2
  topology "$id-$r-${d:0:3}"
  "start_$d" "$A" fw-a 10.200.0.1 10.200.0.2 "$dir/a"
  local pa=$started
  "start_$d" "$B" fw-b 10.200.0.2 10.200.0.1 "$dir/b"
  local pb=$started
  sleep 1
  ip netns exec "$S" "$bin/streamgap" -listen 10.0.2.2:5001 >"$dir/stream.out" 2>&1 &
  local ps=$!
  pids+=("$ps")
  sleep 0.3
  ip netns exec "$C" "$bin/streamgap" -connect 10.0.2.2:5001 -interval 1ms >/dev/null 2>&1 &
  local pc=$!
  pids+=("$pc")
  sleep 1
  "$bin/ctgen" -netns "$A" -n "$BG" -mode writer -offset 1000000 -rate "$BG_RATE" >"$dir/ctgen.out"
  local want=$((BG + 1)) deadline=$(($(date +%s) + 60)) v
  while :; do
    v=$("external_$d" "$dir/b" 2>/dev/null || echo 0)
    [ "${v:-0}" -ge "$want" ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "   $d: fwB has $v of $want flows" >&2; break; fi
    sleep 0.1
  done
  record "$d" "$r" external_before "$v"
  if [ "$d" = ctsyncd ]; then
    sleep 1
    "$bin/ctsyncctl" --socket "$dir/a/ctsyncd.sock" resync >/dev/null
  fi
  sleep 2
  if [ "$d" = ctsyncd ]; then
    # Where the stream stands in fwB's commit order (least idle first).
    "$bin/ctsyncctl" --socket "$dir/b/ctsyncd.sock" --json dump external >"$work/ext.json"
    head -c 600 "$work/ext.json" >"$dir/external-sample.txt"
    record "$d" "$r" stream_rank "$(jq -s '(map(select(.dport == 5001 and .sport != 5001 and .dst == "10.0.2.2")) | .[0].idle_seconds) as $s | map(select(.idle_seconds < $s)) | length' "$work/ext.json" 2>/dev/null || echo nan)"
    rm -f "$work/ext.json"
  fi
  # fwA dies on the data plane; fwB takes the VIPs, then commits.
  local t0 t1
  t0=$(now)
  printf 'link set lan0 down\nlink set lan1 down\n' | ip -n "$A" -batch -
  printf 'addr add 10.0.1.1/24 dev lan0\naddr add 10.0.2.1/24 dev lan1\n' | ip -n "$B" -batch -
  ip -n "$C" neigh flush dev eth0 &
  ip -n "$S" neigh flush dev eth0
  wait $!
  "commit_$d" "$B" "$dir/b" || true
  t1=$(now)
  sleep 4
  kill "$ps" 2>/dev/null || true
  wait "$ps" 2>/dev/null || true
  kill "$pc" 2>/dev/null || true
  wait "$pc" 2>/dev/null || true
  local line gap ago
  line=$(cat "$dir/stream.out")
  gap=$(sed -n 's/.*max_gap_s=\([0-9.]*\).*/\1/p' <<<"$line")
  ago=$(sed -n 's/.*last_s_ago=\([0-9.]*\).*/\1/p' <<<"$line")
  record "$d" "$r" commit_cmd_s "$(elapsed "$t0" "$t1")"
  # Did the largest gap start at the takeover (not before it)?
  local gs
  gs=$(sed -n 's/.*gap_start=\([0-9:.]*\).*/\1/p' <<<"$line")
  record "$d" "$r" gap_start_minus_takeover_s "$(awk -v g="$gs" -v t="$t0" 'BEGIN { split(g, a, ":"); s = a[1] * 3600 + a[2] * 60 + a[3]; printf "%.3f", s - (t % 86400) }')"
  record "$d" "$r" stall_s "${gap:-nan}"
  # A stream that never came back: its last arrival is ~4 s old.
  record "$d" "$r" stream_alive "$(awk -v a="${ago:-99}" 'BEGIN { print (a < 1) ? 1 : 0 }')"
  if [ -n "$pa" ]; then
    kill "$pa" "$pb" 2>/dev/null || true
    wait "$pa" "$pb" 2>/dev/null || true
  fi
  mkdir -p "$out/logs/takeover-$d-$r"
  rm -f "$dir"/*/*.sock "$dir"/*/*.ctl "$dir"/*/*.lock
  cp -r "$dir"/. "$out/logs/takeover-$d-$r/"
  for n in $SW $C $S $A $B; do ip netns del "$n"; done
  nss=()
  pids=()
}

for r in $(seq "$RUNS"); do
  for d in $DAEMONS; do
    printf '\033[1m== takeover run %s/%s: %s, %s background flows\033[0m\n' "$r" "$RUNS" "$d" "$BG" >&2
    run "$d" "$r"
  done
done
