"""The oracle: perfect foresight of the load, the fewest primary replicas that meet the SLO.

With the latency model of ``latency.py`` a set of ``n`` primary pods meets the p95 SLO at rate
``lambda`` exactly when ``lambda / n <= capacityQps``, so the oracle needs ``n(t) = ceil(lambda(t) /
capacityQps)`` ready pods (at least the spec's minimum unless scale to zero is enabled). Knowing the
future, it

* creates each pod one start-up delay before it is needed, so it is ready just in time;
* deletes a pod as soon as it is not needed, unless it is needed again within one start-up delay:
  keeping it through such a short dip costs less than starting a new one (billing includes start-up).

This is the lower bound on replica-time for fp32 serving at the SLO. (Burst variants trade quality
for capacity; the oracle does not use them.)
"""

from __future__ import annotations

import math

import numpy as np

from ..api.spec import ModelDeploymentSpec
from .cluster import ClusterView, Scenario


def oracle_schedule(lam: np.ndarray, capacity: float, startup_ticks: int, low: int, high: int) -> np.ndarray:
    """Pods to have (ready or starting) at each tick; see the module docstring."""
    need = np.clip(np.ceil(lam / capacity - 1e-9).astype(np.int64), low, high)
    n = len(need)
    top = int(need.max()) if n else 0
    bridged = np.zeros(n, dtype=np.int64)
    for k in range(1, top + 1):
        mask = need >= k
        # Fill gaps of at most `startup_ticks` between two stretches where level k is needed.
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            continue
        gaps = np.diff(idx) - 1
        fill = np.flatnonzero((gaps > 0) & (gaps <= startup_ticks))
        level = mask.copy()
        for g in fill:
            level[idx[g] + 1 : idx[g + 1]] = True
        bridged += level
    # Start pods `startup_ticks` early: pods at t = max of bridged over [t, t + startup].
    if startup_ticks > 0 and n:
        padded = np.concatenate([bridged, np.full(startup_ticks, bridged[-1])])
        windows = np.lib.stride_tricks.sliding_window_view(padded, startup_ticks + 1)
        return windows.max(axis=1)[:n]
    return bridged


class OraclePolicy:
    """Replays ``oracle_schedule`` for the primary variant."""

    name = "oracle"

    def __init__(self, spec: ModelDeploymentSpec):
        self.spec = spec

    def initial(self, sc: Scenario) -> list[int]:
        self.sc = sc
        p = sc.primary
        self.sync_seconds = sc.dt
        startup_ticks = int(math.ceil(sc.startup[p] / sc.dt - 1e-9))
        bounds = self.spec.bounds(self.spec.primary)
        low = 0 if self.spec.scale_to_zero.enabled else max(1, bounds.min)
        self.need = np.clip(np.ceil(sc.lam[sc.i0 :] / sc.capacity[p] - 1e-9), low, bounds.max).astype(np.int64)
        self.schedule = oracle_schedule(sc.lam[sc.i0 :], float(sc.capacity[p]), startup_ticks, low, bounds.max)
        out = [0] * len(sc.names)
        out[p] = int(self.need[0])  # ready at the start
        return out

    def decide(self, view: ClusterView) -> list[int] | None:
        j = view.i - self.sc.i0
        out = list(view.desired)
        out[self.sc.primary] = int(self.schedule[j])
        return out
