#!/usr/bin/env bash
# Installs the Debian packages ctsyncd's tests and demo need, when missing.
# Run as root on Debian (bookworm or later).
set -euo pipefail
pkgs=(nftables conntrack iproute2 iputils-ping iputils-arping socat keepalived conntrackd procps kmod)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # keepalived and conntrackd are used as programs by the tests, not as
  # services: the units their packages just enabled are stopped. Nothing
  # that ran before this script is touched.
  for s in keepalived conntrackd; do
    case " ${missing[*]} " in *" $s "*) systemctl disable --now "$s" >/dev/null 2>&1 || true ;; esac
  done
fi
if ! command -v go >/dev/null; then
  echo "Go is not installed (need Go 1.26 or later on PATH)" >&2
  exit 1
fi
