#!/usr/bin/env python3
"""What the demo's scripts share: where things are, how to print and fail, the stack of what a run started (undone at its end), the demo's
ModelDeployment and its backfilled history. ``demo.py`` (the entry point) and ``live.py`` (the live run)
both import it; neither imports the other's caller, so there is no import cycle.

The workload curves and the load generator live in the package (``elastiserve.loadgen``, the
``elastiserve load`` command).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # reuse the real-infrastructure helpers the tests use
sys.path.insert(0, str(ROOT / "hack"))

NAMESPACE = "demo"
MDEP = "minilm"


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def fail(msg: str) -> NoReturn:
    print(f"[demo] error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


# --------------------------------------------------------------------------- workload history


def history_openmetrics(rate, end: float, seconds: int, step: int, labels: dict[str, str]) -> str:
    """A counter's history as OpenMetrics text: ``rate(wall time)`` integrated, sampled every ``step`` s."""
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    lines = ["# HELP elastiserve_requests Requests served.", "# TYPE elastiserve_requests counter"]
    total = 0.0
    t = end - seconds
    while t <= end:
        lines.append(f"elastiserve_requests_total{{{lab}}} {total:.3f} {t:.3f}")
        # integrate with the trapezoid rule over one step
        total += 0.5 * (rate(t) + rate(t + step)) * step
        t += step
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    out: Path
    period: float
    duration: float
    keep: bool
    trace: Path | None
    jaeger: object | None = None
    """Jaeger (tests/support/jaeger.py) when its binary is built: every component sends it traces."""
    cleanups: list = field(default_factory=list)
    reach: list[str] = field(default_factory=list)
    """How to reach what runs (kubeconfig, Prometheus, Jaeger): printed with KEEP=1."""

    def stop_all(self) -> None:
        """Undo what the run started, newest first; one failing step does not stop the others."""
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()


def wait(cond, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # settling
            last = exc
        time.sleep(interval)
    fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({last})" if last else ""))


def demo_manifest(store: str, image: str, prometheus_url: str, period: int) -> dict:
    """The demo's ModelDeployment: real pods from ``image`` that download the model from ``store``. Capacities
    are what one pod at its 500m CPU limit serves within the latency rule on this machine, with margin for
    the load generator and the control plane sharing the two cores (bench/real_pod.py measured 19 req/s at a
    200 ms p95 for both precisions on an idle node: docs/local-cluster.md)."""
    return {
        "apiVersion": "elastiserve.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MDEP, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "minilm", "uri": store, "lazyLoading": {"memoryBudget": "512Mi", "preload": ["minilm"]}},
            "template": {
                "image": image,
                # requests fit 2 + 3 replicas, the operator and the activator in the node's 1 allocatable core;
                # the limits are the cgroup quotas the capacities were measured at
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                              "limits": {"cpu": "500m", "memory": "1Gi"}},
            },
            "variants": [
                # two primaries serve 24 req/s: the compressed day's 30 req/s peak needs the INT8 burst
                {"name": "fp32", "precision": "fp32", "role": "primary", "capacityQps": 12,
                 "replicas": {"min": 0, "max": 2}},
                {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 12,
                 "replicas": {"min": 0, "max": 3}},
            ],
            "replicas": {"min": 0, "max": 3},
            "syncPeriodSeconds": 5,
            "metrics": {
                "prometheus": {"url": prometheus_url},
                "windowSeconds": 15,
                "rules": {"latency": {"scaleUpAbove": 400, "scaleDownBelow": 20}},
            },
            "forecasting": {
                "enabled": True,
                "seasonalPeriodsSeconds": [period],
                "stepSeconds": 15,
                "historySeconds": 86400,
                "horizonSeconds": 45,
                "fourierTerms": 6,
                "refitSeconds": 900,
            },
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": 30,
                              "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
            },
            "burst": {"shortPeakSeconds": 120, "qualityBudget": 0.5},
            "scaleToZero": {"enabled": True, "idleSeconds": 30, "coldStartVariant": "int8"},
        },
    }


