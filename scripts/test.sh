#!/usr/bin/env bash
# Runs every check and test tier of ctsyncd, as CI does. Run as root:
#   sudo ./scripts/test.sh
# Tiers: static checks; unit tests (no root); kernel tests (real conntrack in
# fresh network namespaces); cluster tests (test/cluster, several
# namespaces, -p 1); short fuzz runs. With CI=true a skipped kernel or
# cluster test, or a tier that ran no test, fails the run.
# On a shared machine, TEST_LOCK=/path runs each package of the kernel and
# cluster tiers under flock(1) on that file, between other heavy work.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI="${CI:-true}"   # run as CI does unless told otherwise
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
log=$(mktemp -d)
# KEEP_LOGS=1 keeps every tier's full go test output (printed at the end).
if [ -n "${KEEP_LOGS:-}" ]; then trap 'echo "tier logs kept in $log"' EXIT; else trap 'rm -rf "$log"' EXIT; fi

scripts/deps.sh

# took NAME START: prints how long a step took (CI keeps an eye on the budget).
took() { echo "== $1 took $((SECONDS - $2))s (at $(date -u +%H:%M:%S) UTC)"; }
start=$SECONDS
echo "== static checks"
# go.mod and go.sum say exactly what the code imports.
GOFLAGS= go mod tidy -diff || { echo "go.mod/go.sum not tidy: run go mod tidy" >&2; exit 1; }
# ti-mo/conntrack (and what it pulls in) is for tests and tools only.
if go list -deps ./cmd/ctsyncd | grep -q '^github.com/ti-mo/'; then
  echo "the ctsyncd binary links ti-mo/conntrack; keep it to tests and tools (internal/timoconv)" >&2; exit 1
fi
# Every repository file a comment or doc names exists (no stale or outside
# citations).
go test -count=1 -run '^TestCitedPathsExist$' ./internal/repocheck
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
go vet ./...
go vet -tags kernel,cluster,large ./...
STATICCHECK="$(go env GOPATH)/bin/staticcheck"
if [ ! -x "$STATICCHECK" ]; then
  GOFLAGS= go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
"$STATICCHECK" -tags kernel,cluster,large ./...
go build -o /dev/null ./cmd/...
# Man pages are generated from --help and the config struct.
go run ./internal/mangen -check
# Alert rules: syntax and their unit tests (promtool: Debian's prometheus).
promtool check rules configs/ctsyncd-alerts.yml
(cd configs && promtool test rules ctsyncd-alerts-test.yml)
# The systemd unit, with ExecStart pointed at a freshly built binary.
if command -v systemd-analyze >/dev/null; then
  unit=$(mktemp -d)
  go build -o "$unit/ctsyncd" ./cmd/ctsyncd
  sed "s#/usr/sbin/ctsyncd#$unit/ctsyncd#" configs/ctsyncd.service >"$unit/ctsyncd.service"
  systemd-analyze verify "$unit/ctsyncd.service"
  rm -rf "$unit"
elif [ "$CI" = true ]; then
  echo "systemd-analyze missing: cannot verify configs/ctsyncd.service" >&2; exit 1
fi
# Small firewalls run 32-bit ARM and 386; arm64 too. Everything must build
# and vet there (the kernel tier runs as 386 below).
for arch in 386 arm arm64; do
  echo "build and vet GOARCH=$arch"
  GOARCH=$arch go build -o /dev/null ./...
  GOARCH=$arch go vet -tags kernel,cluster,large ./...
done

# Test tiers are chosen by build tags, never by test names: unit is every
# test built without tags; a tagged tier is exactly the tests that exist only
# with its tags (kernel: files with //go:build kernel; kernel-large: kernel &&
# large; cluster, cluster-large likewise). See docs/ARCHITECTURE.md, "Test tiers".

# Every _test.go build constraint may use only the tier tags and race, a
# "large" file must belong to the kernel or cluster tier, and a file built
# only with or without -race holds no test (it would run in no tier or in
# only part of one).
check_test_tags() {
  local bad=0 f line
  while IFS= read -r f; do
    line=$(grep -m1 '^//go:build ' "$f" || true)
    [ -z "$line" ] && continue
    local words
    words=$(printf '%s\n' "${line#//go:build }" | tr -c 'A-Za-z0-9_\n' ' ')
    for w in $words; do
      case $w in kernel|cluster|large|race) ;; *) echo "$f: build tag $w is not a test tier (kernel, cluster, large)" >&2; bad=1 ;; esac
    done
    if [[ " $words " == *" large "* && " $words " != *" kernel "* && " $words " != *" cluster "* ]]; then
      echo "$f: large without kernel or cluster runs in no tier" >&2; bad=1
    fi
    if [[ " $words " == *" race "* ]] && grep -qE '^func (Test|Fuzz|Example|Benchmark)' "$f"; then
      echo "$f: a file built only with or without -race must hold no test" >&2; bad=1
    fi
  done < <(git ls-files '*_test.go')
  return $bad
}
check_test_tags
took "static checks" "$start"

# list_tests TAGS: prints "package test" for every test, fuzz target and
# example that go test builds with TAGS ("" for none).
# Lists are kept per tags and GOARCH for the run.
list_tests() {
  local cached="$log/list-${GOARCH:-native}-${1:-none}"
  if [ ! -f "$cached" ]; then
    go test -vet=off -list . ${1:+-tags "$1"} ./... >"$log/list.out" 2>&1 || { cat "$log/list.out" >&2; return 1; }
    awk '/^(ok|\?|FAIL)[ \t]/ { n = split(names, a, " "); for (i = 1; i <= n; i++) print $2, a[i]; names = ""; next }
         /^(Test|Fuzz|Example|Benchmark)/ { names = names " " $1 }' "$log/list.out" | sort >"$cached"
  fi
  cat "$cached"
}

# summarize NAME RC: prints the tier's results, fails on a failure, on zero
# tests or (CI) on skips.
summarize() {
  local name=$1 rc=$2
  grep -E '^(--- (PASS|FAIL|SKIP)|(ok|FAIL|PASS|panic)\b)' "$log/$name.out" | tail -n 200 || true
  local pass fail skip
  pass=$(grep -cE '^\s*--- PASS' "$log/$name.out" || true)
  fail=$(grep -cE '^\s*--- FAIL' "$log/$name.out" || true)
  skip=$(grep -cE '^\s*--- SKIP' "$log/$name.out" || true)
  echo "$name: $pass passed, $fail failed, $skip skipped"
  if [ "$rc" -ne 0 ]; then
    echo "== $name tier FAILED; full output:"; grep -vE '^(=== (RUN|PAUSE|CONT|NAME)|--- PASS)' "$log/$name.out" | tail -n 300
    return 1
  fi
  if [ "$pass" -eq 0 ]; then echo "$name tier ran no test" >&2; return 1; fi
  if [ "$CI" = true ] && [ "$skip" -gt 0 ]; then
    echo "$name tier skipped tests under CI=true:" >&2; grep -E -A2 '^\s*--- SKIP' "$log/$name.out" >&2; return 1
  fi
  TOTAL_PASS=$((TOTAL_PASS + pass)); TOTAL_SKIP=$((TOTAL_SKIP + skip))
}
TOTAL_PASS=0; TOTAL_SKIP=0

# unit ARGS...: every test built without tags, as one go test run.
unit() {
  local name=$1; shift
  echo "== $name tier: go test $*"
  local rc=0
  go test -v "$@" ./... >"$log/$name.out" 2>&1 || rc=$?
  summarize "$name" "$rc"
}

# tagged NAME TAGS BASE ARGS...: runs, package by package, the tests that
# exist with -tags TAGS but not with BASE, and fails if one of them did not
# report a result. GOARCH in the environment applies to listing and runs.
tagged() {
  local name=$1 tags=$2 base=$3; shift 3
  list_tests "$tags" >"$log/$name.with" || return 1
  list_tests "$base" >"$log/$name.without" || return 1
  # Benchmarks are listed but never run by -run: not part of a tier.
  comm -23 "$log/$name.with" "$log/$name.without" | { grep -v ' Benchmark' || true; } >"$log/$name.list"
  echo "== $name tier (-tags $tags): $(wc -l <"$log/$name.list") tests; go test $*"
  : >"$log/$name.out"
  local rc=0 pkg
  for pkg in $(cut -d' ' -f1 "$log/$name.list" | uniq); do
    local re
    re=$(awk -v p="$pkg" '$1 == p { printf "%s%s", sep, $2; sep = "|" }' "$log/$name.list")
    ${TEST_LOCK:+flock "$TEST_LOCK"} go test -v -tags "$tags" "$@" -run "^(${re})\$" "$pkg" >>"$log/$name.out" 2>&1 || rc=$?
  done
  local missing
  missing=$(while read -r pkg t; do grep -qE "^--- (PASS|FAIL|SKIP): ${t} " "$log/$name.out" || echo "$pkg $t"; done <"$log/$name.list")
  if [ -n "$missing" ] && [ "$rc" -eq 0 ]; then echo "$name tier: listed but not run: $missing" >&2; rc=1; fi
  summarize "$name" "$rc"
}

tier_unit() { unit unit -race -count=1; }
tier_kernel() { tagged kernel kernel "" -race -count=1 -timeout 20m; }
# Scenarios with 100k+ flows run without the race detector (it slows
# netlink-heavy work several times; docs/ARCHITECTURE.md, "Test tiers").
tier_kernel_large() { tagged kernel-large kernel,large kernel -count=1 -timeout 20m; }
tier_cluster() { tagged cluster cluster "" -race -count=1 -p 1 -timeout 40m; }
# 32-bit: a 386 binary runs natively on amd64. The unit tier and the kernel
# tier (event reading with recvmmsg, whose struct layout differs on 32-bit)
# run once more as 386, without -race (not supported there).
tier_unit_386() { GOARCH=386 unit unit-386 -count=1; }
tier_kernel_386() { GOARCH=386 tagged kernel-386 kernel "" -count=1 -timeout 20m; }
tier_cluster_large() { tagged cluster-large cluster,large cluster -count=1 -p 1 -timeout 20m; }

# A failed tier does not stop the run: every tier runs, so one CI run shows
# every failure; the run fails at the end.
failed=""
for t in ${TIERS:-unit unit_386 kernel kernel_386 kernel_large cluster cluster_large}; do
  start=$SECONDS; "tier_$t" || failed="$failed $t"; took "$t tier" "$start"
done

start=$SECONDS
echo "== fuzz (short runs of every target)"
# A count of executions, not a duration: with a -fuzztime duration, Go
# 1.26's coordinator can fail a target with a bare "context deadline
# exceeded" when the time ends while a worker is busy (Go issue 75804).
for pkg in $(go list ./...); do
  for fz in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
    echo "fuzz $pkg $fz"
    go test -run '^$' -fuzz "^${fz}\$" -fuzztime "${FUZZTIME:-100000x}" "$pkg" >"$log/fuzz.out" 2>&1 || { cat "$log/fuzz.out"; exit 1; }
  done
done

took fuzz "$start"
if [ -n "$failed" ]; then echo "FAILED tiers:$failed" >&2; exit 1; fi
echo "total: $TOTAL_PASS passed, 0 failed, $TOTAL_SKIP skipped"
