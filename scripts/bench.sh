#!/usr/bin/env bash
# ctsyncd benchmark, side by side with netfilter's conntrackd (FTFW over UDP)
# and against the kernel's own limit, in one run. Not part of the test run.
# As root on Debian with Go installed:
#
#   sudo ./scripts/bench.sh     # 100k flows, 3 runs each, stepped rates,
#                               # kernel ceiling, takeover stall (~10 min)
#   sudo N=1000000 RUNS=2 RATES="" TAKEOVER=0 TIMEOUT=90 ./scripts/bench.sh
#
# This script installs what is missing (scripts/deps.sh), builds ctsyncd,
# ctsyncctl, ctgen, streamgap and the harness, cmd/ctbench, and runs it;
# `go run ./cmd/ctbench -h` documents the method and every flag. Results
# and their reading: BENCHMARKS.md.
#
# Environment (each maps to a ctbench flag; unset = ctbench's default):
#   N        flows per run (-n, default 100000)
#   RUNS     runs per daemon and per kernel-ceiling case (-runs, default 3)
#   OUT      results directory (-out, default bench/results/<UTC time>-n<N>)
#   TIMEOUT  seconds to wait for convergence or commit (-timeout, 120)
#   RATES    stepped rates, flows/s (-rates, "10000 50000 100000";
#            "" for none)
#   STEP_TIMEOUT  seconds after the last create within which a stepped run
#            must converge exactly (-step-timeout, 30)
#   COMMIT_TIMEOUT  ctsyncd's failover.commit_timeout (-commit-timeout,
#            600s; the shipped default is 120s)
#   TAKEOVER 1 (default) or 0: the takeover stall with BG (200000) idle
#            background flows (-takeover, -bg)
#   TK_DAEMONS  daemons of the takeover runs (-tk-daemons, "ctsyncd
#            conntrackd none")
#   RUN0     number the runs from RUN0+1 (-run0)
#   SUMMARY_ONLY  non-empty: only print the summary of OUT's runs.csv
#   PROFILE  non-empty: perf-record the daemons (-profile; skews timings)
#   CPUPROFILE  non-empty: ctsyncd --cpuprofile beside its log (-cpuprofile)
#   DAEMONS  which daemons, in turn (-daemons, "ctsyncd conntrackd
#            conntrackd_rr")
#   CTSYNCD_ENV  more environment for ctsyncd (-ctsyncd-env, e.g.
#            "GOMAXPROCS=1")
# On a shared machine run it under a lock that the other heavy jobs take too (flock).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: run as root (namespaces, conntrack)" >&2
  exit 1
fi
./scripts/deps.sh
bin=$(mktemp -d /tmp/ctbench-bin.XXXXXX)
trap 'rm -rf "$bin"' EXIT
echo "building ctsyncd, ctsyncctl, ctgen, streamgap, ctbench" >&2
for c in ctsyncd ctsyncctl ctgen ctbench; do go build -o "$bin/$c" "./cmd/$c"; done
go build -o "$bin/streamgap" ./bench/streamgap

args=(-bin "$bin")
[ -z "${N:-}" ] || args+=(-n "$N")
[ -z "${RUNS+x}" ] || args+=(-runs "$RUNS")
[ -z "${OUT:-}" ] || args+=(-out "$OUT")
[ -z "${TIMEOUT:-}" ] || args+=(-timeout "${TIMEOUT}s")
[ -z "${RATES+x}" ] || args+=(-rates "$RATES")
[ -z "${STEP_TIMEOUT:-}" ] || args+=(-step-timeout "${STEP_TIMEOUT}s")
[ -z "${COMMIT_TIMEOUT:-}" ] || args+=(-commit-timeout "$COMMIT_TIMEOUT")
[ -z "${TAKEOVER:-}" ] || args+=(-takeover="$([ "$TAKEOVER" = 1 ] && echo true || echo false)")
[ -z "${BG:-}" ] || args+=(-bg "$BG")
[ -z "${BG_RATE:-}" ] || args+=(-bg-rate "$BG_RATE")
[ -z "${TK_DAEMONS:-}" ] || args+=(-tk-daemons "$TK_DAEMONS")
[ -z "${RUN0:-}" ] || args+=(-run0 "$RUN0")
[ -z "${SUMMARY_ONLY:-}" ] || args+=(-summary-only)
[ -z "${PROFILE:-}" ] || args+=(-profile)
[ -z "${CPUPROFILE:-}" ] || args+=(-cpuprofile)
[ -z "${DAEMONS:-}" ] || args+=(-daemons "$DAEMONS")
[ -z "${CTSYNCD_ENV:-}" ] || args+=(-ctsyncd-env "$CTSYNCD_ENV")
exec "$bin/ctbench" "${args[@]}" "$@"
