#!/usr/bin/env python3
"""`make demo`: elastiserve doing its job for real on a local control plane with a real Prometheus.

Steps (each prints progress; Ctrl-C or any failure tears everything down):

1. build (once, cached) and start the local control plane: etcd, kube-apiserver, controller-manager,
   scheduler, kwok (fake nodes), helm;
2. build the MiniLM ONNX model and its INT8 variant (once, cached);
3. ``helm install`` the chart (CRDs, RBAC, ServiceAccounts, activator); the operator and the activator
   then run as local processes *under the chart's ServiceAccounts* (kwok pods run no containers);
4. backfill a day of request history into Prometheus from the workload (the built-in generator, or
   ``TRACE=path.csv`` in the ../shared/traces format), so the forecaster has history at once;
5. ``kubectl apply`` a ModelDeployment with fp32 and INT8 variants, forecasting on, scale to zero on;
6. drive live load through real model-server processes ("pod twins": one real ``elastiserve serve``
   per Running kwok pod, registered as the model's endpoints — more replicas really split the load);
7. show a live table, then write a report folder (plots of what happened, Events, dashboard previews);
8. tear down (``KEEP=1`` leaves it running and prints how to reach it).

The workload is a *compressed day*: one cycle every ``PERIOD`` seconds (default 600) with an idle
stretch, a ramp, a short peak and a decline. The demo's ModelDeployment declares that period as its
seasonality, so the forecaster, fitted on the backfilled history, sees the next peak coming.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # reuse the real-infrastructure helpers the tests use
sys.path.insert(0, str(ROOT / "hack"))

NAMESPACE = "demo"
MDEP = "minilm"
SYSTEM_NS = "elastiserve-system"


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def fail(msg: str) -> "NoReturn":  # noqa: F821
    print(f"[demo] error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


# --------------------------------------------------------------------------- workload


def _smoothstep(a: float, b: float, x: float) -> float:
    t = min(1.0, max(0.0, (x - a) / (b - a)))
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class CompressedDay:
    """Request rate over one compressed day of ``period`` seconds, smooth so a Fourier model can learn it.

    The cycle starts with the night (no requests → scale to zero), then morning traffic (wake from
    zero, INT8 first), a short midday peak (pre-scale before it, INT8 burst), and the evening decline.
    """

    period: float = 600.0
    base: float = 6.0
    peak: float = 45.0

    def __call__(self, t: float) -> float:
        x = (t % self.period) / self.period
        day = _smoothstep(0.33, 0.43, x) * (1 - _smoothstep(0.88, 0.98, x))
        bump = math.exp(-(((x - 0.68) / 0.06) ** 2))
        return day * (self.base + (self.peak - self.base) * bump)


@dataclass(frozen=True)
class TraceCurve:
    """A trace from ../shared/traces, compressed so that ``period`` seconds replay ``span`` seconds of it."""

    times: tuple[float, ...]
    values: tuple[float, ...]
    period: float

    @classmethod
    def load(cls, path: Path, period: float, peak: float = 45.0) -> "TraceCurve":
        try:
            from elastiserve.simulation.traces import load_trace
        except ImportError as exc:
            fail(f"cannot load traces: {exc}")
        try:
            trace = load_trace(path)
        except (ValueError, OSError) as exc:
            fail(f"{path}: {exc}")
        values = [float(v) for v in trace.values]
        scale = peak / max(max(values), 1e-9)
        span = trace.step_seconds * len(values)
        times = tuple(i * trace.step_seconds * period / span for i in range(len(values)))
        return cls(times, tuple(v * scale for v in values), period)

    def __call__(self, t: float) -> float:
        x = t % self.period
        import bisect

        i = max(0, bisect.bisect_right(self.times, x) - 1)
        return self.values[i]


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


def main() -> None:
    ap = argparse.ArgumentParser(description="elastiserve demo")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "report" / "demo")))
    ap.add_argument("--duration", type=float, default=float(os.environ.get("DURATION", "700")))
    ap.add_argument("--period", type=float, default=float(os.environ.get("PERIOD", "600")))
    ap.add_argument("--trace", type=Path, default=Path(os.environ["TRACE"]) if os.environ.get("TRACE") else None)
    ap.add_argument("--keep", action="store_true", default=os.environ.get("KEEP") == "1")
    args = ap.parse_args()
    if args.trace is not None and not args.trace.is_file():
        fail(f"TRACE={args.trace}: no such file (use a CSV in the ../shared/traces format)")

    if os.environ.get("DEMO", "cluster") == "backtest":
        return run_backtest(args)
    args.out.mkdir(parents=True, exist_ok=True)
    lock = _single_instance()
    stack = Stack(out=args.out, period=args.period, duration=args.duration, keep=args.keep, trace=args.trace)
    from live import run_live  # hack/live.py

    def on_signal(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    ok = False
    try:
        run_live(stack)
        ok = True
    except KeyboardInterrupt:
        say("interrupted: tearing down")
    except SystemExit:
        raise
    except Exception as exc:  # one line for the user; the details are in the logs folder
        lines = str(exc).splitlines()
        # The first line says what failed; an "ERROR:" line from a hack/ script says why.
        why = [ln.strip() for ln in lines[1:] if "ERROR:" in ln][-1:]
        print(f"[demo] error: {type(exc).__name__}: {' '.join((lines[:1] or ['']) + why)}"
              f" (logs: {stack.out / 'logs'}); tearing down", file=sys.stderr, flush=True)
        import traceback

        (stack.out / "logs").mkdir(parents=True, exist_ok=True)
        (stack.out / "logs" / "demo-error.txt").write_text(traceback.format_exc())
    finally:
        # Teardown must finish even if the user presses Ctrl-C again.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack.keep and ok:
            pids = " ".join(str(p.pid) for p in stack.procs)
            say(f"KEEP=1: everything is left running; stop it with `kill {pids}` and `hack/cluster.sh down`")
        else:
            stack.stop_all()
    if not ok:
        raise SystemExit(1)


def _single_instance():
    """One demo at a time: two would share (and tear down) the same local control plane."""
    import fcntl

    cache = Path(os.environ.get("ELASTISERVE_CACHE") or Path.home() / ".cache" / "elastiserve")
    cache.mkdir(parents=True, exist_ok=True)
    handle = open(cache / "demo.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        fail(f"another demo is running (pid {handle.read().strip() or '?'}); stop it first (Ctrl-C there)")
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def run_backtest(args) -> None:
    out = args.out.parent / "backtest" if args.out.name == "demo" else args.out
    argv = [sys.executable, "-m", "elastiserve.cli", "backtest", "--out", str(out)]
    if args.trace:
        argv += ["--trace", str(args.trace)]
    say(f"backtest on {'the built-in workload' if not args.trace else args.trace} → {out}")
    rc = subprocess.call(argv)
    if rc != 0:
        fail(f"backtest failed (exit {rc})")
    table = out / "report.md"
    if table.exists():
        print(table.read_text())


if __name__ == "__main__":
    main()
