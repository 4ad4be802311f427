#!/usr/bin/env bash
# Jaeger v2 (an OpenTelemetry Collector distribution with Jaeger's storage and query extensions),
# built from its Go modules like the control plane, for the tracing tests and the demo.
# See docs/observability.md.
#
# Usage: hack/jaeger.sh build|path|config OTLP_HTTP_PORT QUERY_PORT
#   build   build the `jaeger` binary once into ${ELASTISERVE_CACHE:-~/.cache/elastiserve}/bin (keyed by version)
#   path    print the binary's path (exit 1 when it is not built)
#   config  print a loopback-only all-in-one configuration (in-memory storage) on the given ports
set -euo pipefail

# shellcheck source=hack/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
# shellcheck source=hack/build.sh
source "${HACK_DIR}/build.sh"

jaeger_dir() { printf '%s/jaeger-%s' "${BIN_ROOT}" "${JAEGER_VERSION}"; }

cmd_build() {
  go_env
  # The module's v1.x tags carry the v2 binary (cmd/jaeger); -X sets the version it reports.
  build_simple jaeger "${JAEGER_VERSION}" "$(jaeger_dir)" github.com/jaegertracing/jaeger/cmd/jaeger \
    "-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=${JAEGER_VERSION}"
}

cmd_path() {
  local bin
  bin="$(jaeger_dir)/jaeger"
  [[ -x "${bin}" ]] || die "jaeger ${JAEGER_VERSION} is not built: run hack/jaeger.sh build"
  printf '%s\n' "${bin}"
}

# Everything listens on 127.0.0.1 only, except the OTLP receiver when a third argument names its address
# (the real node's bridge address, for pods); the collector's own metrics are off (no port 8888).
cmd_config() {
  local otlp_http=${1:?OTLP HTTP port} query=${2:?query port} otlp_host=${3:-127.0.0.1}
  cat <<YAML
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 20000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:${query}
    grpc:
      endpoint: 127.0.0.1:0
receivers:
  otlp:
    protocols:
      http:
        endpoint: ${otlp_host}:${otlp_http}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
}

case "${1:-}" in
  build) cmd_build ;;
  path) cmd_path ;;
  config) shift; cmd_config "$@" ;;
  *) sed -n 6,9p "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; die "unknown command '${1:-}'" ;;
esac
