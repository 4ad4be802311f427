#!/usr/bin/env bash
# `make demo` entry point. DEMO=backtest runs the cluster-free policy comparison instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import elastiserve" 2>/dev/null; then
  echo "error: elastiserve is not installed; run: make install" >&2
  exit 1
fi
if [ "${DEMO:-cluster}" != "backtest" ] && ! command -v go >/dev/null 2>&1; then
  echo "error: Go is needed to build the local control plane (or run DEMO=backtest make demo)" >&2
  exit 1
fi
exec python3 hack/demo.py "$@"
