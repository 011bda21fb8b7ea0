#!/usr/bin/env bash
# Installs the Debian packages ctsyncd's tests and demo need, when missing.
# Run as root on Debian (bookworm or later).
set -euo pipefail
pkgs=(nftables conntrack iproute2 iputils-ping iputils-arping socat keepalived conntrackd procps kmod prometheus systemd tcpdump chromium iptables)
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
  # keepalived and conntrackd are used as programs by the tests, not as
  # services (prometheus only for its promtool; systemd for
  # systemd-analyze): their packages must not start them. Without systemd, a
  # policy-rc.d that denies starts (Debian's standard way) does that; it is
  # removed again, and one that already exists is left alone.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
  # With systemd, the units the packages just enabled are stopped. Nothing
  # that ran before this script is touched.
  for s in keepalived conntrackd prometheus; do
    case " ${missing[*]} " in *" $s "*) systemctl disable --now "$s" >/dev/null 2>&1 || true ;; esac
  done
fi
if ! command -v go >/dev/null; then
  echo "Go is not installed (need Go 1.26 or later on PATH)" >&2
  exit 1
fi
