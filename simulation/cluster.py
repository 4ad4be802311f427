"""The discrete-time simulated cluster: pods that start up, a shared load, delayed metrics, a policy.

Every ``tick`` (2 s by default) the simulator

1. marks pods whose start-up delay has passed as ready;
2. lets the policy act if its sync period has come (it sees only the ``ClusterView``: delayed,
   window-averaged metrics and the replica counts a controller can read);
3. serves the tick's arrivals with the ready pods (``latency.py``): utilisation, backlog, drops.

Billing counts a pod from creation (start-up included) to deletion. Scale-down removes pods that are
still starting first (as a ReplicaSet does), then ready ones. Time is virtual: ``t`` is seconds from the
start of the trace and ``epoch0 + t`` the wall time the policies are shown.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..api.spec import ModelDeploymentSpec
from .config import SimConfig, cost_factors
from .latency import RHO_CAP, quantile, service_rate, tail
from .traces import Trace

EPOCH0 = 1704067200  # 2024-01-01T00:00:00Z, a Monday: the trace's t = 0


@dataclass
class Scenario:
    """Everything the policies of one backtest share: spec, settings, load, and derived constants."""

    spec: ModelDeploymentSpec
    cfg: SimConfig
    trace: Trace
    dt: float
    lam: np.ndarray
    """Arrival rate per tick over the whole trace (warm-up included)."""
    i0: int
    """First scored tick (after the warm-up history)."""
    names: list[str]
    mus: np.ndarray
    """Service rate of one pod per variant (1/s)."""
    capacity: np.ndarray
    """``capacityQps`` per variant."""
    startup: list[float]
    costs: np.ndarray
    slo_seconds: float
    fstep: int
    """Forecasting step (s) and the request-rate series at that step: ``fseries[k]`` is the mean rate over
    ``(k·fstep, (k+1)·fstep]`` and carries the label ``EPOCH0 + (k+1)·fstep``."""
    fseries: np.ndarray
    lam_cs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(1))

    @property
    def n(self) -> int:
        return len(self.lam)

    @property
    def start_seconds(self) -> float:
        return self.i0 * self.dt

    @property
    def primary(self) -> int:
        return self.names.index(self.spec.primary.name)


def make_scenario(spec: ModelDeploymentSpec, trace: Trace, cfg: SimConfig | None = None) -> Scenario:
    cfg = cfg or SimConfig()
    dt = float(min(cfg.tick_seconds, trace.step_seconds))
    n = int(trace.duration_seconds // dt)
    interpolate = cfg.interpolate if cfg.interpolate is not None else trace.step_seconds >= 300
    lam = trace.rate_at(0.0, dt, n, interpolate=interpolate)
    slo = spec.metrics.rules.latency.scale_up_above / 1000.0
    if slo <= 0:
        raise ValueError("the latency rule's scaleUpAbove (the SLO) must be positive")
    variants = spec.variants
    names = [v.name for v in variants]
    costs = cost_factors(spec, cfg)
    fstep = spec.forecasting.step_seconds
    kf = int(trace.duration_seconds // fstep)
    fseries = trace.rate_at(0.0, float(fstep), kf, interpolate=interpolate)
    warm = cfg.warmup_seconds
    if warm is None:
        from ..forecasting.fourier import plan_seasonality

        season, _ = plan_seasonality(spec.forecasting.seasonal_periods_seconds, spec.forecasting.fourier_terms,
                                     fstep, spec.forecasting.history_seconds)
        need = 2 * season.longest if season.periods else 30 * fstep
        warm = min(need, trace.duration_seconds / 2)
    i0 = int(math.ceil(warm / dt))
    sc = Scenario(
        spec=spec, cfg=cfg, trace=trace, dt=dt, lam=lam, i0=min(i0, n - 1), names=names,
        mus=np.array([service_rate(v.capacity_qps, slo) for v in variants]),
        capacity=np.array([v.capacity_qps for v in variants]),
        startup=[cfg.startup(v) for v in variants], costs=np.array([costs[nm] for nm in names]),
        slo_seconds=slo, fstep=fstep, fseries=fseries,
    )
    sc.lam_cs = np.concatenate([[0.0], np.cumsum(lam)])
    return sc


@dataclass
class RunRecord:
    """Per-tick state of one policy over the scored span (tick ``j`` is scenario tick ``i0 + j``)."""

    policy: str
    ready: np.ndarray
    pods: np.ndarray
    rho: np.ndarray
    util: np.ndarray
    wait: np.ndarray
    backlog: np.ndarray
    dropped: np.ndarray
    inflight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Requests in flight at the end of each tick: at the pods (Little's law on the latency model: arrivals
    times the mean M/M/1 sojourn) plus the backlog, or held by the activator while no pod is ready."""
    scale_events: int = 0
    cold_starts: int = 0
    pods_started: int = 0
    pods_deleted: int = 0
    extra: dict = field(default_factory=dict)


class ClusterView:
    """What a policy may read at a sync: replica counts and delayed, window-averaged metrics."""

    def __init__(self, sc: Scenario, rec: RunRecord):
        self.sc = sc
        self.rec = rec
        self.i = sc.i0
        self.t = sc.i0 * sc.dt
        self.ready: list[int] = []
        self.pods: list[int] = []
        self.desired: list[int] = []
        self.backlog = 0.0

    @property
    def epoch(self) -> float:
        return EPOCH0 + self.t

    def _span(self, window: float, delay: float) -> tuple[int, int]:
        dt = self.sc.dt
        end = self.i - int(round(delay / dt))
        start = end - max(1, int(round(window / dt)))
        return start, end

    def qps(self, window: float, delay: float) -> float:
        """Mean arrival rate over ``window`` seconds ending ``delay`` seconds ago (requests held included)."""
        a, b = self._span(window, delay)
        a, b = max(a, 0), max(b, 1)
        a = min(a, b - 1)
        return float((self.sc.lam_cs[b] - self.sc.lam_cs[a]) / (b - a))

    def inflight(self, delay: float) -> float | None:
        """In-flight requests (a gauge) as scraped ``delay`` seconds ago; None before the first record."""
        j = self.i - int(round(delay / self.sc.dt)) - 1 - self.sc.i0
        if j < 0 or j >= len(self.rec.inflight):
            return None
        return float(self.rec.inflight[j])

    def _recorded(self, window: float, delay: float) -> slice | None:
        """The recorded ticks of the window (at least the oldest one after ``delay``); None before any record."""
        a, b = self._span(window, delay)
        i0 = self.sc.i0
        a, b = max(a - i0, 0), b - i0
        if b <= a:
            b = min(a + 1, self.i - i0)
            if b <= a:
                return None
        return slice(a, b)

    def utilisation(self, window: float, delay: float) -> float | None:
        """Mean busy share of the ready pods (0..1) over the window; None before any record."""
        ticks = self._recorded(window, delay)
        return None if ticks is None else float(self.rec.util[ticks].mean())

    def served_rate(self, window: float, delay: float) -> float | None:
        """Requests served per second (busy share × ready capacity) over the window; None before any record."""
        ticks = self._recorded(window, delay)
        if ticks is None:
            return None
        capacity = self.rec.ready[ticks] @ np.asarray(self.sc.mus, dtype=float)
        return float((self.rec.util[ticks] * capacity).mean())

    def latency_p95_ms(self, window: float, delay: float) -> float | None:
        """Request-weighted p95 latency (ms) of the ticks in the window."""
        a, b = self._span(window, delay)
        i0 = self.sc.i0
        a, b = max(a - i0, 0), b - i0
        if b <= a:
            return None
        r = self.rec
        lam = self.sc.lam[i0 + a : i0 + b]
        if lam.sum() <= 0:
            return None
        shares = _shares(r.ready[a:b], self.sc.mus)
        q = quantile(0.95, lam, r.rho[a:b], r.wait[a:b], self.sc.mus, shares, iterations=24)  # to ~40 µs
        return 1000.0 * float(q)


class Policy(Protocol):
    """A scaling policy under test."""

    name: str
    sync_seconds: float

    def initial(self, sc: Scenario) -> list[int]:
        """Replicas per variant at the start of the scored span (all ready)."""
        ...

    def decide(self, view: ClusterView) -> list[int] | None:
        """Desired replicas per variant, or None to leave them as they are."""
        ...


def _shares(ready: np.ndarray, mus: np.ndarray) -> np.ndarray:
    cap = ready * mus[None, :]
    total = cap.sum(axis=1, keepdims=True)
    out = np.zeros_like(cap, dtype=float)
    np.divide(cap, total, out=out, where=total > 0)
    out[total[:, 0] <= 0, 0] = 1.0
    return out


def run(sc: Scenario, policy: Policy, progress: Callable[[float], None] | None = None) -> RunRecord:
    """Simulate ``policy`` over the scored span of the scenario."""
    dt = sc.dt
    V = len(sc.names)
    m = sc.n - sc.i0
    rec = RunRecord(
        policy=policy.name,
        ready=np.zeros((m, V), dtype=np.int32), pods=np.zeros((m, V), dtype=np.int32),
        rho=np.zeros(m), util=np.zeros(m), wait=np.zeros(m), backlog=np.zeros(m), dropped=np.zeros(m),
        inflight=np.zeros(m),
    )
    view = ClusterView(sc, rec)
    mus = [float(x) for x in sc.mus]
    startup = sc.startup
    timeout = sc.cfg.client_timeout_seconds
    queue_size = float(sc.spec.scale_to_zero.activator.queue_size)
    init = [max(0, int(x)) for x in policy.initial(sc)]
    if sc.cfg.initial_primary is not None:
        init = [0] * V
        init[sc.primary] = max(0, int(sc.cfg.initial_primary))
    ready = list(init)
    starting: list[deque[float]] = [deque() for _ in range(V)]
    desired = list(init)
    lam = sc.lam
    Q = 0.0
    next_sync = sc.i0 * dt
    sync = float(policy.sync_seconds)
    events = cold = started = deleted = 0
    ready_rec, pods_rec = rec.ready, rec.pods
    rho_rec, util_rec, wait_rec, q_rec, drop_rec = rec.rho, rec.util, rec.wait, rec.backlog, rec.dropped
    inflight_rec = rec.inflight
    report_every = max(1, m // 100)
    for j in range(m):
        i = sc.i0 + j
        t = i * dt
        for v in range(V):
            s = starting[v]
            while s and s[0] <= t + 1e-9:
                s.popleft()
                ready[v] += 1
        if t + 1e-9 >= next_sync:
            view.i, view.t = i, t
            view.ready = ready
            view.desired = desired
            view.pods = [ready[v] + len(starting[v]) for v in range(V)]
            view.backlog = Q
            want = policy.decide(view)
            next_sync += sync
            if want is not None and list(want) != desired:
                before = sum(view.pods)
                for v in range(V):
                    w = max(0, int(want[v]))
                    cur = ready[v] + len(starting[v])
                    if w > cur:
                        ready_at = t + startup[v]
                        starting[v].extend([ready_at] * (w - cur))
                        started += w - cur
                    elif w < cur:
                        remove = cur - w
                        deleted += remove
                        k = min(remove, len(starting[v]))
                        for _ in range(k):
                            starting[v].pop()
                        ready[v] -= remove - k
                events += 1
                if before == 0:
                    cold += 1
                desired = [max(0, int(x)) for x in want]
        C = 0.0
        n_ready = 0
        for v in range(V):
            C += ready[v] * mus[v]
            n_ready += ready[v]
            ready_rec[j, v] = ready[v]
            pods_rec[j, v] = ready[v] + len(starting[v])
        x = lam[i]
        if C > 0:
            busy = (x * dt + Q) / (C * dt)
            Q += (x - C) * dt
            if Q < 0:
                Q = 0.0
            limit = C * timeout
            if Q > limit:
                drop_rec[j] = Q - limit
                Q = limit
            rho_rec[j] = x / C
            util_rec[j] = busy if busy < 1.0 else 1.0
            wait_rec[j] = Q / C
            # Little's law: mean sojourn of the capacity-weighted M/M/1 pods is n_ready / (C (1 - rho)).
            r = x / C if x / C < RHO_CAP else RHO_CAP
            inflight_rec[j] = Q + x * n_ready / (C * (1.0 - r))
        else:
            Q += x * dt
            if Q > queue_size:
                drop_rec[j] = Q - queue_size
                Q = queue_size
            nxt = min((s[0] for s in starting if s), default=None)
            wait_rec[j] = (nxt - t) if nxt is not None else timeout
            rho_rec[j] = 0.0
            util_rec[j] = 0.0
            inflight_rec[j] = Q
        q_rec[j] = Q
        if progress is not None and j % report_every == 0:
            progress(j / m)
    rec.scale_events = events
    rec.pods_started = started
    rec.pods_deleted = deleted
    rec.cold_starts = cold
    if progress is not None:
        progress(1.0)
    return rec


def tick_tail(sc: Scenario, rec: RunRecord, x: float) -> np.ndarray:
    """Share of each tick's requests slower than ``x`` seconds."""
    return tail(x, rec.rho, rec.wait, sc.mus, _shares(rec.ready, sc.mus))


def latency_quantile(sc: Scenario, rec: RunRecord, q: float, groups: np.ndarray | None = None):
    lam = sc.lam[sc.i0 :]
    return quantile(q, lam, rec.rho, rec.wait, sc.mus, _shares(rec.ready, sc.mus), groups=groups)
