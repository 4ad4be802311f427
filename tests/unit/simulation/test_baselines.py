"""The HPA-like and KPA-like baselines reproduce their documented behaviour on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from elastiserve.simulation import SimConfig, Trace, default_spec, make_scenario
from elastiserve.simulation.policy_hpa import HpaPolicy, HpaSettings
from elastiserve.simulation.policy_kpa import KpaPolicy
from elastiserve.simulation.policy_oracle import oracle_schedule


def scenario(rate: float = 100.0, minutes: int = 30):
    trace = Trace("flat", 60, np.full(minutes, rate * 60))
    return make_scenario(default_spec(), trace, SimConfig(warmup_seconds=0))


def hpa(target: float = 50.0, **kw) -> HpaPolicy:
    p = HpaPolicy(default_spec(), HpaSettings(target_cpu_percent=target, **kw))
    p.initial(scenario())
    p.target = target
    p.min, p.max = 1, 100
    return p


# --------------------------------------------------------------------------- HPA


@pytest.mark.parametrize(
    "current,ready,util,want",
    [
        (4, 4, 50.0, 4),  # at target
        (4, 4, 54.0, 4),  # within the 0.1 tolerance
        (4, 4, 56.0, 5),  # just past it: ceil(4 * 1.12)
        (4, 4, 25.0, 2),  # half the target
        (6, 4, 100.0, 8),  # 2 unready pods count as 0 %: ratio 4*100/(50*6) = 1.33 -> ceil(1.33 * 6) = 8
        (5, 4, 60.0, 5),  # the same, but 4*60/(50*5) = 0.96 is within the tolerance: hold
        (4, 0, 90.0, 4),  # no ready pod: no metric, hold
    ],
    ids=["at-target", "within-tolerance", "past-tolerance", "half", "unready-scale-up", "unready-hold", "no-metrics"],
)
def test_hpa_replica_calculator(current, ready, util, want):
    p = hpa()
    assert p.recommend(current, ready, current - ready, util) == want


def test_hpa_holds_300s_before_scaling_down():
    """A step down in load: the HPA keeps the highest recommendation of the last 300 s."""
    p = hpa()
    t, current = 0.0, 10
    current = p.step(t, current, current, 50.0)  # at target: recommendation 10
    history = []
    for k in range(1, 30):  # load halves at t=15 s; sync every 15 s
        t = 15.0 * k
        current = p.step(t, current, current, 25.0 if current == 10 else 50.0)
        history.append((t, current))
    first_down = next(t for t, c in history if c < 10)
    assert first_down == pytest.approx(300.0)  # the t=0 recommendation of 10 leaves the window after 300 s
    assert dict(history)[first_down] == 5


@pytest.mark.parametrize(
    "current,util,want",
    [(2, 500.0, 6), (10, 150.0, 20), (10, 60.0, 12)],
    ids=["+4-pods-beats-doubling-when-small", "doubling-beats-+4-pods", "within-limits"],
)
def test_hpa_scale_up_rate_limits(current, util, want):
    """Scale-up: at most max(+100 %, +4 pods) per 15 s."""
    p = hpa()
    assert p.step(0.0, current, current, util) == want


def test_hpa_scale_up_limit_counts_earlier_changes_in_the_period():
    p = hpa()
    assert p.step(0.0, 2, 2, 1000.0) == 6  # +4 (limit max(4, 2*2))
    assert p.step(5.0, 6, 6, 1000.0) == 6  # within the same 15 s period: already +4
    assert p.step(15.1, 6, 6, 1000.0) == 12  # next period: doubles


# --------------------------------------------------------------------------- KPA


def kpa(target: float = 10.0) -> KpaPolicy:
    p = KpaPolicy(default_spec())
    p.initial(scenario())
    p.target = target
    return p


def test_kpa_stable_mode_follows_the_stable_window():
    p = kpa()
    assert p.scale(0.0, ready=5, stable=48.0, panic=50.0) == 5
    assert not p.in_panic
    assert p.scale(2.0, ready=5, stable=31.0, panic=30.0) == 4  # scale-down delay 0


def test_kpa_panics_on_a_2x_spike_within_the_panic_window():
    p = kpa()
    assert p.scale(0.0, ready=5, stable=50.0, panic=50.0) == 5
    # the 6 s panic average doubles while the 60 s average has barely moved
    got = p.scale(2.0, ready=5, stable=55.0, panic=100.0)
    assert p.in_panic and p.panics == 1
    assert got == 10  # the panic recommendation, not the stable one (6)


def test_kpa_below_panic_threshold_stays_stable():
    p = kpa()
    got = p.scale(0.0, ready=5, stable=52.0, panic=85.0)  # 9 pods wanted on 5 ready: 180 % < 200 %
    assert not p.in_panic and got == 6


def test_kpa_never_scales_down_in_panic_and_exits_after_the_stable_window():
    p = kpa()
    p.scale(0.0, ready=5, stable=55.0, panic=120.0)  # panic, wants 12; the threshold last held at t=0
    assert p.scale(2.0, ready=12, stable=60.0, panic=40.0) == 12  # load fell: held in panic
    assert p.scale(59.0, ready=12, stable=40.0, panic=40.0) == 12  # within one stable window: still panic
    assert p.in_panic
    got = p.scale(60.1, ready=12, stable=40.0, panic=40.0)  # > 60 s: exit panic, stable recommendation
    assert not p.in_panic and got == 6  # max scale-down rate 2: floor(12 / 2) = 6 > ceil(40/10)


def test_kpa_max_scale_up_rate():
    p = kpa()
    assert p.scale(0.0, ready=1, stable=1e6, panic=1e6) == 1000  # ceil(1000 * 1)


# --------------------------------------------------------------------------- oracle


def test_oracle_starts_pods_one_startup_early_and_bridges_short_dips():
    lam = np.array([10, 10, 10, 40, 40, 10, 40, 40, 10, 10, 10, 10, 10, 40], dtype=float)
    got = oracle_schedule(lam, capacity=20.0, startup_ticks=2, low=1, high=10)
    # need: 1 1 1 2 2 1 2 2 1 1 1 1 1 2; the 1-tick dip is bridged; the 5-tick dip is not;
    # pods are created 2 ticks before the need.
    assert got.tolist() == [1, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2]
