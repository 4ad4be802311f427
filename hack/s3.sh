#!/usr/bin/env bash
# A real S3 server for elastiserve's tests, benchmark and demo: SeaweedFS
# (Apache-2.0) built from its Go module and run as one process on 127.0.0.1.
# See docs/serving.md ("Models in S3").
#
# Usage: hack/s3.sh build|up|down|env|status
#   build   build `weed` once into ${ELASTISERVE_CACHE:-~/.cache/elastiserve}/bin/seaweedfs-<version>
#   up      start master+volume+filer+S3 on free loopback ports (state in $ELASTISERVE_S3_DIR)
#   down    stop the server `up` started (by its pid) and remove the state dir
#   env     print the AWS_* exports that point a client at the running server
#   status  exit 0 when the S3 endpoint answers
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source=hack/build.sh
source "${HACK_DIR}/build.sh"

log() { printf '[s3] %s\n' "$*" >&2; }
die() {
  printf '[s3] ERROR: %s\n' "$*" >&2
  exit 1
}

S3_DIR="${ELASTISERVE_S3_DIR:-${ELASTISERVE_CACHE}/s3}"
# Test credentials for a loopback-only server; never used for anything else.
S3_ACCESS_KEY="${ELASTISERVE_S3_ACCESS_KEY:-elastiserve}"
S3_SECRET_KEY="${ELASTISERVE_S3_SECRET_KEY:-elastiserve-secret}"
S3_REGION="${ELASTISERVE_S3_REGION:-us-east-1}"
# The address every SeaweedFS service binds and advertises: loopback, or (for pods of the real node)
# the node's bridge gateway, e.g. ELASTISERVE_S3_IP=10.250.0.1. Never the machine's uplink.
S3_IP="${ELASTISERVE_S3_IP:-127.0.0.1}"

seaweedfs_dir() { printf '%s/seaweedfs-%s' "${BIN_ROOT}" "${SEAWEEDFS_VERSION}"; }
WEED_BIN() { printf '%s/weed' "$(seaweedfs_dir)"; }

cmd_build() {
  local out tmp wd logf start v=${SEAWEEDFS_VERSION}
  out=$(seaweedfs_dir)
  if component_done "${out}"; then
    log "seaweedfs ${v}: cached (${out})"
    return
  fi
  go_env
  start=$(now_s)
  wd="${BUILD_ROOT}/seaweedfs-${v}"
  tmp="${out}.tmp"
  logf="${LOG_ROOT}/build-seaweedfs-${v}.log"
  : >"${logf}"
  log "building seaweedfs ${v} (log: ${logf}); a cold build takes several minutes"
  prepare_wrapper "${wd}" "elastiserve.local/build/seaweedfs"
  local gomod goline
  (cd "${wd}" && run_step "${logf}" "seaweedfs: download module" go mod download "github.com/seaweedfs/seaweedfs@${v}")
  gomod="${GOMODCACHE}/cache/download/github.com/seaweedfs/seaweedfs/@v/${v}.mod"
  [[ -f "${gomod}" ]] || die "seaweedfs go.mod not found at ${gomod}; log: ${logf}"
  goline=$(grep -E '^go [0-9.]+$' "${gomod}" | head -n1)
  # Replace directives apply only to the main module: repeat upstream's.
  {
    printf 'module elastiserve.local/build/seaweedfs\n\n%s\n\n' "${goline:-go 1.24.0}"
    printf 'require github.com/seaweedfs/seaweedfs %s\n\n' "${v}"
    grep -E '^replace [^ ]+ => [^ ]+ v[0-9]' "${gomod}" || true
  } >"${wd}/go.mod"
  rm -rf "${tmp}" && mkdir -p "${tmp}"
  (
    cd "${wd}" || exit 1
    run_step "${logf}" "seaweedfs: resolve modules" go get "github.com/seaweedfs/seaweedfs/weed@${v}"
    run_step "${logf}" "seaweedfs: compile" go build -trimpath -ldflags "-s -w" -o "${tmp}/weed" github.com/seaweedfs/seaweedfs/weed
  )
  "${tmp}/weed" version >>"${logf}" 2>&1 || die "built weed does not run; log: ${logf}"
  finish_component "${out}" "${tmp}" "seaweedfs-${v}" $(($(now_s) - start))
  log "seaweedfs ${v}: done in $(fmt_duration $(($(now_s) - start)))"
}

# SeaweedFS' S3 gateway answers any HTTP request (an anonymous GET / is refused with 403) once it is up.
s3_any_answer() {
  python3 - "$(cat "${S3_DIR}/endpoint")" <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/", timeout=2)
except urllib.error.HTTPError:
    pass  # an HTTP answer, even 403, means the gateway is up
PY
}

cmd_up() {
  [[ -x "$(WEED_BIN)" ]] || die "weed is not built: run 'hack/s3.sh build' first"
  if [[ -f "${S3_DIR}/weed.pid" ]] && kill -0 "$(cat "${S3_DIR}/weed.pid")" 2>/dev/null; then
    log "already running (pid $(cat "${S3_DIR}/weed.pid")); endpoint $(cat "${S3_DIR}/endpoint")"
    return
  fi
  if [[ "${S3_IP}" != 127.* ]] && ! ip -o -4 addr show dev es-cni0 2>/dev/null | grep -qF " ${S3_IP}/"; then
    die "ELASTISERVE_S3_IP=${S3_IP} is neither loopback nor the real node's bridge (es-cni0) address: refusing to listen there"
  fi
  mkdir -p "${S3_DIR}/data"
  local s3port mg vg fg sg fp mp vp
  { read -r s3port; read -r mg; read -r vg; read -r fg; read -r sg; read -r fp; read -r mp; read -r vp; } < <(free_ports 8)
  s3port=${ELASTISERVE_S3_PORT:-${s3port}}
  cat >"${S3_DIR}/s3.json" <<JSON
{"identities": [{"name": "elastiserve", "credentials": [{"accessKey": "${S3_ACCESS_KEY}", "secretKey": "${S3_SECRET_KEY}"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON
  printf 'http://%s:%s' "${S3_IP}" "${s3port}" >"${S3_DIR}/endpoint"
  # Every internal port (and its gRPC twin) is a free one, so several servers
  # can run side by side. weed binds /tmp/seaweedfs-<svc>-grpc-<port>.sock per
  # gRPC port and for the filer's and gateway's HTTP: `down` removes them.
  printf 'master-grpc %s\nvolume-grpc %s\nfiler-grpc %s\ns3-grpc %s\nfiler %s\ns3 %s\n' \
    "${mg}" "${vg}" "${fg}" "${sg}" "${fp}" "${s3port}" >"${S3_DIR}/socket-ports"
  "$(WEED_BIN)" server -ip="${S3_IP}" -ip.bind="${S3_IP}" -dir="${S3_DIR}/data" \
    -master.port="${mp}" -master.port.grpc="${mg}" \
    -volume.port="${vp}" -volume.port.grpc="${vg}" -volume.max=0 \
    -filer -filer.port="${fp}" -filer.port.grpc="${fg}" \
    -s3 -s3.port="${s3port}" -s3.port.grpc="${sg}" -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="${S3_DIR}/s3.json" \
    -master.volumeSizeLimitMB=64 >"${S3_DIR}/weed.log" 2>&1 &
  echo $! >"${S3_DIR}/weed.pid"
  if ! wait_for 60 "the S3 endpoint" s3_any_answer; then
    tail -n 30 "${S3_DIR}/weed.log" >&2 || true
    die "SeaweedFS did not answer on ${s3port}; log: ${S3_DIR}/weed.log"
  fi
  log "up: endpoint $(cat "${S3_DIR}/endpoint") (pid $(cat "${S3_DIR}/weed.pid"), log ${S3_DIR}/weed.log)"
}

cmd_down() {
  if [[ -f "${S3_DIR}/weed.pid" ]]; then
    local pid
    pid=$(cat "${S3_DIR}/weed.pid")
    kill "${pid}" 2>/dev/null || true
    wait_for 20 "weed to exit" bash -c "! kill -0 ${pid}" || kill -9 "${pid}" 2>/dev/null || true
  fi
  if [[ -f "${S3_DIR}/socket-ports" ]]; then
    local svc port
    while read -r svc port; do
      rm -f "/tmp/seaweedfs-${svc}-${port}.sock"
    done <"${S3_DIR}/socket-ports"
  fi
  rm -rf "${S3_DIR}"
  log "down"
}

cmd_env() {
  [[ -f "${S3_DIR}/endpoint" ]] || die "not up: run 'hack/s3.sh up' first"
  printf 'export AWS_ENDPOINT_URL=%q\n' "$(cat "${S3_DIR}/endpoint")"
  printf 'export AWS_ACCESS_KEY_ID=%q\nexport AWS_SECRET_ACCESS_KEY=%q\nexport AWS_REGION=%q\n' \
    "${S3_ACCESS_KEY}" "${S3_SECRET_KEY}" "${S3_REGION}"
}

cmd_status() {
  [[ -f "${S3_DIR}/endpoint" ]] && s3_any_answer
}

usage() { sed -n '6,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }

case "${1:-}" in
  build) cmd_build ;;
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *)
    usage
    die "unknown command '${1:-}' (expected build|up|down|env|status)"
    ;;
esac
