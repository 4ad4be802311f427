"""A KPA-like baseline: Knative's autoscaler (``pkg/autoscaler/scaling/autoscaler.go``) on request rate.

Every 2 s tick:

* observed request rate averaged over the stable window (60 s) and the panic window (6 s, 10 % of it),
  seen ``SimConfig.kpa_metric_delay_seconds`` late (requests held by the activator count);
* ``readyPods = max(1, ready)``; ``maxScaleUp = ceil(1000 × readyPods)``;
  ``maxScaleDown = floor(readyPods / 2)`` (max scale-down rate 2);
* ``desiredStable = ceil(stable / target)``, ``desiredPanic = ceil(panic / target)``, each clamped to
  ``[maxScaleDown, maxScaleUp]``; ``target = target_utilisation × capacityQps`` (70 % by default);
* panic starts when ``ceil(panic / target) / readyPods >= 2`` (200 %), is extended while that holds, and
  ends one stable window after it last held; in panic the count never goes down (the highest panic
  recommendation is kept);
* no scale-down delay; ``minScale``/``maxScale`` from the spec's primary bounds;
* scale to zero (only where the spec enables it): when the recommendation is 0, the last pod goes after
  the 30 s grace period (``scale-to-zero-grace-period``); requests wait in the activator meanwhile.

The KPA scales only the primary variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..api.spec import ModelDeploymentSpec
from .cluster import ClusterView, Scenario


@dataclass
class KpaSettings:
    """Knative's autoscaler defaults (``config-autoscaler``)."""

    tick_seconds: float = 2.0
    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace: float = 30.0
    target_per_pod: float | None = None
    """Explicit target rate per pod; default ``target_utilisation × capacityQps``."""


class KpaPolicy:
    """Knative KPA on request rate, primary variant only."""

    name = "kpa"

    def __init__(self, spec: ModelDeploymentSpec, settings: KpaSettings | None = None):
        self.spec = spec
        self.s = settings or KpaSettings()
        self.sync_seconds = self.s.tick_seconds
        self.panic_time: float | None = None
        self.max_panic_pods = 0
        self.zero_since: float | None = None
        self.panics = 0

    def initial(self, sc: Scenario) -> list[int]:
        self.sc = sc
        p = sc.primary
        self.target = self.s.target_per_pod or sc.cfg.target_utilisation * sc.capacity[p]
        bounds = self.spec.bounds(self.spec.primary)
        self.zero_ok = self.spec.scale_to_zero.enabled
        self.min = 0 if self.zero_ok else max(1, bounds.min)
        self.max = bounds.max
        lam0 = sc.lam[max(0, sc.i0 - int(60 / sc.dt)) : sc.i0 + 1].mean()
        out = [0] * len(sc.names)
        out[p] = min(max(math.ceil(lam0 / self.target - 1e-9), self.min, 1 if lam0 > 0 else 0), self.max)
        return out

    def scale(self, now: float, ready: int, stable: float, panic: float) -> int:
        """``Scale()``: the desired pod count from the stable and panic averages (used directly by tests)."""
        s = self.s
        ready_f = max(1.0, float(ready))
        max_up = math.ceil(s.max_scale_up_rate * ready_f)
        max_down = math.floor(ready_f / s.max_scale_down_rate)
        dspc = math.ceil(stable / self.target - 1e-9)
        dppc = math.ceil(panic / self.target - 1e-9)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))
        over = dppc / ready_f >= s.panic_threshold
        if self.panic_time is None and over:
            self.panic_time = now
            self.panics += 1
        elif over:
            self.panic_time = now
        elif self.panic_time is not None and now > self.panic_time + s.stable_window:
            self.panic_time = None
            self.max_panic_pods = 0
        if self.panic_time is not None:
            self.max_panic_pods = max(self.max_panic_pods, desired_panic)
            return self.max_panic_pods
        return desired_stable

    @property
    def in_panic(self) -> bool:
        return self.panic_time is not None

    def decide(self, view: ClusterView) -> list[int] | None:
        sc, s = self.sc, self.s
        p = sc.primary
        delay = sc.cfg.kpa_metric_delay_seconds
        stable = view.qps(s.stable_window, delay)
        panic = view.qps(s.stable_window * s.panic_window_percentage / 100, delay)
        want = self.scale(view.t, view.ready[p], stable, panic)
        want = min(max(want, self.min), self.max)
        current = view.desired[p]
        if want == 0 and current > 0:
            if self.zero_since is None:
                self.zero_since = view.t
            if view.t - self.zero_since < s.scale_to_zero_grace:
                want = 1 if current >= 1 else 0
        else:
            self.zero_since = None
        out = list(view.desired)
        out[p] = want
        return out
