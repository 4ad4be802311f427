#!/usr/bin/env bash
# Install the Debian packages elastiserve's tests and demo use, only if something is missing.
set -euo pipefail
# The real node's and the image build's packages (containerd, runc, CNI plugins, buildah, debootstrap).
"$(dirname "$0")/install-node-deps.sh"
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages: ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || { echo "error: apt-get update failed" >&2; exit 1; }
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The package we just installed starts its own Prometheus service on :9090; our tests start theirs on free
# ports. Stop that service through its own init system (never by process name: other programs' Prometheus
# servers are none of our business).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
  /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
