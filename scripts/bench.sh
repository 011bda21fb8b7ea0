#!/usr/bin/env bash
# ctsyncd benchmark, side by side with netfilter's conntrackd (FTFW over UDP)
# and against the kernel's own limit, in one run (issue 7). Not part of the
# test run. As root on Debian with Go installed:
#
#   sudo ./scripts/bench.sh     # 100k flows, 3 runs each, stepped rates,
#                               # kernel ceiling, takeover stall (~6 min)
#   sudo N=1000000 RUNS=2 RATES="" TAKEOVER=0 TIMEOUT=90 ./scripts/bench.sh
#
# Results and their reading: BENCHMARKS.md.
#
# Environment:
#   N        flows per run (default 100000)
#   RUNS     runs per daemon and per kernel-ceiling case (default 3)
#   OUT      results directory (default bench/results/<UTC time>-n<N>)
#   TIMEOUT  seconds to wait for convergence or commit (default 120; a run
#            that does not converge is recorded as converged=0 and its
#            counts, and the harness goes on)
#   RATES    stepped-rate runs after the others: for each rate (flows/s) and
#            daemon, one run with N flows created at that pace (ctgen
#            -rate); default "25000 50000 100000 200000", "" for none
#   STEP_TIMEOUT  seconds after the last create within which a stepped
#            run must converge exactly (default 30)
#   COMMIT_TIMEOUT  ctsyncd's failover.commit_timeout (default 600s; the
#            shipped default, 30s, cuts a 1M-flow commit short; conntrackd
#            has no such bound)
#   TAKEOVER 1 (default): also run bench/takeover.sh, the stall of a live
#            TCP stream when fwB takes over with BG (200000) idle flows
#   TK_DAEMONS  daemons of the takeover runs (default "ctsyncd conntrackd none")
#   RUN0     number the runs from RUN0+1 (to add runs to an OUT that has some)
#   SUMMARY_ONLY  non-empty: only print the summary of OUT's runs.csv
#   PROFILE  non-empty: perf-record the daemons (needs perf; skews timings)
#   DAEMONS  which daemons, in turn (default "ctsyncd conntrackd
#            conntrackd_rr"; conntrackd_rr is conntrackd left on the
#            SCHED_RR 99 it picks by default, shown for reference)
#
# For every run and daemon it builds a fresh pair of namespaces, fwA and fwB,
# joined by a dedicated veth sync link (sync0, 10.200.0.1 <-> 10.200.0.2),
# starts the daemon in both, creates N flows in fwA's kernel with ctgen
# (kernel.Writer, batched creates on 2 sockets), and measures:
#   - replication: time from the first create until fwB's external cache
#     holds exactly N flows (flows/s = N / that time);
#   - CPU seconds of each daemon process (utime+stime, all threads) over the
#     replication, per 100k flows;
#   - bytes on the sync link (fwA's sync0 rx+tx, i.e. both directions) per flow;
#   - resident memory (VmRSS) growth per cached flow, fwA (internal cache)
#     and fwB (external cache);
#   - commit: `ctsyncctl commit` / `conntrackd -c` on fwB, until the command
#     returns and fwB's kernel holds N flows.
# Then the kernel ceiling: ctgen creating N flows into a fresh namespace
# with only `conntrack -E` listening, on 1 and on 2 sockets.
#
# Fairness: both daemons get 64 MiB netlink event buffers, the same UDP
# socket buffers (ctsyncd's are fixed at 8 MiB receive / 4 MiB send, so
# conntrackd gets the same), HashSize/HashLimit >= 2N for conntrackd, normal
# scheduling (conntrackd switches itself to SCHED_RR 99 at start; the harness
# puts it back to SCHED_OTHER with chrt before any flow exists), no CPU
# pinning for either. nf_conntrack_max is raised from the initial namespace.
#
# Raw results: $OUT/runs.csv (one line per run and metric), $OUT/summary.json
# and $OUT/table.md (median [min..max]).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

N=${N:-100000}
RUNS=${RUNS:-3}
TIMEOUT=${TIMEOUT:-120}
DAEMONS=${DAEMONS:-"ctsyncd conntrackd conntrackd_rr"}
RATES=${RATES-"25000 50000 100000 200000"}
STEP_TIMEOUT=${STEP_TIMEOUT:-30}
COMMIT_TIMEOUT=${COMMIT_TIMEOUT:-600s}
RUN0=${RUN0:-0}
TAKEOVER=${TAKEOVER:-1}
BG=${BG:-200000}
OUT=${OUT:-$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-n$N}

if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: run as root (namespaces, conntrack)" >&2
  exit 1
fi

# Packages: only install what is missing; never stop anything else running.
pkgs=(conntrackd conntrack nftables iproute2 jq util-linux procps)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "bench.sh: Go is not installed" >&2; exit 1; }

id=$$
work=$(mktemp -d /tmp/ctbench.XXXXXX)
bin=$work/bin
mkdir -p "$bin" "$OUT"
pids=()
nss=()

cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for n in "${nss[@]}"; do ip netns del "$n" 2>/dev/null; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

if [ -n "${SUMMARY_ONLY:-}" ]; then RUNS=0 RATES="" TAKEOVER=0; fi
log "building ctsyncd, ctsyncctl, ctgen"
for c in ctsyncd ctsyncctl ctgen; do go build -o "$bin/$c" "./cmd/$c"; done

need=$((4 * N + 100000))
cur=$(sysctl -n net.netfilter.nf_conntrack_max 2>/dev/null || echo 0)
if [ "$cur" -lt "$need" ]; then
  modprobe nf_conntrack 2>/dev/null || true
  sysctl -qw net.netfilter.nf_conntrack_max="$need"
fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# cpu PID: utime+stime of the whole process in seconds.
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat"; }
rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }
linkbytes() { ip -n "$1" -s -j link show sync0 | jq '.[0].stats64.rx.bytes + .[0].stats64.tx.bytes'; }
ktable() { ip netns exec "$1" conntrack -C 2>/dev/null || echo 0; }

csv=$OUT/runs.csv
[ -f "$csv" ] || echo "daemon,n,run,metric,value" >"$csv"
record() { echo "$1,$N,$2,$3,$4" >>"$csv"; printf '   %-10s run %s  %-24s %s\n' "$1" "$2" "$3" "$4" >&2; }

# mkns NAME: a namespace with conntrack events for every flow and a nat
# table (nf_nat loaded, so NATed flows can be created).
mkns() {
  ip netns add "$1"
  nss+=("$1")
  ip -n "$1" link set lo up
  ip netns exec "$1" sysctl -qw net.netfilter.nf_conntrack_events=1
  ip netns exec "$1" nft -f - <<'NFT'
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
}

delns() {
  ip netns del "$1" 2>/dev/null || true
  local keep=()
  for n in "${nss[@]}"; do [ "$n" = "$1" ] || keep+=("$n"); done
  nss=("${keep[@]}")
}

# stop PID: SIGTERM, then SIGKILL after 20 s.
stop() {
  local p=$1
  kill "$p" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  local keep=()
  for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  pids=("${keep[@]}")
}

# --- ctsyncd ---------------------------------------------------------------
key=$work/sync.key
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$key"
chmod 600 "$key"

ctsyncd_start() { # NS NAME SELF PEER DIR; sets started to its pid
  local ns=$1 name=$2 self=$3 peer=$4 dir=$5
  mkdir -p "$dir"
  cat >"$dir/ctsyncd.toml" <<TOML
[node]
name = "$name"

[control]
socket = "$dir/ctsyncd.sock"

[kernel]
event_buffer = "64MiB"

[sync]
transport = "udp"
interface = "sync0"
listen = "$self:3780"
peers = ["$peer:3780"]
key_file = "$key"

[failover]
commit_timeout = "${COMMIT_TIMEOUT}"

[log]
level = "warn"
TOML
  ip netns exec "$ns" "$bin/ctsyncd" --config "$dir/ctsyncd.toml" >/dev/null 2>"$dir/ctsyncd.log" &
  local p=$!
  pids+=("$p")
  for _ in $(seq 300); do
    "$bin/ctsyncctl" --socket "$dir/ctsyncd.sock" status >/dev/null 2>&1 && break
    kill -0 "$p" 2>/dev/null || { cat "$dir/ctsyncd.log" >&2; return 1; }
    sleep 0.1
  done
  started=$p
}
ctsyncd_internal() { "$bin/ctsyncctl" --socket "$1/ctsyncd.sock" --json status | jq '.internal_flows'; }
ctsyncd_external() { "$bin/ctsyncctl" --socket "$1/ctsyncd.sock" --json status | jq '.sync.external_flows // 0'; }
ctsyncd_overrun() { "$bin/ctsyncctl" --socket "$1/ctsyncd.sock" --json stats | jq '.events.overruns'; }
ctsyncd_commit() { "$bin/ctsyncctl" --socket "$2/ctsyncd.sock" commit >"$2/commit.out" 2>&1; }

# --- conntrackd ------------------------------------------------------------
hashsize=$((2 * N < 65536 ? 65536 : 2 * N))
conntrackd_start() { # NS NAME SELF PEER DIR; sets started to its pid
  local ns=$1 self=$3 peer=$4 dir=$5
  mkdir -p "$dir"
  cat >"$dir/conntrackd.conf" <<CONF
Sync {
	Mode FTFW {
		ResendQueueSize 131072
	}
	UDP {
		IPv4_address $self
		IPv4_Destination_Address $peer
		Port 3780
		Interface sync0
		SndSocketBuffer 4194304
		RcvSocketBuffer 8388608
		Checksum on
	}
}
General {
	HashSize $hashsize
	HashLimit $((4 * N))
	LogFile $dir/conntrackd.log
	Syslog off
	LockFile $dir/conntrackd.lock
	UNIX {
		Path $dir/conntrackd.ctl
	}
	NetlinkBufferSize 67108864
	NetlinkBufferSizeMaxGrowth 67108864
	Filter From Kernelspace {
		Address Ignore {
			IPv4_address 127.0.0.1
			IPv6_address ::1
		}
	}
}
CONF
  ip netns exec "$ns" conntrackd -C "$dir/conntrackd.conf" >"$dir/conntrackd.out" 2>&1 &
  local p=$!
  pids+=("$p")
  for _ in $(seq 300); do
    conntrackd -C "$dir/conntrackd.conf" -s >/dev/null 2>&1 && break
    kill -0 "$p" 2>/dev/null || { cat "$dir/conntrackd.out" >&2; return 1; }
    sleep 0.1
  done
  # conntrackd sets SCHED_RR priority 99 on itself; run it like ctsyncd.
  [ -n "${norr:-}" ] || chrt -o -p 0 "$p" >/dev/null
  started=$p
}
conntrackd_cache() { # DIR internal|external
  conntrackd -C "$1/conntrackd.conf" -s 2>/dev/null |
    awk -v c="cache $2:" '$0 == c { f = 1; next } f && /current active connections/ { print $NF; exit }'
}
conntrackd_internal() { conntrackd_cache "$1" internal; }
conntrackd_external() { conntrackd_cache "$1" external; }
conntrackd_commit() { ip netns exec "$1" conntrackd -C "$2/conntrackd.conf" -c >"$2/commit.out" 2>&1; }
# conntrackd logs this when its netlink event socket overran at full size.
conntrackd_overrun() { grep -c "likely to be losing events" "$1/conntrackd.log" || true; }

# conntrackd_rr: the same, but left on the SCHED_RR priority 99 that
# conntrackd gives itself by default (for reference; not the fair column).
conntrackd_rr_start() { norr=1 conntrackd_start "$@"; }
conntrackd_rr_internal() { conntrackd_internal "$@"; }
conntrackd_rr_external() { conntrackd_external "$@"; }
conntrackd_rr_commit() { conntrackd_commit "$@"; }
conntrackd_rr_overrun() { conntrackd_overrun "$@"; }

# waitfor SECONDS CMD...: polls every 50 ms until CMD prints N; fails on timeout.
waitn() {
  local limit=$1
  shift
  local deadline=$(($(date +%s) + limit)) v
  while :; do
    v=$("$@" 2>/dev/null || true)
    [ "${v:-0}" = "$N" ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timed out waiting for $* = $N (last: ${v:-none})" >&2
      return 1
    fi
    sleep 0.05
  done
}

# PROFILE=1: perf record (call graphs) on the daemons while they replicate
# and commit; reports land beside the logs as perf-*.txt.
profs=()
profile_start() { # WHAT PID DIR
  [ -n "${PROFILE:-}" ] && command -v perf >/dev/null || return 0
  perf record -F 999 -g -p "$2" -o "$3/perf-$1.data" >/dev/null 2>&1 &
  profs+=("$!:$3/perf-$1")
  sleep 0.3
}
profile_stop() {
  local e
  for e in "${profs[@]}"; do
    kill -INT "${e%%:*}" 2>/dev/null || true
    wait "${e%%:*}" 2>/dev/null || true
    perf report -i "${e#*:}.data" --no-children --sort dso,symbol --percent-limit 0.7 --stdio -g none \
      >"${e#*:}.txt" 2>/dev/null || true
    perf report -i "${e#*:}.data" --children --sort symbol --percent-limit 3 --stdio -g none \
      >"${e#*:}-children.txt" 2>/dev/null || true
    rm -f "${e#*:}.data"
  done
  profs=()
}

# --- one replication + commit run ----------------------------------------
pair_run() { # DAEMON RUN; RATE > 0: paced creates, no commit
  local d=$1 r=$2 lab=$1 wt=$TIMEOUT
  if [ "${RATE:-0}" -gt 0 ]; then lab="$d@$RATE"; wt=$STEP_TIMEOUT; fi
  local A=ctb-a-$id-$r B=ctb-b-$id-$r dir=$work/$d-$r
  mkns "$A"
  mkns "$B"
  ip link add ctba$id type veth peer name ctbb$id
  ip link set ctba$id netns "$A" name sync0
  ip link set ctbb$id netns "$B" name sync0
  ip -n "$A" addr add 10.200.0.1/24 dev sync0
  ip -n "$B" addr add 10.200.0.2/24 dev sync0
  ip -n "$A" link set sync0 up
  ip -n "$B" link set sync0 up

  local pa pb
  "${d}_start" "$A" fw-a 10.200.0.1 10.200.0.2 "$dir/a"
  pa=$started
  "${d}_start" "$B" fw-b 10.200.0.2 10.200.0.1 "$dir/b"
  pb=$started
  sleep 2 # peers meet, heartbeats settle
  if ! kill -0 "$pa" 2>/dev/null || ! kill -0 "$pb" 2>/dev/null; then
    echo "   $d run $r: a daemon exited at start; logs in $OUT/logs/$d-$r" >&2
    record "$lab" "$r" start_failed 1
    pair_finish
    return 0
  fi

  local ca0 cb0 ra0 rb0 by0 t0 t1 ca1 cb1 ra1 rb1 by1
  ca0=$(cpu "$pa"); cb0=$(cpu "$pb"); ra0=$(rss "$pa"); rb0=$(rss "$pb"); by0=$(linkbytes "$A")
  profile_start replicate "$pa" "$dir/a"
  profile_start replicate "$pb" "$dir/b"
  t0=$(now)
  "$bin/ctgen" -netns "$A" -n "$N" -mode writer -sockets 2 -min-timeout 7200 -rate "${RATE:-0}" >"$dir/ctgen.out"
  local tg
  tg=$(now)
  local conv=1
  waitn "$wt" "${d}_external" "$dir/b" || conv=0
  t1=$(now)
  ca1=$(cpu "$pa"); cb1=$(cpu "$pb"); by1=$(linkbytes "$A")
  profile_stop
  waitn 10 "${d}_internal" "$dir/a" || true
  sleep 1 # let acknowledgements and frees settle before reading memory
  ra1=$(rss "$pa"); rb1=$(rss "$pb")

  if ! kill -0 "$pa" 2>/dev/null || ! kill -0 "$pb" 2>/dev/null; then
    # Something outside the harness may kill daemons by name (pkill -x).
    echo "   $d run $r: a daemon died during the run; logs in $OUT/logs/$d-$r" >&2
    record "$lab" "$r" died 1
    pair_finish
    return 0
  fi
  local rep
  rep=$(elapsed "$t0" "$t1")
  record "$lab" "$r" ctgen_s "$(elapsed "$t0" "$tg")"
  record "$lab" "$r" converged "$conv"
  record "$lab" "$r" internal_flows "$("${d}_internal" "$dir/a" || echo 0)"
  record "$lab" "$r" external_flows "$("${d}_external" "$dir/b" || echo 0)"
  record "$lab" "$r" event_overrun "$("${d}_overrun" "$dir/a" || echo 0)"
  if [ "$conv" = 1 ]; then
    record "$lab" "$r" replicate_s "$rep"
    record "$lab" "$r" lag_s "$(elapsed "$tg" "$t1")"
    record "$lab" "$r" replicate_flows_per_s "$(awk -v n="$N" -v s="$rep" 'BEGIN { printf "%.0f", n / s }')"
  fi
  # Per-flow figures and commit only for runs that converged exactly.
  if [ "$conv" = 1 ]; then pair_measure; fi
  pair_finish
}

# pair_measure: the rest of pair_run (same variables, dynamic scope).
pair_measure() {
  record "$lab" "$r" cpu_sender_s_per_100k "$(awk -v a="$ca0" -v b="$ca1" -v n="$N" 'BEGIN { printf "%.3f", (b - a) * 100000 / n }')"
  record "$lab" "$r" cpu_receiver_s_per_100k "$(awk -v a="$cb0" -v b="$cb1" -v n="$N" 'BEGIN { printf "%.3f", (b - a) * 100000 / n }')"
  record "$lab" "$r" wire_bytes_per_flow "$(awk -v a="$by0" -v b="$by1" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')"
  record "$lab" "$r" rss_internal_bytes_per_flow "$(awk -v a="$ra0" -v b="$ra1" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')"
  record "$lab" "$r" rss_external_bytes_per_flow "$(awk -v a="$rb0" -v b="$rb1" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')"
  record "$lab" "$r" rss_sender_mib "$(awk -v b="$ra1" 'BEGIN { printf "%.1f", b / 1048576 }')"
  record "$lab" "$r" rss_receiver_mib "$(awk -v b="$rb1" 'BEGIN { printf "%.1f", b / 1048576 }')"

  [ "${RATE:-0}" -gt 0 ] && return 0
  # Commit fwB's external cache into fwB's (empty) kernel table.
  local k0 c0 c1 c2 cc0 cc1
  k0=$(ktable "$B")
  cc0=$(cpu "$pb")
  profile_start commit "$pb" "$dir/b"
  c0=$(now)
  local cok=1
  "${d}_commit" "$B" "$dir/b" || cok=0
  c1=$(now)
  local want=$((N + k0)) deadline=$(($(date +%s) + TIMEOUT)) k
  if [ "$cok" = 0 ]; then
    echo "   $d commit exited non-zero: $(tail -n 1 "$dir/b/commit.out")" >&2
    deadline=$(($(date +%s) + 2)) # what it wrote is in; do not wait for the rest
  fi
  while :; do
    k=$(ktable "$B")
    [ "$k" -ge "$want" ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "   $d: fwB's kernel holds $k of $want flows after commit" >&2
      break
    fi
    sleep 0.02
  done
  c2=$(now)
  cc1=$(cpu "$pb")
  profile_stop
  record "$lab" "$r" commit_ok "$cok"
  record "$lab" "$r" commit_cmd_s "$(elapsed "$c0" "$c1")"
  if [ "$cok" = 1 ] && [ "$k" -ge "$want" ]; then
    record "$lab" "$r" commit_s "$(elapsed "$c0" "$c2")"
    record "$lab" "$r" commit_flows_per_s "$(awk -v n="$N" -v s="$(elapsed "$c0" "$c2")" 'BEGIN { printf "%.0f", n / s }')"
  fi
  record "$lab" "$r" commit_kernel_flows "$((k - k0))"
  record "$lab" "$r" commit_cpu_receiver_s "$(awk -v a="$cc0" -v b="$cc1" 'BEGIN { printf "%.2f", b - a }')"
}

pair_finish() {
  if [ "$d" = ctsyncd ]; then
    "$bin/ctsyncctl" --socket "$dir/a/ctsyncd.sock" --json stats >"$dir/a/stats.json" 2>/dev/null || true
    "$bin/ctsyncctl" --socket "$dir/b/ctsyncd.sock" --json stats >"$dir/b/stats.json" 2>/dev/null || true
  else
    conntrackd -C "$dir/a/conntrackd.conf" -s >"$dir/a/stats.txt" 2>/dev/null || true
    conntrackd -C "$dir/b/conntrackd.conf" -s >"$dir/b/stats.txt" 2>/dev/null || true
  fi
  stop "$pa"
  stop "$pb"
  mkdir -p "$OUT/logs/$d-$r"
  rm -f "$dir"/*/*.sock "$dir"/*/*.ctl "$dir"/*/*.lock
  cp -r "$dir/a" "$OUT/logs/$d-$r/a"
  cp -r "$dir/b" "$OUT/logs/$d-$r/b"
  delns "$A"
  delns "$B"
}

# --- kernel ceiling ------------------------------------------------------
ceiling_run() { # SOCKETS RUN
  local s=$1 r=$2 K=ctb-k-$id-$r-$s
  mkns "$K"
  ip netns exec "$K" conntrack -E >/dev/null 2>&1 &
  local lp=$!
  pids+=("$lp")
  sleep 0.5
  local line
  line=$("$bin/ctgen" -netns "$K" -n "$N" -mode writer -sockets "$s" -min-timeout 7200)
  echo "$line" >>"$OUT/ceiling.log"
  local el
  el=$(sed -n 's/.* elapsed=\([0-9.]*\)s.*/\1/p' <<<"$line")
  record "kernel-${s}sock" "$r" commit_s "$el"
  record "kernel-${s}sock" "$r" commit_flows_per_s "$(awk -v n="$N" -v s="$el" 'BEGIN { printf "%.0f", n / s }')"
  stop "$lp"
  delns "$K"
}

[ -n "${SUMMARY_ONLY:-}" ] || log "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), conntrackd $(conntrackd -v 2>&1 | head -n 1)"
[ -n "${SUMMARY_ONLY:-}" ] || {
  echo "{"
  echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"n\": $N, \"runs\": $RUNS,"
  echo "  \"nproc\": $(nproc),"
  echo "  \"mem_kib\": $(awk '/MemTotal/ { print $2 }' /proc/meminfo),"
  echo "  \"cpu\": \"$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)\","
  echo "  \"kernel\": \"$(uname -r)\","
  echo "  \"conntrackd\": \"$(conntrackd -v 2>&1 | head -n 1)\","
  echo "  \"commit\": \"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\","
  echo "  \"tree_modified\": $(git diff --quiet HEAD -- . 2>/dev/null && echo false || echo true)"
  echo "}"
} >"$OUT/machine.json"

for r in $(seq $((RUN0 + 1)) $((RUN0 + RUNS))); do
  for d in $DAEMONS; do
    log "run $r/$RUNS: $d, $N flows"
    pair_run "$d" "$r"
  done
  for s in 1 2; do
    log "run $r/$RUNS: kernel ceiling, $s socket(s), $N flows"
    ceiling_run "$s" "$r"
  done
done

for R in $RATES; do
  for d in $DAEMONS; do
    log "stepped rate: $d, $N flows at $R flows/s"
    RATE=$R pair_run "$d" "s$R"
  done
done

if [ "$TAKEOVER" = 1 ]; then
  go build -o "$bin/streamgap" ./bench/streamgap
  log "takeover: live TCP stream, $BG background flows, $RUNS runs"
  BG=$BG RUNS=$RUNS DAEMONS="${TK_DAEMONS:-ctsyncd conntrackd none}" bench/takeover.sh "$bin" "$OUT"
fi

# --- summary -------------------------------------------------------------
log "summary (median [min..max], N=$N)"
python3 - "$csv" "$N" "$OUT" "$DAEMONS" <<'PY'
import csv, json, statistics, sys
path, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
daemons = sys.argv[4].split()
vals = {}
for row in csv.DictReader(open(path)):
    if int(row["n"]) != n:
        continue
    vals.setdefault((row["daemon"], row["metric"]), []).append(float(row["value"]))
summ = {}
for (d, m), v in vals.items():
    summ.setdefault(d, {})[m] = {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)}
json.dump({"n": n, "results": summ}, open(out + "/summary.json", "w"), indent=2, sort_keys=True)

def cell(d, m):
    s = summ.get(d, {}).get(m)
    if not s:
        return "—"
    f = (lambda x: f"{x:,.0f}") if s["median"] >= 1000 else (lambda x: f"{x:.3g}")
    return f"{f(s['median'])} [{f(s['min'])}..{f(s['max'])}]"

def ratio(m):
    a = summ.get("ctsyncd", {}).get(m)
    b = summ.get("conntrackd", {}).get(m)
    if not a or not b or b["median"] == 0:
        return "—"
    return f"{a['median'] / b['median']:.2f}"

rows = [
    ("runs converged exactly (of runs)", "converged", None),
    ("event overruns at the sender (sum over runs)", "event_overrun", None),
    ("replication time (s)", "replicate_s", None),
    ("replication rate (flows/s)", "replicate_flows_per_s", None),
    ("CPU s / 100k flows, sender", "cpu_sender_s_per_100k", None),
    ("CPU s / 100k flows, receiver", "cpu_receiver_s_per_100k", None),
    ("wire bytes / flow (both directions)", "wire_bytes_per_flow", None),
    ("RSS bytes / flow, internal (fwA)", "rss_internal_bytes_per_flow", None),
    ("RSS bytes / flow, external (fwB)", "rss_external_bytes_per_flow", None),
    ("RSS after, sender (MiB)", "rss_sender_mib", None),
    ("RSS after, receiver (MiB)", "rss_receiver_mib", None),
    ("commits that finished (of runs)", "commit_ok", None),
    ("commit time (s)", "commit_s", "commit_s"),
    ("commit rate (flows/s)", "commit_flows_per_s", "commit_flows_per_s"),
    ("commit CPU s, receiver process", "commit_cpu_receiver_s", None),
]

def total(d, m):
    s = vals.get((d, m))
    return "—" if not s else f"{sum(s):.0f}/{len(s)}"

lines = [f"N = {n:,} flows; median [min..max]; ratio = ctsyncd / conntrackd (both SCHED_OTHER);",
         "conntrackd (RR) = conntrackd on the SCHED_RR 99 it picks by default, for reference",
         "",
         "| metric | ctsyncd | conntrackd | ratio | conntrackd (RR) | kernel ceiling 1 socket | kernel ceiling 2 sockets |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
for label, m, k in rows:
    k1 = cell("kernel-1sock", k) if k else ""
    k2 = cell("kernel-2sock", k) if k else ""
    if m in ("converged", "event_overrun", "commit_ok"):
        lines.append(f"| {label} | {total('ctsyncd', m)} | {total('conntrackd', m)} | | {total('conntrackd_rr', m)} | | |")
        continue
    lines.append(f"| {label} | {cell('ctsyncd', m)} | {cell('conntrackd', m)} | {ratio(m)} | {cell('conntrackd_rr', m)} | {k1} | {k2} |")
steps = sorted({int(d.split("@")[1]) for d, _ in vals if "@" in d})
if steps:
    lines += ["", "Stepped rate: N flows created at a fixed pace; converged = exact count on fwB within STEP_TIMEOUT",
              "after the last create; lag = last create to exact convergence (one run per cell)", "",
              "| rate (flows/s) | " + " | ".join(f"{d} converged, lag s, overruns" for d in daemons) + " |",
              "| --- | " + " | ".join("---" for _ in daemons) + " |"]
    for rate in steps:
        row = []
        for d in daemons:
            k = f"{d}@{rate}"
            c = vals.get((k, "converged"))
            if not c:
                row.append("—")
                continue
            lag = vals.get((k, "lag_s"))
            ov = vals.get((k, "event_overrun"), [0])
            got = vals.get((k, "external_flows"), [0])
            row.append(f"{'yes' if min(c) == 1 else 'NO (%d of %d)' % (min(got), n)}, "
                       f"{statistics.median(lag):.2f} s, {sum(ov):.0f}" if lag else
                       f"NO ({min(got):.0f} of {n}), —, {sum(ov):.0f}")
        lines.append(f"| {rate:,} | " + " | ".join(row) + " |")
import os
tk = out + "/takeover.csv"
if os.path.exists(tk):
    tv = {}
    for row in csv.DictReader(open(tk)):
        tv.setdefault((row["daemon"], row["metric"]), []).append(float(row["value"]))
        bg = int(row["bg"])
    lines += ["", f"Takeover: live TCP stream, {bg:,} idle background flows; stall = largest gap at the server",
              "(median [min..max]); none = no daemon (control: the stream must break)", "",
              "| | stall (s) | stream survived | VIP move + commit command (s) |", "| --- | --- | --- | --- |"]
    for d in ["ctsyncd", "conntrackd", "none"]:
        st = tv.get((d, "stall_s"))
        if not st:
            continue
        al = tv.get((d, "stream_alive"), [])
        cm = tv.get((d, "commit_cmd_s"), [])
        f = lambda v: f"{statistics.median(v):.3f} [{min(v):.3f}..{max(v):.3f}]" if v else "—"
        lines.append(f"| {d} | {f(st)} | {sum(al):.0f}/{len(al)} | {f(cm)} |")
open(out + "/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "results: $OUT" >&2
