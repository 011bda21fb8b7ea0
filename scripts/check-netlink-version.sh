#!/usr/bin/env bash
# Fails when Go's version selection has moved github.com/mdlayher/netlink off
# v1.9.0: v1.10+ make ti-mo/conntrack's Get and StatsGlobal hang forever
# (DESIGN.md §6), and another dependency asking for more raises it silently.
set -euo pipefail
cd "$(dirname "$0")/.."
want=v1.9.0
got=$(go list -m -f '{{.Version}}' github.com/mdlayher/netlink)
if [ "$got" != "$want" ]; then
  echo "github.com/mdlayher/netlink resolved to $got, must stay $want (see go.mod and DESIGN.md §6)" >&2
  exit 1
fi
echo "github.com/mdlayher/netlink $got (pinned)"
