#!/usr/bin/env python3
"""Decisions per second: ``decide()`` alone, and a full cycle with an in-memory metric source.

A "full cycle" is what the operator does per ModelDeployment and period, minus the network: parse the
spec, read a snapshot (and, with forecasting, update the forecaster with the new points), decide, and
build the status patch and the replica patch. Printed as JSON; compare the ratios, not absolute times.

    python bench/decide.py [--counts 1 100 1000] [--forecast] [--slo] [--panic]

``--slo`` adds cycles with the SLO policy on (``spec.slo``), its demand history full (480 samples) as in
steady state, with and without forecasting.

``--panic`` adds the SLO cycle with the in-flight signal on (``metrics.rules.inflight``) and the fast panic
check between cycles (``scaling.panic``: parse, snapshot, panic, status dump), half of its checks firing.

``--plan`` adds the operator's own pure cycle (``operator.plan``): build the ``Observed``, run
``decide_cycle`` and ``plan_cycle`` (every replica patch, the whole status patch with conditions, the
Events and the metric values). It does more than the ``full_cycle`` above, which builds only part of the
status; compare ``full_cycle_plan`` with ``full_cycle`` in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import datetime, timedelta, timezone

import numpy as np

from elastiserve.api import MetricSnapshot, Observation, ScalerState, parse_spec
from elastiserve.api.window import MetricWindow
from elastiserve.operator import builders
from elastiserve.operator.status import decision_conditions, variant_summary
from elastiserve.scaling import decide, panic

T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
SPEC = {
    "model": {"name": "m", "uri": "file:///m.onnx"},
    "variants": [
        {"name": "fp32", "capacityQps": 10},
        {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 20, "replicas": {"min": 0, "max": 5}},
    ],
    "replicas": {"min": 1, "max": 20},
}


class InMemorySource:
    """The MetricSource contract, answered from arrays (a stub of Prometheus for the benchmark only)."""

    def __init__(self, n: int, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.qps = rng.uniform(5, 150, n)
        self.cpu = rng.uniform(10, 95, n)
        step = 60
        t = np.arange(3 * 1440)
        self.history = 50 + 30 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 3, t.size)
        self.step = step

    def snapshot(self, i: int, now: datetime) -> MetricSnapshot:
        return MetricSnapshot(cpu=self.cpu[i], qps=self.qps[i], latency=40.0, inflight=self.qps[i] / 10,
                              observed_at=now)

    def window(self, now: datetime, points: int) -> MetricWindow:
        vals = self.history[-points:]
        return MetricWindow(now - timedelta(seconds=self.step * (len(vals) - 1)), self.step, vals)


def bench_decide(n: int, cycles: int) -> dict:
    spec = parse_spec(SPEC)
    src = InMemorySource(n)
    states = [ScalerState() for _ in range(n)]
    replicas = [{"fp32": 3, "int8": 0} for _ in range(n)]
    snaps = [src.snapshot(i, T0) for i in range(n)]
    t = time.perf_counter()
    for c in range(cycles):
        now = T0 + timedelta(seconds=15 * c)
        for i in range(n):
            d = decide(spec, snaps[i].model_copy(update={"observed_at": now}), None, states[i], now,
                       Observation(replicas=replicas[i], ready=replicas[i]))
            states[i], replicas[i] = d.state, d.desired
    dt = time.perf_counter() - t
    return {"decisions": n * cycles, "seconds": round(dt, 4), "per_second": round(n * cycles / dt, 1)}


def bench_cycle(n: int, cycles: int, forecast: bool, slo: bool = False, inflight: bool = False) -> dict:
    raw = dict(SPEC, forecasting={"enabled": forecast, "stepSeconds": 60, "historySeconds": 3 * 86400,
                                  "refitSeconds": 86400}, slo={"enabled": slo},
               metrics={"rules": {"inflight": {"enabled": inflight}}})
    src = InMemorySource(n)
    statuses: list[dict] = [{} for _ in range(n)]
    if slo:
        from elastiserve.scaling.slo import RING

        # Steady state: a full demand history, as after two hours of cycles (what status.scaler holds).
        full = {"slo": {"demand": [float(x) for x in src.qps[:1].repeat(RING)], "demandTime": T0.isoformat()}}
        statuses = [{"scaler": ScalerState.model_validate(full).to_api()} for _ in range(n)]
    replicas = [{"fp32": 3, "int8": 0} for _ in range(n)]
    forecasters = {}
    fit_seconds = 0.0
    if forecast:
        from elastiserve.forecasting import make_forecaster

        spec = parse_spec(raw)
        # One model's full fit is the refit cost; the cycle below measures the per-cycle update path.
        t = time.perf_counter()
        for i in range(n):
            forecasters[i] = make_forecaster(spec.forecasting)
            forecasters[i].update(src.window(T0, 3 * 1440), T0)
        fit_seconds = time.perf_counter() - t
    per_cycle = []
    for c in range(1, cycles + 1):
        now = T0 + timedelta(seconds=60 * c)
        t = time.perf_counter()
        for i in range(n):
            spec = parse_spec(raw)  # the operator parses the spec kopf hands it every cycle
            snap = src.snapshot(i, now)
            fc = forecasters[i].update(src.window(now, 3), now) if forecast else None
            state = ScalerState.model_validate(statuses[i].get("scaler") or {})
            obs = Observation(replicas=replicas[i], ready=replicas[i])
            d = decide(spec, snap, fc, state, now, obs)
            patches = [builders.build_replicas("m", "ns", v, r) for v, r in d.desired.items() if r != replicas[i].get(v)]
            statuses[i] = {
                "scaler": d.state.to_api(),
                "variantSummary": variant_summary(d.desired),
                "conditions": decision_conditions(statuses[i].get("conditions"), d, fc, forecast, now, 1),
                "patches": len(patches),
            }
            replicas[i] = d.desired
        per_cycle.append(time.perf_counter() - t)
    med = statistics.median(per_cycle)
    out = {
        "models": n,
        "cycle_seconds_median": round(med, 4),
        "cycles_per_second": round(n / med, 1),
        "fits_in_15s_period_on_one_core": med < 15,
        "headroom_vs_15s": round(15 / med, 1) if med > 0 else math.inf,
    }
    if forecast:
        out["initial_fit_seconds_total"] = round(fit_seconds, 2)
    return out


def bench_plan_cycle(n: int, cycles: int) -> dict:
    """The operator's pure part of a cycle, per model, with a metric source in memory."""
    from elastiserve.operator.plan import Observed, Owned, decide_cycle, plan_cycle

    raw = dict(SPEC, forecasting={"enabled": False})
    src = InMemorySource(n)
    statuses: list[dict] = [{} for _ in range(n)]
    replicas = [{"fp32": 3, "int8": 0} for _ in range(n)]
    applied: list[dict] = [dict(r) for r in replicas]
    per_cycle = []
    for c in range(1, cycles + 1):
        now = T0 + timedelta(seconds=60 * c)
        t = time.perf_counter()
        for i in range(n):
            spec = parse_spec(raw)
            stable = {v: Owned(v, f"m-{v}", replicas=r, ready=r) for v, r in replicas[i].items()}
            seen = Observed(spec=spec, namespace="ns", name="m", uid="u", now=now, generation=1, status=statuses[i],
                            stable=stable, snapshot=src.snapshot(i, now), applied=applied[i])
            plan = plan_cycle(seen, decide_cycle(seen))
            statuses[i] = dict(plan.status)
            replicas[i] = {v["name"]: v["desired"] for v in plan.status["variants"]}
            applied[i] = dict(replicas[i])
        per_cycle.append(time.perf_counter() - t)
    med = statistics.median(per_cycle)
    return {"models": n, "cycle_seconds_median": round(med, 4), "cycles_per_second": round(n / med, 1)}


def bench_panic(n: int, cycles: int) -> dict:
    """The panic check per model: parse the spec, an in-flight snapshot, ``panic()``, the scaler status."""
    from elastiserve.scaling.slo import RING

    raw = dict(SPEC, slo={"enabled": True}, metrics={"rules": {"inflight": {"enabled": True}}})
    src = InMemorySource(n)
    full = {"slo": {"demand": [float(x) for x in src.qps[:1].repeat(RING)], "demandTime": T0.isoformat()}}
    statuses = [{"scaler": ScalerState.model_validate(full).to_api()} for _ in range(n)]
    per_cycle = []
    fired = 0
    for c in range(1, cycles + 1):
        now = T0 + timedelta(seconds=5 * c)
        t = time.perf_counter()
        for i in range(n):
            spec = parse_spec(raw)
            # every other check finds the model past its ready capacity (3 × 10 qps) and scales up
            snap = MetricSnapshot(inflight=(6.0 if (i + c) % 2 else 0.5) * spec.inflight_concurrency, observed_at=now)
            state = ScalerState.model_validate(statuses[i]["scaler"])
            d = panic(spec, snap, state, now, Observation(replicas={"fp32": 3, "int8": 0}, ready={"fp32": 3, "int8": 0}))
            fired += d.desired != {"fp32": 3, "int8": 0}
            statuses[i] = {"scaler": d.state.to_api()}
        per_cycle.append(time.perf_counter() - t)
    med = statistics.median(per_cycle)
    return {"models": n, "check_seconds_median": round(med, 5), "checks_per_second": round(n / med, 1),
            "share_fired": round(fired / (n * cycles), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--forecast", action="store_true", help="include the forecaster's per-cycle update")
    ap.add_argument("--slo", action="store_true", help="include cycles with the SLO policy on")
    ap.add_argument("--plan", action="store_true", help="include the operator's observe/decide/plan cycle")
    ap.add_argument("--panic", action="store_true", help="include the in-flight signal and the panic check")
    args = ap.parse_args()
    result = {"decide": {}, "full_cycle": {}}
    for n in args.counts:
        result["decide"][n] = bench_decide(n, args.cycles)
        result["full_cycle"][n] = bench_cycle(n, args.cycles, forecast=False)
        if args.forecast:
            result.setdefault("full_cycle_with_forecast", {})[n] = bench_cycle(n, args.cycles, forecast=True)
        if args.plan:
            result.setdefault("full_cycle_plan", {})[n] = bench_plan_cycle(n, args.cycles)
        if args.slo:
            result.setdefault("full_cycle_with_slo", {})[n] = bench_cycle(n, args.cycles, forecast=False, slo=True)
            result.setdefault("full_cycle_with_forecast_and_slo", {})[n] = bench_cycle(n, args.cycles, forecast=True,
                                                                                      slo=True)
        if args.panic:
            result.setdefault("full_cycle_with_slo_and_inflight", {})[n] = bench_cycle(n, args.cycles, forecast=False,
                                                                                      slo=True, inflight=True)
            result.setdefault("panic_check", {})[n] = bench_panic(n, args.cycles)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
