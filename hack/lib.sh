# shellcheck shell=bash
# Variables defined here are used by the files that source it.
# shellcheck disable=SC2034
# Helpers shared by hack/cluster.sh. Sourced, never executed.

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HACK_DIR}/.." && pwd)"
export HACK_DIR REPO_ROOT

# shellcheck source=hack/versions.env
source "${HACK_DIR}/versions.env"

ELASTISERVE_CACHE="${ELASTISERVE_CACHE:-${HOME}/.cache/elastiserve}"
ELASTISERVE_CLUSTER_DIR="${ELASTISERVE_CLUSTER_DIR:-${ELASTISERVE_CACHE}/cluster}"
BIN_ROOT="${ELASTISERVE_CACHE}/bin"
BUILD_ROOT="${ELASTISERVE_CACHE}/build"
LOG_ROOT="${ELASTISERVE_CACHE}/logs"

# Dedicated Go caches so the build is self-contained, measurable and never
# fights with another project's module cache. Override to share a cache.
ES_GOMODCACHE="${ELASTISERVE_GOMODCACHE:-${ELASTISERVE_CACHE}/go/mod}"
ES_GOCACHE="${ELASTISERVE_GOCACHE:-${ELASTISERVE_CACHE}/go/build}"

log() { printf '[cluster] %s\n' "$*" >&2; }
LAST_ERROR=""
die() {
  LAST_ERROR="$*"
  printf '[cluster] ERROR: %s\n' "$*" >&2
  exit 1
}

# Per-component binary folders, keyed by version.
etcd_dir() { printf '%s/etcd-%s' "${BIN_ROOT}" "${ETCD_VERSION}"; }
k8s_dir() { printf '%s/kubernetes-%s' "${BIN_ROOT}" "${KUBERNETES_VERSION}"; }
kwok_dir() { printf '%s/kwok-%s' "${BIN_ROOT}" "${KWOK_VERSION}"; }
helm_dir() { printf '%s/helm-%s' "${BIN_ROOT}" "${HELM_VERSION}"; }
node_dir() { printf '%s/node-%s' "${BIN_ROOT}" "${KUBERNETES_VERSION}"; }
crictl_dir() { printf '%s/crictl-%s' "${BIN_ROOT}" "${CRI_TOOLS_VERSION}"; }
prometheus_dir() { printf '%s/prometheus-%s' "${BIN_ROOT}" "${PROMETHEUS_VERSION}"; }
coredns_dir() { printf '%s/coredns-%s' "${BIN_ROOT}" "${COREDNS_VERSION}"; }
metrics_server_dir() { printf '%s/metrics-server-%s' "${BIN_ROOT}" "${METRICS_SERVER_VERSION}"; }

ETCD_BIN() { printf '%s/etcd' "$(etcd_dir)"; }
APISERVER_BIN() { printf '%s/kube-apiserver' "$(k8s_dir)"; }
KCM_BIN() { printf '%s/kube-controller-manager' "$(k8s_dir)"; }
SCHEDULER_BIN() { printf '%s/kube-scheduler' "$(k8s_dir)"; }
KUBECTL_BIN() { printf '%s/kubectl' "$(k8s_dir)"; }
KWOK_BIN() { printf '%s/kwok' "$(kwok_dir)"; }
HELM_BIN() { printf '%s/helm' "$(helm_dir)"; }
KUBELET_BIN() { printf '%s/kubelet' "$(node_dir)"; }
KUBE_PROXY_BIN() { printf '%s/kube-proxy' "$(node_dir)"; }
CRICTL_BIN() { printf '%s/crictl' "$(crictl_dir)"; }
PROMETHEUS_BIN() { printf '%s/prometheus' "$(prometheus_dir)"; }
COREDNS_BIN() { printf '%s/coredns' "$(coredns_dir)"; }
METRICS_SERVER_BIN() { printf '%s/metrics-server' "$(metrics_server_dir)"; }

# The pod sandbox image of the real node (hack/image.sh pause builds it, hack/node.sh imports it).
PAUSE_REF="localhost/elastiserve-pause:${KUBERNETES_VERSION}"

# Seconds since the epoch, as an integer.
now_s() { date +%s; }

fmt_duration() {
  local s=$1
  printf '%dm%02ds' $((s / 60)) $((s % 60))
}

# Is TCP port $1 on 127.0.0.1 free? (bash /dev/tcp: a successful connect means taken)
port_in_use() {
  local port=$1
  if command -v ss >/dev/null 2>&1; then
    ss -Htln "sport = :${port}" 2>/dev/null | grep -q .
    return $?
  fi
  (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null
}

# Print N distinct free ports on 127.0.0.1, one per line: all are bound at once before any is released, so
# the kernel cannot hand out the same port twice (separate free_port calls can: a cluster start failed when
# kube-controller-manager and kwok were both given 43139).
free_ports() {
  python3 -c 'import socket,sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# Print a free port on 127.0.0.1 (asks the kernel via python3, falls back to a scan).
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    free_ports 1
    return
  fi
  local p
  for p in $(seq 20000 40000); do
    if ! port_in_use "$p"; then
      echo "$p"
      return
    fi
  done
  die "no free port found on 127.0.0.1"
}

# Poll "$@" until it succeeds or $1 seconds pass. Usage: wait_for SECONDS DESC cmd...
wait_for() {
  local timeout=$1 desc=$2
  shift 2
  local deadline=$(($(now_s) + timeout))
  while true; do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if (($(now_s) >= deadline)); then
      log "timed out after ${timeout}s waiting for ${desc}"
      return 1
    fi
    sleep 0.5
  done
}
