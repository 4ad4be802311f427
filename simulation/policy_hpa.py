"""An HPA-like baseline: the Kubernetes HorizontalPodAutoscaler v2 algorithm on CPU utilisation.

Follows ``pkg/controller/podautoscaler`` (replica calculator + behaviour normalisation):

* every 15 s (``--horizontal-pod-autoscaler-sync-period``), CPU utilisation averaged over the ready
  pods, from metrics-server: CPU over the 15 s between its two newest scrapes, seen 15 s late (``SimConfig``);
* ``usageRatio = utilisation / target``; within the 0.1 tolerance the count holds;
* pods still starting have no metrics: when the ratio asks to scale up they count as 0 % busy and the
  ratio is recomputed over ready + starting pods; if that flips the direction or falls within the
  tolerance, the count holds. Otherwise ``desired = ceil(ratio × pods counted)``; with no ready pod,
  there is no metric and the HPA holds;
* stabilization: the highest recommendation of the last 300 s for scale-down, none for scale-up;
* rate limits (``selectPolicy: Max``): scale-up at most +100 % or +4 pods per 15 s, whichever allows
  more; scale-down at most -100 % per 15 s; then ``minReplicas``/``maxReplicas``.

**Target.** The HPA targets CPU utilisation in percent of the pod's request. The simulated pod is busy
``lambda / mu`` of the time, and ``SimConfig.target_utilisation`` is expressed in shares of
``capacityQps``, so the CPU target is ``100 · target_utilisation · capacityQps / mu`` (70 % of a 35 qps
capacity with mu ≈ 50/s is a 49 % CPU target). The HPA scales only the primary variant (one Deployment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..api.spec import ModelDeploymentSpec
from .cluster import ClusterView, Scenario


@dataclass(frozen=True)
class HpaPolicyRule:
    type: str  # "Pods" or "Percent"
    value: int
    period_seconds: float


@dataclass
class HpaSettings:
    """The HPA's defaults (``autoscaling/v2`` behavior and kube-controller-manager flags)."""

    sync_seconds: float = 15.0
    tolerance: float = 0.1
    scale_down_window: float = 300.0
    scale_up_window: float = 0.0
    scale_up: list[HpaPolicyRule] = field(default_factory=lambda: [HpaPolicyRule("Percent", 100, 15),
                                                                    HpaPolicyRule("Pods", 4, 15)])
    scale_down: list[HpaPolicyRule] = field(default_factory=lambda: [HpaPolicyRule("Percent", 100, 15)])
    target_cpu_percent: float | None = None
    """Explicit CPU target; default from ``SimConfig.target_utilisation`` (see module docstring)."""
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpu_saturation_qps: float | None = None
    """Per-pod rate at which a pod's CPU reaches its limit: when set, the CPU seen is the served rate over it,
    capped at 100 % (``simulation/live.py``), instead of the busy share of the simulator's service rate."""
    metric_window_seconds: float | None = None
    """Window of the metric the HPA reads; default ``SimConfig.hpa_metric_window_seconds`` (metrics-server's
    CPU). An external metric has its own: KEDA's Prometheus trigger reads its query's rate window."""


class HpaPolicy:
    """HPA v2 on CPU utilisation, primary variant only."""

    name = "hpa"

    def __init__(self, spec: ModelDeploymentSpec, settings: HpaSettings | None = None, name: str = "hpa"):
        self.spec = spec
        self.s = settings or HpaSettings()
        self.name = name
        self.sync_seconds = self.s.sync_seconds
        self.recommendations: list[tuple[float, int]] = []
        self.events: list[tuple[float, int]] = []  # (time, +added / -removed)

    def initial(self, sc: Scenario) -> list[int]:
        self.sc = sc
        p = sc.primary
        mu, cap = sc.mus[p], sc.capacity[p]
        self.target = self.s.target_cpu_percent or 100.0 * sc.cfg.target_utilisation * cap / mu
        bounds = self.spec.bounds(self.spec.primary)
        self.min = self.s.min_replicas if self.s.min_replicas is not None else max(1, bounds.min)
        self.max = self.s.max_replicas if self.s.max_replicas is not None else bounds.max
        lam0 = sc.lam[max(0, sc.i0 - int(60 / sc.dt)) : sc.i0 + 1].mean()
        n0 = math.ceil(100.0 * lam0 / mu / self.target - 1e-9)
        out = [0] * len(sc.names)
        out[p] = min(max(n0, self.min), self.max)
        return out

    # -- replica calculator

    def recommend(self, current: int, ready: int, starting: int, utilisation: float | None) -> int:
        """``GetResourceReplicas``: the raw recommendation from the CPU utilisation of the ready pods."""
        if ready == 0 or utilisation is None:
            return current  # no metrics: the HPA cannot compute a recommendation
        tol = self.s.tolerance
        ratio = utilisation / self.target
        if not (starting > 0 and ratio > 1.0):
            if abs(1.0 - ratio) <= tol:
                return current
            return math.ceil(ratio * ready - 1e-9)
        # Scaling up with unready pods: they count as 0 % busy and the ratio is recomputed.
        new_ratio = utilisation * ready / (self.target * (ready + starting))
        if abs(1.0 - new_ratio) <= tol or new_ratio < 1.0:
            return current
        desired = math.ceil(new_ratio * (ready + starting) - 1e-9)
        return current if desired < current else desired

    # -- behaviour normalisation

    def normalize(self, now: float, current: int, proposal: int) -> int:
        s = self.s
        keep = max(s.scale_down_window, s.scale_up_window)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - keep + 1e-9]
        self.recommendations.append((now, proposal))
        up_rec = down_rec = proposal
        for t, r in self.recommendations:
            if t > now - s.scale_up_window + 1e-9:
                up_rec = min(up_rec, r)
            if t > now - s.scale_down_window + 1e-9:
                down_rec = max(down_rec, r)
        stabilized = current
        if stabilized < up_rec:
            stabilized = up_rec
        if stabilized > down_rec:
            stabilized = down_rec
        desired = stabilized
        if desired > current:
            desired = min(desired, self._up_limit(now, current))
        elif desired < current:
            desired = max(desired, self._down_limit(now, current))
        return min(max(desired, self.min), self.max)

    def _changed(self, now: float, period: float) -> tuple[int, int]:
        added = sum(d for t, d in self.events if d > 0 and t > now - period + 1e-9)
        removed = -sum(d for t, d in self.events if d < 0 and t > now - period + 1e-9)
        return added, removed

    def _up_limit(self, now: float, current: int) -> int:
        limits = []
        for p in self.s.scale_up:
            added, removed = self._changed(now, p.period_seconds)
            start = current - added + removed
            limits.append(start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100)))
        return max(limits)

    def _down_limit(self, now: float, current: int) -> int:
        limits = []
        for p in self.s.scale_down:
            added, removed = self._changed(now, p.period_seconds)
            start = current + removed - added
            limits.append(start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100)))
        return min(limits)

    def step(self, now: float, current: int, ready: int, utilisation: float | None) -> int:
        """One HPA sync: the new replica count (also used directly by tests)."""
        starting = max(0, current - ready)
        proposal = self.recommend(current, ready, starting, utilisation)
        desired = self.normalize(now, current, proposal)
        if desired != current:
            keep = max([p.period_seconds for p in self.s.scale_up + self.s.scale_down], default=0)
            self.events = [(t, d) for t, d in self.events if t > now - keep + 1e-9]
            self.events.append((now, desired - current))
        return desired

    def decide(self, view: ClusterView) -> list[int] | None:
        sc = self.sc
        p = sc.primary
        sat = self.s.cpu_saturation_qps
        window = self.s.metric_window_seconds or sc.cfg.hpa_metric_window_seconds
        if sat:
            # The pods' CPU as metrics-server reports it: what they served over the window, spread over the pods
            # Ready now (a pod started since has little usage yet) as a share of their limit, at most 100 %.
            served = view.served_rate(window, sc.cfg.scrape_delay_seconds)
            util = None if served is None else min(1.0, served / (max(view.ready[p], 1) * sat))
        else:
            util = view.utilisation(window, sc.cfg.scrape_delay_seconds)
        cpu = None if util is None else 100.0 * util
        current = view.desired[p]
        desired = self.step(view.t, current, view.ready[p], cpu)
        out = list(view.desired)
        out[p] = desired
        return out
