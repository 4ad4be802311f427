#!/usr/bin/env python3
"""What the demo's scripts share: where things are, how to print and fail, the process stack, the demo's
ModelDeployment and its backfilled history. ``demo.py`` (the entry point) and ``live.py`` (the live run)
both import it; neither imports the other's caller, so there is no import cycle.

The workload curves and the load generator live in the package (``elastiserve.loadgen``, the
``elastiserve load`` command).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
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
SYSTEM_NS = "elastiserve-system"


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
    procs: list[subprocess.Popen] = field(default_factory=list)
    jaeger: object | None = None
    """Jaeger (tests/support/jaeger.py) when its binary is built: every component sends it traces."""
    cleanups: list = field(default_factory=list)

    # ---- processes

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)


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


def sa_kubeconfig(cluster, sa: str, path: Path) -> Path:
    from support.devstack import sa_kubeconfig as make

    return make(cluster, SYSTEM_NS, sa, path)


def demo_manifest(models: dict[str, Path], prometheus_url: str, period: int) -> dict:
    return {
        "apiVersion": "elastiserve.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MDEP, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "minilm", "uri": f"file://{models['fp32'].parent}", "lazyLoading": {"preload": ["minilm"]}},
            "variants": [
                {"name": "fp32", "precision": "fp32", "role": "primary", "capacityQps": 12,
                 "replicas": {"min": 0, "max": 3}},
                {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 20,
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


