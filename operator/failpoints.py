"""Failpoints for crash tests: ``ELASTISERVE_FAILPOINTS=after-decide,after-actuate`` kills the operator
with SIGKILL at that point of a cycle (like etcd's gofail). Unset in production, where it costs one
dictionary lookup per point.
"""

from __future__ import annotations

import os
import signal

_ACTIVE = {p.strip() for p in os.environ.get("ELASTISERVE_FAILPOINTS", "").split(",") if p.strip()}


def failpoint(name: str) -> None:
    """Die at once (SIGKILL: no cleanup, no status write) when the failpoint is armed."""
    if name in _ACTIVE:
        print(f"failpoint {name}: SIGKILL", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
