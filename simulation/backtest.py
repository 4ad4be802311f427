"""One backtest: a trace, a spec, the policies; per-policy records and the summary numbers.

Scoring (all over the scored span, after the warm-up history):

* **replica-hours**: pod lifetime (start-up included) summed over variants;
* **cost**: the same with each variant weighted by its cost factor (CPU request relative to the
  primary); ``cost_vs_oracle`` divides by the oracle's cost;
* **SLO-violation minutes**: wall-clock minutes in which more than 5 % of the requests took longer than
  the SLO (i.e. the minute's p95 latency is above it);
* **p95 latency**: over all requests of the span;
* **scale events**: changes of the desired replicas; **cold starts**: scale-ups from zero pods;
* **dropped**: share of requests dropped (backlog past the client timeout, or activator queue full);
* **forecast sMAPE** (ours): one-horizon-ahead forecasts against the realised rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..api.spec import ModelDeploymentSpec
from .cluster import Policy, RunRecord, Scenario, latency_quantile, make_scenario, run, tick_tail
from .config import SimConfig, backtest_spec
from .policy_hpa import HpaPolicy
from .policy_kpa import KpaPolicy
from .policy_oracle import OraclePolicy
from .policy_ours import OursPolicy
from .traces import Trace

POLICIES = ("ours", "hpa", "kpa", "oracle")
"""Policy names the backtest knows, in report order."""

COLUMNS = (
    ("replica_hours", "replica-hours"),
    ("cost", "cost"),
    ("cost_vs_oracle", "cost vs oracle"),
    ("slo_violation_minutes", "SLO-violation min"),
    ("p95_latency_ms", "p95 latency ms"),
    ("attainment", "attainment"),
    ("scale_events", "scale events"),
    ("pods_started_per_hour", "pods started/h"),
    ("pods_deleted_per_hour", "pods deleted/h"),
    ("cold_starts", "cold starts"),
    ("forecast_smape", "forecast sMAPE"),
)
"""The report table: (metric key, column title)."""


@dataclass
class PolicyResult:
    name: str
    record: RunRecord
    metrics: dict
    policy: object


@dataclass
class BacktestResult:
    scenario: Scenario
    results: dict[str, PolicyResult] = field(default_factory=dict)

    def table(self) -> list[dict]:
        return [{"policy": name, **r.metrics} for name, r in self.results.items()]


def make_policy(name: str, spec: ModelDeploymentSpec, cfg: SimConfig, days: float) -> Policy:
    if name == "ours":
        mode = cfg.forecast if cfg.forecast != "auto" else ("replay" if days > 2 else "online")
        return OursPolicy(spec, mode=mode)
    if name == "hpa":
        return HpaPolicy(spec)
    if name == "kpa":
        return KpaPolicy(spec)
    if name == "oracle":
        return OraclePolicy(spec)
    raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")


def run_backtest(
    trace: Trace,
    spec: ModelDeploymentSpec | None = None,
    cfg: SimConfig | None = None,
    policies: tuple[str, ...] | list[str] = POLICIES,
    progress: Callable[[str, float], None] | None = None,
    extra: dict[str, Policy] | None = None,
) -> BacktestResult:
    """Simulate each policy on ``trace`` and score it. ``spec=None`` uses ``backtest_spec(trace)``."""
    cfg = cfg or SimConfig()
    spec = backtest_spec(trace.step_seconds, trace.duration_seconds, spec, rate=trace.rate)
    sc = make_scenario(spec, trace, cfg)
    days = (sc.n - sc.i0) * sc.dt / 86400
    out = BacktestResult(sc)
    todo: list[tuple[str, Policy]] = [(n, make_policy(n, spec, cfg, days)) for n in policies]
    todo += list((extra or {}).items())
    for name, policy in todo:
        cb = (lambda f, _n=name: progress(_n, f)) if progress else None
        rec = run(sc, policy, cb)
        out.results[name] = PolicyResult(name, rec, score(sc, rec, policy), policy)
    oracle = out.results.get("oracle")
    for r in out.results.values():
        r.metrics["cost_vs_oracle"] = (r.metrics["cost"] / oracle.metrics["cost"]
                                       if oracle and oracle.metrics["cost"] > 0 else None)
    return out


def minute_index(sc: Scenario, seconds: float = 60) -> np.ndarray:
    """Group index (0-based) of each scored tick in buckets of ``seconds``."""
    t = (sc.i0 + np.arange(sc.n - sc.i0)) * sc.dt
    g = (t // seconds).astype(np.int64)
    return g - g[0]


def violated_windows(sc: Scenario, rec: RunRecord, seconds: float = 60, slow: np.ndarray | None = None) -> np.ndarray:
    """Per window of ``seconds`` of scored time: did more than 5 % of its requests miss the objective? (With
    60 s these are the SLO-violation minutes; a time-compressed replay scores windows of 60 / compression s.)"""
    requests = sc.lam[sc.i0 :] * sc.dt
    slow = tick_tail(sc, rec, sc.slo_seconds) if slow is None else slow
    window = minute_index(sc, seconds)
    over = np.bincount(window, weights=requests * slow)
    tot = np.bincount(window, weights=requests)
    return (tot > 0) & (over > 0.05 * tot + 1e-12)


def score(sc: Scenario, rec: RunRecord, policy: object | None = None) -> dict:
    dt = sc.dt
    lam = sc.lam[sc.i0 :]
    requests = lam * dt
    total_req = float(requests.sum())
    pods = rec.pods.astype(float)
    slow = tick_tail(sc, rec, sc.slo_seconds)
    violated = violated_windows(sc, rec, slow=slow)
    p95 = latency_quantile(sc, rec, 0.95) if total_req > 0 else math.nan
    names = sc.names
    metrics = {
        "replica_hours": float(pods.sum() * dt / 3600),
        "cost": float((pods * sc.costs[None, :]).sum() * dt / 3600),
        "cost_vs_oracle": None,
        "slo_violation_minutes": int(violated.sum()),
        "p95_latency_ms": float(1000 * p95) if math.isfinite(p95) else None,
        "slow_request_share": float((requests * slow).sum() / total_req) if total_req > 0 else 0.0,
        "dropped_share": float(rec.dropped.sum() / total_req) if total_req > 0 else 0.0,
        "scale_events": int(rec.scale_events),
        "pods_started_per_hour": float(rec.pods_started / max(len(lam) * dt / 3600, 1e-9)),
        "pods_deleted_per_hour": float(rec.pods_deleted / max(len(lam) * dt / 3600, 1e-9)),
        "attainment": float(1 - violated.sum() / max(len(violated), 1)),
        "cold_starts": int(rec.cold_starts),
        "mean_replicas": float(pods.sum(axis=1).mean()),
        "peak_replicas": int(pods.sum(axis=1).max()),
        "replica_hours_by_variant": {n: float(pods[:, k].sum() * dt / 3600) for k, n in enumerate(names)},
        "mean_utilisation": float(rec.util[rec.ready.sum(axis=1) > 0].mean()) if (rec.ready.sum(axis=1) > 0).any() else 0.0,
        "minutes": int(len(violated)),
        "forecast_smape": None,
    }
    summary = getattr(policy, "summary", None)
    if callable(summary):
        extra = summary()
        metrics["forecast_smape"] = extra.pop("forecast_smape", None)
        metrics.update(extra)
    if hasattr(policy, "panics"):
        metrics["panics"] = int(policy.panics)
    return metrics
