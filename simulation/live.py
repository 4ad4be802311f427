"""Scoring of LIVE runs (``bench/live.py``) and the simulator's calibrated replay of the same segment.

A live run records, for one contender (our operator, the real HPA, KEDA), what happened on the real node:

* requests: ``(sent_at, latency_s, status)`` per request, from the load generator (status 0: no response);
* samples: ``(t, desired, pods, ready)`` every second or two: the Deployment's ``spec.replicas``, the pods
  that exist (billed from creation to deletion, Terminating ones included) and the Ready ones.

Everything here is pure: numbers in, numbers out; times are seconds from the start of the load. The
definitions are the simulator's (``simulation/backtest.py``), so live and simulated figures compare:

* **pod-seconds**: the integral of the pod count over the span (a sample's count holds until the next);
* **SLO-violation minute**: a minute (by send time) in which more than 5 % of the requests were slower
  than the objective or failed (a failed or dropped request did not meet the objective either);
* **scale events**: changes of the desired replicas; **cold starts**: scale-ups from zero ready pods;
* **p95/p99**: nearest-rank quantiles over the successful requests.

``calibrated_backtest`` replays the same segment through the simulator with the capacity and start-up
measured on the real node, one simulated policy per live contender, and ``sim_errors`` compares.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SLOW_SHARE = 0.05
"""A minute violates the objective when more than this share of its requests were slow or failed (p95 > SLO)."""


@dataclass(frozen=True)
class Sample:
    """One observation of a contender's Deployment ``t`` seconds after the load started."""

    t: float
    desired: int
    pods: int
    ready: int


@dataclass(frozen=True)
class Request:
    """One request: sent ``sent_at`` seconds after the load started, answered after ``latency`` s with ``status``."""

    sent_at: float
    latency: float
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 200


def pod_seconds(samples: Sequence[Sample], end: float, start: float = 0.0) -> float:
    """Pod count integrated over ``[start, end]``: each sample's count holds until the next sample.

    Before the first sample the first sample's count is assumed (the run starts from a known state)."""
    if end < start:
        raise ValueError(f"end ({end}) is before start ({start})")
    pts = sorted(samples, key=lambda s: s.t)
    if not pts:
        return 0.0
    total = 0.0
    prev_t, prev_n = start, pts[0].pods
    for s in pts:
        t = min(max(s.t, start), end)
        total += (t - prev_t) * prev_n
        prev_t, prev_n = t, s.pods
    total += (end - prev_t) * prev_n
    return total


def minute_table(requests: Iterable[Request], slo_seconds: float, minutes: int,
                 window_seconds: float = 60.0) -> list[dict]:
    """Per minute of send time (or window of ``window_seconds``): requests, slow (over the objective,
    successful), failed, violated."""
    if slo_seconds <= 0 or window_seconds <= 0:
        raise ValueError(f"the objective and the window must be positive (got {slo_seconds} s, {window_seconds} s)")
    rows = [{"minute": m, "requests": 0, "slow": 0, "failed": 0} for m in range(max(minutes, 0))]
    for r in requests:
        m = int(r.sent_at // window_seconds)
        if not 0 <= m < len(rows):
            continue
        row = rows[m]
        row["requests"] += 1
        if not r.ok:
            row["failed"] += 1
        elif r.latency > slo_seconds:
            row["slow"] += 1
    for row in rows:
        bad = row["slow"] + row["failed"]
        row["violated"] = row["requests"] > 0 and bad > SLOW_SHARE * row["requests"]
    return rows


def violation_minutes(requests: Iterable[Request], slo_seconds: float, minutes: int) -> int:
    """Minutes (of ``minutes`` from the start) in which more than 5 % of the requests were slow or failed."""
    return sum(1 for row in minute_table(requests, slo_seconds, minutes) if row["violated"])


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (the smallest value with at least ``q`` of the values at or below it)."""
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1] (got {q})")
    if not values:
        return None
    xs = sorted(values)
    return xs[max(0, math.ceil(q * len(xs)) - 1)]


def scale_events(samples: Sequence[Sample]) -> int:
    """How often the desired replicas changed."""
    pts = sorted(samples, key=lambda s: s.t)
    return sum(1 for a, b in zip(pts, pts[1:]) if a.desired != b.desired)


def cold_starts(samples: Sequence[Sample]) -> int:
    """Scale-ups from zero: the desired replicas went above 0 while no pod was Ready."""
    pts = sorted(samples, key=lambda s: s.t)
    return sum(1 for a, b in zip(pts, pts[1:]) if a.desired == 0 and b.desired > 0 and a.ready == 0)


def pods_started(first_seen: Mapping[str, float], start: float = 0.0) -> int:
    """Pods created after ``start`` (``first_seen``: pod name -> when it was first seen)."""
    return sum(1 for t in first_seen.values() if t > start)


def summarize(requests: Sequence[Request], samples: Sequence[Sample], slo_seconds: float, duration: float,
              first_seen: Mapping[str, float] | None = None, window_seconds: float = 60.0) -> dict:
    """The report's figures for one contender's live run over ``[0, duration]``. ``window_seconds``: the
    windows of a time-compressed replay that stand for the trace's minutes (60 / compression), scored as
    minutes are (``slo_violation_windows`` of ``windows``)."""
    ok = [r.latency for r in requests if r.ok]
    errors: dict[str, int] = {}
    for r in requests:
        if not r.ok:
            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
    minutes = int(math.ceil(duration / 60 - 1e-9))
    table = minute_table(requests, slo_seconds, minutes)
    windows = int(math.ceil(duration / window_seconds - 1e-9))
    by_window = minute_table(requests, slo_seconds, windows, window_seconds)
    q = lambda p: None if (v := quantile(ok, p)) is None else round(1000 * v, 1)  # noqa: E731
    return {
        "pod_seconds": round(pod_seconds(samples, duration), 1),
        "slo_violation_minutes": sum(1 for row in table if row["violated"]),
        "minutes": minutes,
        "requests": len(requests),
        "ok": len(ok),
        "errors": errors,
        "error_share": round(1 - len(ok) / len(requests), 5) if requests else 0.0,
        "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99),
        "slow_share": round(sum(1 for v in ok if v > slo_seconds) / len(requests), 5) if requests else 0.0,
        "scale_events": scale_events(samples),
        "cold_starts": cold_starts(samples),
        "pods_started": pods_started(first_seen or {}, 0.0),
        "peak_pods": max((s.pods for s in samples), default=0),
        "mean_pods": round(pod_seconds(samples, duration) / duration, 3) if duration > 0 else None,
        "violated_minutes": [row["minute"] for row in table if row["violated"]],
        "window_seconds": window_seconds,
        "windows": windows,
        "slo_violation_windows": sum(1 for row in by_window if row["violated"]),
    }


def matched_cpu_target(cpu_core_seconds: float, pod_seconds_: float, cpu_request_cores: float) -> float:
    """The HPA CPU target (percent of the request) that would cost the given pod-seconds at the measured CPU use.

    An HPA holds mean utilisation near its target, so pod-seconds ≈ CPU core-seconds / (target × request):
    the target matching a contender's cost is its own mean utilisation (CPU used over CPU requested)."""
    if pod_seconds_ <= 0 or cpu_request_cores <= 0:
        raise ValueError("pod-seconds and the CPU request must be positive")
    return 100.0 * cpu_core_seconds / (pod_seconds_ * cpu_request_cores)


def relative_error(sim: float | None, live: float | None) -> float | None:
    """``(sim - live) / live``; None when either is missing or live is 0."""
    if sim is None or live is None or live == 0:
        return None
    return (sim - live) / live


def sim_errors(sim: Mapping[str, Mapping], live: Mapping[str, Mapping]) -> dict[str, dict]:
    """Per contender present in both: the simulator's pod-seconds (relative) and violation-minute (absolute) error."""
    out = {}
    for name in live:
        if name not in sim:
            continue
        s, v = sim[name], live[name]
        err = relative_error(s["pod_seconds"], v["pod_seconds"])
        out[name] = {
            "live_pod_seconds": v["pod_seconds"], "sim_pod_seconds": round(s["pod_seconds"], 1),
            "pod_seconds_error": None if err is None else round(err, 4),
            "live_violation_minutes": v["slo_violation_minutes"], "sim_violation_minutes": s["slo_violation_minutes"],
            "violation_minutes_error": s["slo_violation_minutes"] - v["slo_violation_minutes"],
        }
        if "slo_violation_windows" in s and "slo_violation_windows" in v:
            out[name].update(live_violation_windows=v["slo_violation_windows"],
                             sim_violation_windows=s["slo_violation_windows"],
                             violation_windows_error=s["slo_violation_windows"] - v["slo_violation_windows"])
    return out


# --------------------------------------------------------------------------- the simulator on the same segment


@dataclass(frozen=True)
class LiveContender:
    """A live contender as the simulator models it.

    ``kind``: ``ours`` (our policy with the live spec), ``oracle`` (perfect foresight, ``policy_oracle.py``: the
    fewest pods that meet the objective, each started one start-up ahead; no live counterpart, it is the least
    any policy pays on the segment), or ``hpa``/``keda``: the HPA v2 algorithm (15 s sync,
    tolerance, 300 s scale-down stabilization, rate limits) holding ``qps_target`` requests per second per pod.
    For KEDA that is its trigger's per-pod target; for the CPU-based HPA it is the per-pod rate at which the
    pods' measured CPU reaches the HPA's target (``rate_at_cpu_target``). The simulator's CPU is a busy share
    of its M/M/1 service rate ``mu``, so the policy runs at the busy-share target ``100 · qps_target / mu``.

    ``saturation_qps``: the rate at which a real pod's CPU reaches its limit (its closed-loop throughput, or
    CPU limit / CPU per request). With it, the metric the policy sees is the served rate over that, capped
    at 100 %, as a pod's CPU (and the rate of completed requests) is live. An overloaded pod then shows
    100 % and not ``mu / saturation`` of it: the simulator's ``mu`` is above a real pod's throughput."""

    name: str
    kind: str
    qps_target: float | None = None
    saturation_qps: float | None = None
    metric_window_seconds: float | None = None
    """Window of the metric the contender's HPA reads: KEDA's query's rate window; None for metrics-server's CPU
    (``SimConfig.hpa_metric_window_seconds``)."""


def rate_at_cpu_target(cpu_target_percent: float, cpu_request_cores: float, cpu_seconds_per_request: float) -> float:
    """Requests per second per pod at which a pod's CPU use reaches ``cpu_target_percent`` of its request."""
    if cpu_seconds_per_request <= 0 or cpu_request_cores <= 0:
        raise ValueError("CPU per request and the CPU request must be positive")
    return cpu_target_percent / 100.0 * cpu_request_cores / cpu_seconds_per_request


def calibrated_backtest(trace, spec, contenders: Sequence[LiveContender], startup_seconds: float,
                        max_replicas: int, tick_seconds: float = 1.0, window_seconds: float = 60.0):
    """Simulate ``contenders`` on ``trace`` (the live segment, compressed and scaled as replayed) with ``spec``
    (capacityQps = the capacity measured on the real node) and the measured start-up; the whole segment is
    scored (no warm-up: the live run has none either), by minute and by window of ``window_seconds``, from one
    Ready pod (as every live contender starts). Returns ``{name: summary}`` with pod-seconds and
    violation minutes, and the ``BacktestResult``."""
    from .backtest import run_backtest, violated_windows
    from .config import SimConfig
    from .latency import service_rate
    from .policy_hpa import HpaPolicy, HpaSettings
    from .policy_oracle import OraclePolicy
    from .policy_ours import OursPolicy

    prim = spec.primary
    cfg = SimConfig(tick_seconds=tick_seconds, warmup_seconds=0.0, forecast="online", initial_primary=1,
                    startup_seconds={prim.precision.value: float(startup_seconds)})
    mu = service_rate(prim.capacity_qps, spec.metrics.rules.latency.scale_up_above / 1000.0)
    extra = {}
    for c in contenders:
        if c.kind == "ours":
            extra[c.name] = OursPolicy(spec, mode="online")
        elif c.kind == "oracle":
            extra[c.name] = OraclePolicy(spec)
        elif c.kind in ("hpa", "keda"):
            if not c.qps_target or c.qps_target <= 0:
                raise ValueError(f"{c.name}: a positive per-pod request-rate target is needed (got {c.qps_target})")
            sat = c.saturation_qps
            if sat is not None and sat <= 0:
                raise ValueError(f"{c.name}: the saturation rate must be positive (got {sat})")
            extra[c.name] = HpaPolicy(spec, HpaSettings(target_cpu_percent=100.0 * c.qps_target / (sat or mu),
                                                        min_replicas=1, max_replicas=max_replicas,
                                                        cpu_saturation_qps=sat,
                                                        metric_window_seconds=c.metric_window_seconds), name=c.name)
        else:
            raise ValueError(f"unknown contender kind {c.kind!r} (known: ours, oracle, hpa, keda)")
    result = run_backtest(trace, spec, cfg, policies=(), extra=extra)
    out = {}
    for name, r in result.results.items():
        m = r.metrics
        out[name] = {"pod_seconds": m["replica_hours"] * 3600, "slo_violation_minutes": m["slo_violation_minutes"],
                     "p95_ms": m["p95_latency_ms"], "scale_events": m["scale_events"],
                     "dropped_share": m["dropped_share"], "minutes": m["minutes"]}
        windows = violated_windows(result.scenario, r.record, window_seconds)
        out[name].update(window_seconds=window_seconds, windows=int(len(windows)),
                         slo_violation_windows=int(windows.sum()))
    return out, result
