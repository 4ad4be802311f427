#!/usr/bin/env bash
# Run pytest; "no tests collected" (exit 5) is a failure, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
# -P: cwd (the repository root) off sys.path, where its `operator/` package would shadow the standard
# library's (not PYTHONSAFEPATH: inherited, it would also drop hack/ scripts' own folder from their path)
python3 -P -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5); treating as failure" >&2
  exit 1
fi
exit "$rc"
