#!/usr/bin/env bash
# Runs every check and test tier of ctsyncd, as CI does. Run as root:
#   sudo ./scripts/test.sh
# Tiers: static checks; unit tests (no root); kernel tests (real conntrack in
# fresh network namespaces); cluster tests (test/cluster, several
# namespaces, -p 1); short fuzz runs. With CI=true a skipped kernel or
# cluster test, or a tier that ran no test, fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI="${CI:-true}"   # run as CI does unless told otherwise
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

scripts/deps.sh

echo "== static checks"
scripts/check-netlink-version.sh
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
go vet ./...
STATICCHECK="$(go env GOPATH)/bin/staticcheck"
if [ ! -x "$STATICCHECK" ]; then
  GOFLAGS= go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
"$STATICCHECK" ./...
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

# tier NAME ARGS...: runs go test -v, prints a summary, fails on zero tests
# or (CI) on skips.
tier() {
  local name=$1; shift
  echo "== $name tier: go test $*"
  set +e
  go test -v "$@" >"$log/$name.out" 2>&1
  local rc=$?
  set -e
  grep -E '^(=== RUN|--- (PASS|FAIL|SKIP)|(ok|FAIL|PASS|panic)\b)' "$log/$name.out" | grep -v '^=== RUN' | grep -vE '^    ' | tail -n 200 || true
  local pass fail skip
  pass=$(grep -cE '^\s*--- PASS' "$log/$name.out" || true)
  fail=$(grep -cE '^\s*--- FAIL' "$log/$name.out" || true)
  skip=$(grep -cE '^\s*--- SKIP' "$log/$name.out" || true)
  echo "$name: $pass passed, $fail failed, $skip skipped"
  if [ "$rc" -ne 0 ]; then
    echo "== $name tier FAILED; full output:"; grep -vE '^(=== (RUN|PAUSE|CONT)|--- PASS)' "$log/$name.out" | tail -n 300
    return 1
  fi
  if [ "$pass" -eq 0 ]; then echo "$name tier ran no test" >&2; return 1; fi
  if [ "$CI" = true ] && [ "$skip" -gt 0 ]; then
    echo "$name tier skipped tests under CI=true:" >&2; grep -E -A2 '^\s*--- SKIP' "$log/$name.out" >&2; return 1
  fi
  TOTAL_PASS=$((TOTAL_PASS + pass)); TOTAL_SKIP=$((TOTAL_SKIP + skip))
}
TOTAL_PASS=0; TOTAL_SKIP=0

tier unit -race -count=1 -skip '^(TestKernel|TestCluster)' ./...
tier kernel -race -count=1 -timeout 20m -run '^TestKernel' ./...
# Scenarios with 100k+ flows run without the race detector (DESIGN.md §4).
tier kernel-large -count=1 -timeout 20m -tags large -run '^TestKernelLarge' ./...
if find test/cluster -name '*_test.go' | grep -q .; then
  tier cluster -race -count=1 -p 1 -timeout 40m -run '^TestCluster' ./test/cluster/...
  # 100k+ flows in an HA pair: without the race detector.
  tier cluster-large -count=1 -p 1 -timeout 20m -tags large -run '^TestClusterLarge' ./test/cluster/...
fi

echo "== fuzz (short runs of every target)"
for pkg in $(go list ./...); do
  for fz in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
    echo "fuzz $pkg $fz"
    go test -run '^$' -fuzz "^${fz}\$" -fuzztime "${FUZZTIME:-10s}" "$pkg" >"$log/fuzz.out" 2>&1 || { cat "$log/fuzz.out"; exit 1; }
  done
done

echo "total: $TOTAL_PASS passed, 0 failed, $TOTAL_SKIP skipped"
