#!/usr/bin/env bash
# Local Kubernetes control plane for elastiserve's integration tests and demo:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake
# nodes/kubelets), built from Go modules and run as processes on 127.0.0.1.
# See docs/local-cluster.md.
#
# Usage: hack/cluster.sh build|up|down|env|status
#   build   build every component once into ${ELASTISERVE_CACHE:-~/.cache/elastiserve}/bin
#   up      start the control plane (idempotent); admin kubeconfig in $STATE/kubeconfig
#   down    stop everything `up` started and remove the state dir
#   env     print `export KUBECONFIG=...` (and PATH) lines: eval "$(hack/cluster.sh env)"
#   status  show what runs (exit 1 when the cluster is not fully up)
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source=hack/build.sh
source "${HACK_DIR}/build.sh"
# shellcheck source=hack/run.sh
source "${HACK_DIR}/run.sh"

usage() {
  sed -n '7,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

main() {
  local cmd=${1:-}
  case "${cmd}" in
    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
      usage
      die "unknown command '${cmd}' (expected build|up|down|env|status)"
      ;;
  esac
}

main "$@"
