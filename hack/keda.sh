#!/usr/bin/env bash
# KEDA (the operator and its external-metrics API server) as host processes against the local
# cluster of hack/cluster.sh, for the live comparison (bench/live.py). Built from KEDA's Go module,
# cached by version like the other components (hack/build.sh). Not part of `make test`: the cold
# build takes ~40 minutes on 2 cores.
#
# Usage: hack/keda.sh build|up|down|status|path
#   build   build keda (cmd/operator) and keda-adapter (cmd/adapter) of ${KEDA_VERSION} once into
#           ${ELASTISERVE_CACHE:-~/.cache/elastiserve}/bin/keda-<version>/ (progress every 30 s)
#   up      against the running cluster of ${ELASTISERVE_CLUSTER_DIR}: KEDA's CRDs (from the module
#           source), namespace keda, RBAC for the identities keda-operator / keda-metrics-apiserver,
#           certificates signed by the cluster CA, the operator (gRPC metrics service on 127.0.0.1)
#           and the adapter (on the host address ${KEDA_BIND_IP}), the Service + Endpoints and the
#           v1beta1.external.metrics.k8s.io APIService pointing at the adapter. Idempotent.
#   down    stop the two processes (by their pid files) and delete the APIService
#   status  show whether they run (exit 1 when not)
#   path    print the folder holding the two binaries
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source=hack/build.sh
source "${HACK_DIR}/build.sh"
# shellcheck source=hack/run.sh
source "${HACK_DIR}/run.sh"

KEDA_VERSION="${KEDA_VERSION:-v2.21.0}"
KEDA_MODULE="github.com/kedacore/keda/v2"
keda_dir() { printf '%s/keda-%s' "${BIN_ROOT}" "${KEDA_VERSION}"; }
KEDA_STATE="${STATE}/keda"
KEDA_COMPONENTS=(keda keda-adapter)

log() { printf '[keda] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- build

keda_build() {
  local out tmp wd logf start gomod goline
  out=$(keda_dir)
  if component_done "${out}"; then
    log "keda ${KEDA_VERSION}: cached (${out})"
    return 0
  fi
  go_env
  start=$(now_s)
  wd="${BUILD_ROOT}/keda-${KEDA_VERSION}"
  tmp="${out}.tmp"
  logf="${LOG_ROOT}/build-keda-${KEDA_VERSION}.log"
  : >"${logf}"
  log "building keda and keda-adapter ${KEDA_VERSION} (log: ${logf}); ~40 min cold on 2 cores"
  prepare_wrapper "${wd}" "elastiserve.local/build/keda"
  (cd "${wd}" && run_step "${logf}" "keda: download ${KEDA_MODULE}" go mod download "${KEDA_MODULE}@${KEDA_VERSION}")
  gomod="${GOMODCACHE}/cache/download/${KEDA_MODULE}/@v/${KEDA_VERSION}.mod"
  [[ -f "${gomod}" ]] || die "KEDA's go.mod not found at ${gomod}; log: ${logf}"
  # KEDA's replace directives only apply to its own main module: repeat them in the wrapper, and
  # keep its Go version line.
  goline=$(grep -E '^go [0-9.]+$' "${gomod}" | head -n1)
  {
    printf 'module elastiserve.local/build/keda\n\n%s\n\n' "${goline:-go 1.24.0}"
    grep -E '^replace [^(]' "${gomod}" || true
    sed -nE '/^replace[[:space:]]*\(/,/^\)/p' "${gomod}"
  } >"${wd}/go.mod"
  echo "generated go.mod:" >>"${logf}"
  cat "${wd}/go.mod" >>"${logf}"
  local ld="-s -w -X ${KEDA_MODULE}/version.Version=${KEDA_VERSION#v} -X ${KEDA_MODULE}/version.GitCommit=module"
  rm -rf "${tmp}" && mkdir -p "${tmp}"
  (
    cd "${wd}" || exit 1
    run_step "${logf}" "keda: resolve modules" go get "${KEDA_MODULE}/cmd/operator@${KEDA_VERSION}" "${KEDA_MODULE}/cmd/adapter@${KEDA_VERSION}"
    run_step "${logf}" "keda: compile operator + adapter" go build -trimpath -ldflags "${ld}" -o "${tmp}/" \
      "${KEDA_MODULE}/cmd/operator" "${KEDA_MODULE}/cmd/adapter"
  )
  mv "${tmp}/operator" "${tmp}/keda"
  mv "${tmp}/adapter" "${tmp}/keda-adapter"
  # the CRDs of this very version, for `up`
  mkdir -p "${tmp}/crds"
  cp "${GOMODCACHE}/${KEDA_MODULE}@${KEDA_VERSION}/config/crd/bases/"*.yaml "${tmp}/crds/"
  chmod -R u+w "${tmp}/crds"
  "${tmp}/keda-adapter" --help >>"${logf}" 2>&1 || true
  [[ -x "${tmp}/keda" && -x "${tmp}/keda-adapter" ]] || die "keda binaries missing after build; log: ${logf}"
  finish_component "${out}" "${tmp}" "keda-${KEDA_VERSION}" $(($(now_s) - start))
  log "keda ${KEDA_VERSION}: done in $(fmt_duration $(($(now_s) - start))) ($(du -sh "${out}" | cut -f1))"
}

# ---------------------------------------------------------------- up / down

keda_src() { printf '%s/%s@%s' "${ES_GOMODCACHE}" "${KEDA_MODULE}" "${KEDA_VERSION}"; }

# The address the adapter listens on and its Endpoints name: the API server's aggregation layer
# (--enable-aggregator-routing) connects to the Endpoints address, which may not be loopback. The real
# node's bridge when it exists (pods reach it too), else the machine's first address; KEDA_BIND_IP overrides.
keda_bind_ip() {
  if [[ -n "${KEDA_BIND_IP:-}" ]]; then
    printf '%s' "${KEDA_BIND_IP}"
  elif ip -4 addr show es-cni0 2>/dev/null | grep -q 'inet '; then
    ip -4 addr show es-cni0 | awk '/inet / {sub(/\/.*/, "", $2); print $2; exit}'
  else
    hostname -I | awk '{print $1}'
  fi
}

keda_port() {
  local var=$1 port
  port=$(free_port)
  printf -v "${var}" '%s' "${port}"
  echo "${var}=${port}" >>"${KEDA_STATE}/ports.env"
}

keda_alive() {
  local c
  for c in "${KEDA_COMPONENTS[@]}"; do alive "${c}" || return 1; done
}

keda_apiservice_available() {
  [[ "$(kctl get apiservice v1beta1.external.metrics.k8s.io \
    -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null)" == "True" ]]
}

keda_crd_established() {
  [[ "$(kctl get crd scaledobjects.keda.sh \
    -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" == "True" ]]
}

keda_up() {
  [[ -f "${MARKER}" ]] && load_ports && kctl get --raw /readyz >/dev/null 2>&1 ||
    die "no running cluster in ${STATE}: run 'hack/cluster.sh up' first"
  component_done "$(keda_dir)" || die "KEDA ${KEDA_VERSION} is not built: run 'hack/keda.sh build' first (~40 min cold)"
  [[ -d "$(keda_src)/config" ]] || die "KEDA's module source is missing at $(keda_src): run 'hack/keda.sh build'"
  if [[ -d "${KEDA_STATE}" ]] && keda_alive && keda_apiservice_available; then
    log "already running (state ${KEDA_STATE})"
    return 0
  fi
  [[ -d "${KEDA_STATE}" ]] && keda_down
  local start src ip
  start=$(now_s)
  src=$(keda_src)
  ip=$(keda_bind_ip)
  [[ -n "${ip}" ]] || die "no host address for the adapter (set KEDA_BIND_IP)"
  mkdir -p "${KEDA_STATE}/certs" "${STATE}/pids" "${STATE}/logs"
  : >"${KEDA_STATE}/ports.env"
  trap 'rc=$?; trap - EXIT; if ((rc != 0)); then log "KEDA start failed; stopping it (logs: ${STATE}/logs/keda*.log)"; tail -n 15 "${STATE}"/logs/keda*.log >&2 || true; keda_down >/dev/null 2>&1 || true; fi; exit ${rc}' EXIT
  keda_port KEDA_GRPC_PORT
  keda_port KEDA_METRICS_PORT
  keda_port KEDA_PROBE_PORT
  keda_port KEDA_ADAPTER_PORT
  keda_port KEDA_ADAPTER_METRICS_PORT

  # CRDs of this very version, from the module source (server-side: they are too large for the
  # last-applied annotation)
  kctl apply --server-side --force-conflicts -f "${src}/config/crd/bases/" >/dev/null
  # polled, not `kubectl wait`: v1.34's kubectl fails at once ("accessor error: <nil>") while the new CRD has no
  # status.conditions yet
  wait_for 60 "the ScaledObject CRD Established" keda_crd_established || die "KEDA's CRDs were not established"
  # KEDA's own RBAC, as its manifests bind it: the ServiceAccount keda/keda-operator
  kctl create namespace keda --dry-run=client -o yaml | kctl apply -f - >/dev/null
  kctl -n keda create serviceaccount keda-operator --dry-run=client -o yaml | kctl apply -f - >/dev/null
  local f
  for f in config/rbac/role.yaml config/rbac/role_binding.yaml config/metrics-server/role.yaml \
    config/metrics-server/role_binding.yaml; do
    kctl apply -f "${src}/${f}" >/dev/null
  done
  # both processes run as that ServiceAccount (a bound token, like a pod's), not as cluster admin
  local token
  token=$(kctl -n keda create token keda-operator --duration 48h)
  cat >"${KEDA_STATE}/keda.kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: elastiserve-local
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 <"${STATE}/pki/ca.crt")
users:
- name: keda-operator
  user:
    token: ${token}
contexts:
- name: elastiserve-local
  context: {cluster: elastiserve-local, user: keda-operator}
current-context: elastiserve-local
KCFG
  chmod 600 "${KEDA_STATE}/keda.kubeconfig"
  # one certificate (signed by the cluster CA) for the operator's gRPC metrics service, the
  # adapter's client side of it and the adapter's serving side towards the aggregation layer, as
  # KEDA's own cert rotation does; KEDA reads ca.crt/tls.crt/tls.key from its --cert-dir
  sign_cert keda "/CN=keda-operator.keda.svc" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,IP:${ip},DNS:keda-operator.keda.svc,DNS:keda-operator.keda.svc.cluster.local,DNS:keda-metrics-apiserver.keda.svc,DNS:keda-metrics-apiserver.keda.svc.cluster.local"
  cp "${STATE}/pki/keda.crt" "${KEDA_STATE}/certs/tls.crt"
  cp "${STATE}/pki/keda.key" "${KEDA_STATE}/certs/tls.key"
  cp "${STATE}/pki/ca.crt" "${KEDA_STATE}/certs/ca.crt"

  export KUBECONFIG="${KEDA_STATE}/keda.kubeconfig" KEDA_CLUSTER_OBJECT_NAMESPACE=keda POD_NAMESPACE=keda WATCH_NAMESPACE=""
  start_proc keda "$(keda_dir)/keda" \
    --cert-dir "${KEDA_STATE}/certs" --enable-cert-rotation=false \
    --enable-webhook-patching=false --enable-apiservice-patching=false \
    --metrics-bind-address "127.0.0.1:${KEDA_METRICS_PORT}" \
    --health-probe-bind-address "127.0.0.1:${KEDA_PROBE_PORT}" \
    --metrics-service-bind-address "127.0.0.1:${KEDA_GRPC_PORT}" \
    --ca-dir "${KEDA_STATE}/certs" \
    --zap-log-level info --zap-encoder console
  wait_component keda 90 "the KEDA operator's /readyz" http_ok "http://127.0.0.1:${KEDA_PROBE_PORT}/readyz"
  local kc="${KEDA_STATE}/keda.kubeconfig"
  start_proc keda-adapter "$(keda_dir)/keda-adapter" \
    --bind-address "${ip}" --secure-port "${KEDA_ADAPTER_PORT}" \
    --cert-dir "${KEDA_STATE}/certs" \
    --tls-cert-file "${KEDA_STATE}/certs/tls.crt" --tls-private-key-file "${KEDA_STATE}/certs/tls.key" \
    --client-ca-file "${KEDA_STATE}/certs/ca.crt" \
    --lister-kubeconfig "${kc}" --authentication-kubeconfig "${kc}" --authorization-kubeconfig "${kc}" \
    --metrics-service-address "127.0.0.1:${KEDA_GRPC_PORT}" \
    --port "${KEDA_ADAPTER_METRICS_PORT}" \
    --zap-log-level info --zap-encoder console
  unset KUBECONFIG
  kctl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: keda-metrics-apiserver, namespace: keda, labels: {app: keda-metrics-apiserver}}
spec:
  ports:
  - {name: https, port: 443, protocol: TCP, targetPort: ${KEDA_ADAPTER_PORT}}
---
# selector-less: the adapter is a host process on ${ip}
apiVersion: v1
kind: Endpoints
metadata: {name: keda-metrics-apiserver, namespace: keda, labels: {app: keda-metrics-apiserver}}
subsets:
- addresses: [{ip: ${ip}}]
  ports: [{name: https, port: ${KEDA_ADAPTER_PORT}, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.external.metrics.k8s.io, labels: {app.kubernetes.io/part-of: keda-operator}}
spec:
  service: {name: keda-metrics-apiserver, namespace: keda, port: 443}
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: $(base64 -w0 <"${STATE}/pki/ca.crt")
YAML
  wait_component keda-adapter 120 "APIService v1beta1.external.metrics.k8s.io Available" keda_apiservice_available
  trap - EXIT
  log "KEDA ${KEDA_VERSION} up in $(fmt_duration $(($(now_s) - start))): operator (gRPC 127.0.0.1:${KEDA_GRPC_PORT}), adapter https://${ip}:${KEDA_ADAPTER_PORT}; logs ${STATE}/logs/keda{,-adapter}.log"
}

keda_down() {
  if [[ -f "${MARKER}" ]] && load_ports 2>/dev/null; then
    kctl delete apiservice v1beta1.external.metrics.k8s.io --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  if [[ -d "${STATE}/pids" ]]; then
    stop_procs keda-adapter keda
  fi
  rm -rf "${KEDA_STATE}"
  rm -f "${STATE}/pki/keda.crt" "${STATE}/pki/keda.key"
  log "KEDA stopped"
}

keda_status() {
  components_status "${KEDA_COMPONENTS[@]}" || return 1
  [[ -f "${MARKER}" ]] && load_ports && keda_apiservice_available || { echo "APIService v1beta1.external.metrics.k8s.io: NOT Available"; return 1; }
  echo "APIService v1beta1.external.metrics.k8s.io: Available"
}

main() {
  local cmd=${1:-}
  case "${cmd}" in
    build) keda_build ;;
    path) keda_dir && echo ;;
    up) keda_up ;;
    down) keda_down ;;
    status) keda_status ;;
    -h | --help | help) sed -n '7,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2 ;;
    *) die "unknown command '${cmd}' (expected build|up|down|status|path)" ;;
  esac
}

main "$@"
