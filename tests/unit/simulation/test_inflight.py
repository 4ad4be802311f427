"""The simulator's in-flight gauge (Little's law on its latency model) and our policy's panic loop on it."""

from __future__ import annotations

import numpy as np
import pytest

from elastiserve.simulation import SimConfig
from elastiserve.simulation.cluster import ClusterView, make_scenario, run
from elastiserve.simulation.config import default_spec
from elastiserve.simulation.policy_ours import OursPolicy
from elastiserve.simulation.traces import Trace


def _spec(inflight: bool):
    base = default_spec()
    rules = base.metrics.rules.model_copy(update={"inflight": base.metrics.rules.inflight.model_copy(
        update={"enabled": inflight})})
    return base.model_copy(update={"metrics": base.metrics.model_copy(update={"rules": rules}),
                                   "forecasting": base.forecasting.model_copy(update={"enabled": False})})


class Fixed:
    name = "fixed"
    sync_seconds = 3600.0

    def __init__(self, n: int):
        self.n = n

    def initial(self, sc):
        return [self.n, 0]

    def decide(self, view):
        return None


def test_inflight_follows_littles_law_and_counts_the_backlog():
    spec = _spec(True)
    trace = Trace("flat", 60, np.full(20, 60 * 60.0))  # 60 req/s
    sc = make_scenario(spec, trace, SimConfig(warmup_seconds=0))
    mu = sc.mus[0]
    rec = run(sc, Fixed(2))
    # 2 pods at 60 req/s: rho = 60 / (2 mu); L = 2 rho / (1 - rho) (two M/M/1 queues), no backlog.
    rho = 60 / (2 * mu)
    assert rec.inflight[5] == pytest.approx(2 * rho / (1 - rho))
    # 1 pod below the load: the backlog grows by (60 - mu) per second and is all in flight.
    over = run(sc, Fixed(1))
    assert over.backlog[10] > 0
    assert over.inflight[10] > over.backlog[10]
    assert over.inflight[20] - over.inflight[10] == pytest.approx(over.backlog[20] - over.backlog[10], rel=1e-6)
    view = ClusterView(sc, over)
    view.i = sc.i0 + 21
    assert view.inflight(2.0) == over.inflight[19]  # one tick (2 s) old
    view.i = sc.i0
    assert view.inflight(2.0) is None


def _step_run(inflight: bool):
    # 100 req/s for 10 min, then 300 req/s: the panic check acts before the next full cycle.
    spec = _spec(inflight)
    trace = Trace("step", 60, np.array([100 * 60.0] * 10 + [300 * 60.0] * 10))
    sc = make_scenario(spec, trace, SimConfig(warmup_seconds=0))
    policy = OursPolicy(spec)
    rec = run(sc, policy)
    return sc, policy, rec


def test_panic_loop_reacts_to_a_step_before_the_rate_path_does():
    sc, on, rec_on = _step_run(True)
    _, off, rec_off = _step_run(False)
    assert on.sync_seconds == 5 and off.sync_seconds == 15
    assert on.panics > 0 and off.panics == 0
    step = int(600 / sc.dt)

    def first_added(rec):
        base = rec.pods[step - 1].sum()
        return next(j for j in range(step, len(rec.pods)) if rec.pods[j].sum() > base) - step

    assert first_added(rec_on) * sc.dt <= 15  # within the scrape age + a panic period (+ a tick)
    assert first_added(rec_on) < first_added(rec_off)
