"""The latency model of a simulated replica set: one M/M/1 queue per ready pod, plus a fluid backlog.

* A pod of variant ``v`` serves requests one at a time with exponential service times of rate ``mu_v``.
  ``capacityQps`` in the spec is "the rate one replica serves at its latency SLO", so ``mu_v`` is
  calibrated from it: an M/M/1 sojourn time is exponential with rate ``mu - lambda``, its p95 is
  ``ln 20 / (mu - lambda)``, and p95 = SLO at lambda = capacity gives ``mu = capacity + ln 20 / SLO``.
  (capacity 35 qps and SLO 200 ms give mu ≈ 50/s: CPU busy 70 % at capacity.)
* The load balancer spreads requests in proportion to pod capacity, so every ready pod runs at the
  same utilisation ``rho = lambda / sum(mu)``; the sojourn time on a pod of variant ``v`` is
  ``Exp(mu_v (1 - rho))``.
* Overload (``lambda > sum(mu)``) and the wait for the first pod after zero feed a fluid backlog ``Q``
  (requests); a request also waits ``w = Q / sum(mu)`` for the backlog ahead of it. With no ready pod,
  ``w`` is the time until the next pod is ready.
* Within a tick the M/M/1 part is taken at steady state (ticks of a few seconds are long against
  service times of tens of milliseconds); ``rho`` is capped at ``RHO_CAP`` so overloaded ticks get a
  long but finite tail on top of the backlog wait.

The share of requests slower than the SLO in a tick is then
``sum_v share_v · exp(-mu_v (1 - rho) (SLO - w))`` (1 when ``w >= SLO``), and a quantile of any mix of
ticks is found by bisection on the request-weighted mixture of these distributions.
"""

from __future__ import annotations

import math

import numpy as np

LN20 = math.log(20.0)
RHO_CAP = 0.99


def service_rate(capacity_qps: float, slo_seconds: float) -> float:
    """Per-pod service rate ``mu`` such that an M/M/1 pod at ``capacity_qps`` has p95 = SLO."""
    return capacity_qps + LN20 / slo_seconds


def tail(x: np.ndarray | float, rho: np.ndarray, wait: np.ndarray, mus: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """P(latency > x) per tick. ``mus`` (V,), ``shares`` (n, V) request shares per variant, ``rho``/``wait`` (n,)."""
    x = np.asarray(x, dtype=float)
    r = np.minimum(np.asarray(rho, dtype=float), RHO_CAP)
    left = x - wait  # time left for service after the backlog wait
    rates = mus[None, :] * (1.0 - r)[:, None]  # (n, V)
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.sum(shares * np.exp(-rates * np.maximum(left, 0.0)[:, None]), axis=1)
    return np.where(left <= 0, 1.0, np.minimum(p, 1.0))


def quantile(q: float, weights: np.ndarray, rho: np.ndarray, wait: np.ndarray, mus: np.ndarray,
             shares: np.ndarray, groups: np.ndarray | None = None, hi: float = 600.0,
             iterations: int = 50) -> np.ndarray | float:
    """The q-quantile of latency (seconds) over ticks weighted by ``weights`` (requests).

    With ``groups`` (sorted group index per tick), one quantile per group, all bisected together.
    """
    w = np.asarray(weights, dtype=float)
    if groups is None:
        groups = np.zeros(len(w), dtype=np.int64)
        single = True
    else:
        single = False
    n_groups = int(groups[-1]) + 1 if len(groups) else 0
    total = np.bincount(groups, weights=w, minlength=n_groups)
    lo = np.zeros(n_groups)
    high = np.full(n_groups, hi)
    target = 1.0 - q
    for _ in range(iterations):
        mid = (lo + high) / 2
        over = np.bincount(groups, weights=w * tail(mid[groups], rho, wait, mus, shares), minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(total > 0, over / np.maximum(total, 1e-300), 0.0)
        above = frac > target
        lo = np.where(above, mid, lo)
        high = np.where(above, high, mid)
    out = np.where(total > 0, (lo + high) / 2, np.nan)
    return float(out[0]) if single else out
