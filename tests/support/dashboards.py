"""The project's dashboards (``dashboards/`` at the repository root) as the tests evaluate them.

``load()`` imports the package with the root APPENDED to ``sys.path``, never first: the root's
``operator/`` must not shadow the standard library's. Panels reading the kubelet's cAdvisor series are
measured only where a kubelet runs pods (the real node); :func:`reads_kubelet` tells them apart.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

KUBELET_SERIES = ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes")
"""cAdvisor's series (CPU and memory per container), measured by the kubelet."""


def load() -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    import dashboards
    import dashboards.render
    import dashboards.spec

    return dashboards


def reads_kubelet(expr: str) -> bool:
    return any(name in expr for name in KUBELET_SERIES)


def evaluate(prom: Any, panel: Any, expr: str, start: float, end: float, step: float) -> tuple[list, list[float]]:
    """The series a panel's (expanded) query returns over [start, end] as Grafana would ask for them (a range
    query for a time series, an instant query at ``end`` otherwise), and their values."""
    if panel.kind == "timeseries":
        series = prom.query_range(expr, start, end, step)
        values = [float(v) for s in series for _, v in s["values"]]
    else:
        series = prom.query(expr, time=end)
        values = [float(s["value"][1]) for s in series]
    return series, [v for v in values if math.isfinite(v)]
