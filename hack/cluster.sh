#!/usr/bin/env bash
# Local Kubernetes control plane for elastiserve's integration tests and demo:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake
# nodes/kubelets), built from Go modules and run as processes on 127.0.0.1.
# See docs/local-cluster.md.
#
# Usage: hack/cluster.sh build|up|down|env|status|build-node|build-addons|node-up|node-down|kubelet-restart|kubelet-stop|kubelet-start|image
#   build       build every component once into ${ELASTISERVE_CACHE:-~/.cache/elastiserve}/bin
#   up          start the control plane (idempotent); admin kubeconfig in $STATE/kubeconfig;
#               with ELASTISERVE_REAL_NODE=1 also a real node (see node-up)
#   down        stop everything `up` started (the real node too), restore host state, remove the state dir
#   env         print `export KUBECONFIG=...` (and PATH) lines: eval "$(hack/cluster.sh env)"
#   status      show what runs (exit 1 when the cluster is not fully up)
#   build-node  build the kubelet, kube-proxy, crictl and Prometheus (cached by version) for the real node
#   node-up     add a real node (containerd, runc, CNI bridge, kubelet, kube-proxy) to a running cluster
#   node-down   stop the real node and restore the host state it changed
#   kubelet-restart  stop the real node's kubelet and start it again (pods keep running)
#   kubelet-stop / kubelet-start  stop the real node's kubelet (the node goes NotReady), start it again
#   build-addons  build CoreDNS and metrics-server (cached by version; build-node builds them too)
#   image       build the project's image (cached by content hash), load it into the real node, print its name
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source=hack/build.sh
source "${HACK_DIR}/build.sh"
# shellcheck source=hack/run.sh
source "${HACK_DIR}/run.sh"
# shellcheck source=hack/node.sh
source "${HACK_DIR}/node.sh"

usage() {
  sed -n '7,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

main() {
  local cmd=${1:-}
  case "${cmd}" in
    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    build-node) cmd_build_node ;;
    build-addons) cmd_build_addons ;;
    node-up) cmd_node_up ;;
    node-down) cmd_node_down ;;
    kubelet-restart) cmd_kubelet_restart ;;
    kubelet-stop) cmd_kubelet_stop ;;
    kubelet-start) cmd_kubelet_start ;;
    image) cmd_image ;;
    -h | --help | help) usage ;;
    *)
      usage
      die "unknown command '${cmd}' (expected build|up|down|env|status|build-node|build-addons|node-up|node-down|kubelet-restart|kubelet-stop|kubelet-start|image)"
      ;;
  esac
}

main "$@"
