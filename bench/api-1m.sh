#!/usr/bin/env bash
# The API over a large kernel table: builds ctgen and ctsyncd, fills a
# throw-away namespace with N flows (default 1,000,000), starts a daemon
# with the API on loopback there, and times pages, a full NDJSON listing
# and a delete by filter with curl; prints the daemon's memory.
# Usage (root, heavy: take the shared lock):
#   flock /tmp/ctsyncd-heavy.lock bench/api-1m.sh [N]
set -euo pipefail
N=${1:-1000000}
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
NS=ctapi-bench-$$
cleanup() { [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null; sleep 1; ip netns del "$NS" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
(cd "$repo" && go build -o "$dir/ctgen" ./cmd/ctgen && go build -o "$dir/ctsyncd" ./cmd/ctsyncd)
T=$(openssl rand -hex 16)
umask 077
echo "bench admin $T" >"$dir/tokens"
cat >"$dir/ctsyncd.toml" <<CONF
[node]
name = "bench"
[control]
socket = "$dir/ctsyncd.sock"
[sync]
disabled = true
[kernel]
resync_interval = "0s"
[api]
listen = "127.0.0.1:9470"
tokens_file = "$dir/tokens"
CONF
ip netns add "$NS"
X="ip netns exec $NS"
$X ip link set lo up
$X sysctl -qw net.netfilter.nf_conntrack_max=$((N * 2)) 2>/dev/null || true
"$dir/ctgen" -netns "$NS" -n "$N" -min-timeout 3600 | tail -1
($X "$dir/ctsyncd" --config "$dir/ctsyncd.toml" >"$dir/daemon.log" 2>&1 & echo $! >"$dir/pid")
until $X curl -s -o /dev/null -H "Authorization: Bearer $T" http://127.0.0.1:9470/api/v1/status; do sleep 0.5; done
sleep 5 # the first reconcile of the internal cache
echo "conntrack -C: $($X conntrack -C)"
echo "daemon before: $(grep VmRSS /proc/"$(cat "$dir/pid")"/status)"
for q in "sort=src&limit=50" "proto=tcp&dport=443&sort=dport&order=desc&offset=1000&limit=100" "sort=timeout&offset=100000&limit=1000"; do
  $X curl -s -o "$dir/page.json" -w "page $q: %{http_code} %{time_total}s" -H "Authorization: Bearer $T" "http://127.0.0.1:9470/api/v1/flows/page?$q"
  echo " total=$(jq .total "$dir/page.json")"
done
$X curl -s -o "$dir/all.ndjson" -w "ndjson all: %{http_code} %{time_total}s %{size_download} bytes" -H "Authorization: Bearer $T" http://127.0.0.1:9470/api/v1/flows
echo " lines=$(wc -l <"$dir/all.ndjson")"
rm -f "$dir/all.ndjson"
$X curl -s -w " %{time_total}s\n" -X DELETE -H "Authorization: Bearer $T" "http://127.0.0.1:9470/api/v1/flows?proto=udp"
echo "conntrack -C after the delete: $($X conntrack -C)"
echo "daemon after: $(grep -E 'VmHWM|VmRSS' /proc/"$(cat "$dir/pid")"/status | tr -s ' \t\n' ' ')"
