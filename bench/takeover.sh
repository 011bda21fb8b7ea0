#!/usr/bin/env bash
# Takeover stall benchmark alone: a live TCP stream through fwA, BG idle
# background flows, fwA dies, fwB takes the VIPs and commits; the stream's
# largest gap at the server is the stall. scripts/bench.sh runs it too
# (TAKEOVER=1); the harness is cmd/ctbench (-takeover-only).
#
#   sudo bench/takeover.sh BIN_DIR OUT_DIR  # BIN_DIR: ctsyncd ctsyncctl ctgen streamgap
#
# Environment: BG (default 200000), RUNS (3), DAEMONS ("ctsyncd conntrackd
# none"; none runs no daemon: the control, whose stream must break),
# BG_RATE (flows/s of the background flows, default 50000).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
out=$2
go build -o "$bin/ctbench" ./cmd/ctbench
exec "$bin/ctbench" -bin "$bin" -out "$out" -takeover-only -bg "${BG:-200000}" -runs "${RUNS:-3}" \
  -tk-daemons "${DAEMONS:-ctsyncd conntrackd none}" -bg-rate "${BG_RATE:-50000}"
