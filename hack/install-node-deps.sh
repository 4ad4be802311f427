#!/usr/bin/env bash
# Install the Debian packages a real worker node (hack/node.sh) and the image build (hack/image.sh)
# need, only when something is missing. Called by hack/install-system-deps.sh.
#   containerd, runc                 the container runtime behind the kubelet's CRI
#   containernetworking-plugins      bridge, host-local, loopback, portmap
#   iptables, nftables, conntrack    pod traffic rules (portmap, kube-proxy, our egress guard)
#   buildah                          builds the project's image from the Dockerfile without a daemon
#   debootstrap                      the locally built Debian base of that image
#   gcc                              compiles the pause image (static) from the Kubernetes sources
set -euo pipefail
declare -A tool=(
  [containerd]=containerd [ctr]=containerd [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [iptables]=iptables [nft]=nftables [conntrack]=conntrack
  [buildah]=buildah [debootstrap]=debootstrap [gcc]=gcc
)
need=()
for t in "${!tool[@]}"; do
  if [[ "${t}" == /* ]]; then [[ -x "${t}" ]] && continue; else command -v "${t}" >/dev/null 2>&1 && continue; fi
  [[ " ${need[*]} " == *" ${tool[$t]} "* ]] || need+=("${tool[$t]}")
done
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages for the real node: ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages for the real node: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -o DPkg::Lock::Timeout=600 -qq)
"${apt[@]}" update >/dev/null || { echo "error: apt-get update failed" >&2; exit 1; }
"${apt[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null
