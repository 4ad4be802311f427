"""The in-flight signal and the fast panic check (``scaling/panic.py``, ``rules/inflight.py``): pure, with a
hand-held ``now``."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from elastiserve.api import MetricSnapshot, Observation, ScalerState, parse_spec
from elastiserve.api.decision import SloState
from elastiserve.scaling import decide, panic
from elastiserve.scaling import slo

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def spec_of(slo_on=True, bursts=True, **inflight):
    variants = [{"name": "fp32", "capacityQps": 10, "replicas": {"min": 1, "max": 40}}]
    if bursts:
        variants.append({"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 20,
                         "replicas": {"min": 0, "max": 10}})
    return parse_spec({
        "model": {"name": "m", "uri": "file:///m.onnx"},
        "variants": variants,
        "replicas": {"min": 1, "max": 40},
        "metrics": {"rules": {"cpu": {"enabled": False, "scaleUpAbove": 80, "scaleDownBelow": 30},
                              "latency": {"enabled": False, "scaleUpAbove": 200, "scaleDownBelow": 50},
                              "inflight": {"enabled": True, **inflight}}},
        "burst": {"enabled": bursts},
        "slo": {"enabled": slo_on},
    })


def obs(fp32, ready=None, int8=0, ready8=None):
    return Observation(replicas={"fp32": fp32, "int8": int8},
                       ready={"fp32": fp32 if ready is None else ready, "int8": int8 if ready8 is None else ready8})


def snap(inflight, age=2.0, now=T0):
    return MetricSnapshot(inflight=inflight, observed_at=now - timedelta(seconds=age))


def test_concurrency_default_is_littles_law_at_the_objective():
    sp = spec_of()
    # 10 qps per replica, mean latency at a 200 ms p95 of an exponential tail = 0.2 / ln 20 s.
    assert sp.inflight_concurrency == pytest.approx(10 * 0.2 / math.log(20))
    assert spec_of(concurrency=4).inflight_concurrency == 4
    assert slo.concurrency_qps(spec_of(concurrency=4), 8.0) == pytest.approx(20.0)
    assert slo.concurrency_qps(spec_of(enabled=False), 8.0) is None
    assert slo.concurrency_qps(sp, None) is None


@pytest.mark.parametrize("slo_on", [True, False], ids=["slo", "rules"])
def test_concurrency_jump_scales_up_within_one_panic_period(slo_on):
    sp = spec_of(slo_on=slo_on, bursts=False, concurrency=2)
    state = ScalerState(slo=SloState() if slo_on else None)
    # 4 ready replicas serve 40 qps; 20 in flight stand for 100 qps: the check one panic period later acts.
    calm = panic(sp, snap(6.0), state, T0, obs(4))
    assert calm.desired == {"fp32": 4} and not calm.state.panic_at
    now = T0 + timedelta(seconds=sp.metrics.rules.inflight.panic_period_seconds)
    d = panic(sp, snap(20.0, now=now), calm.state, now, obs(4))
    assert d.panic and d.desired["fp32"] >= 10, d.reasons
    assert d.state.panic_at == now
    assert d.state.recommendations[-1].value == d.desired["fp32"]  # the full cycle's scale-down window sees it
    assert "in-flight 20" in d.reasons[0]


@pytest.mark.parametrize(
    "inflight,current,ready",
    [(0.0, 8, 8), (2.0, 8, 8), (9.0, 8, 8), (12.0, 20, 4), (None, 8, 8)],
    ids=["idle", "low", "at-capacity", "already-starting-enough", "unknown"],
)
def test_panic_never_scales_down(inflight, current, ready):
    sp = spec_of(bursts=False, concurrency=2)
    state = ScalerState(slo=SloState())
    d = panic(sp, MetricSnapshot(inflight=inflight, observed_at=T0), state, T0, obs(current, ready))
    assert d.desired == {"fp32": current}, d.reasons
    assert d.state.scale_down_events == []


def test_panic_keeps_every_variant_at_least_where_it_is():
    sp = spec_of(concurrency=2)
    d = panic(sp, snap(40.0), ScalerState(slo=SloState()), T0, obs(2, int8=3))
    assert d.desired["fp32"] >= 2 and d.desired["int8"] >= 3
    assert sum(d.desired.values()) > 5


def test_panic_starts_the_fast_burst_variant_while_the_primary_starts():
    sp = spec_of(concurrency=2)
    d = panic(sp, snap(40.0), ScalerState(slo=SloState()), T0, obs(4))
    assert d.desired["fp32"] > 4 and d.desired["int8"] > 0, d.reasons
    assert any("int8 bridges fp32" in r for r in d.reasons)


@pytest.mark.parametrize(
    "spec_kw,snapshot,why",
    [({"enabled": False}, snap(100.0), "off"), ({"panicPeriodSeconds": 0}, snap(100.0), "off"),
     ({}, snap(100.0, age=600), "old"), ({}, MetricSnapshot(inflight=100.0), "unknown")],
    ids=["rule-off", "period-0", "stale", "no-timestamp"],
)
def test_panic_holds_without_a_fresh_signal(spec_kw, snapshot, why):
    sp = spec_of(bursts=False, **spec_kw)
    d = panic(sp, snapshot, ScalerState(), T0, obs(2))
    assert d.desired == {"fp32": 2} and why in d.reasons[0]


def test_panic_sizes_with_the_calibrated_quantile_and_headroom():
    sp = spec_of(bursts=False, concurrency=2)
    # A history of flat demand (no rise) and headroom ×2: the demand the in-flight imply, doubled.
    st = SloState(demand=[40.0] * 100, headroom_log=math.log(2.0))
    d = panic(sp, snap(12.0), ScalerState(slo=st), T0, obs(4))
    assert d.desired["fp32"] == 12  # 12 in flight = 60 qps, ×2 = 120 qps = 12 replicas of 10 qps
    # Without slo the rule's target applies: 60 qps at 70 % of capacity = 9 replicas.
    assert panic(spec_of(slo_on=False, bursts=False, concurrency=2), snap(12.0), ScalerState(), T0,
                 obs(4)).desired["fp32"] == 9


def test_panic_does_not_change_its_input_state():
    sp = spec_of(concurrency=2)
    state = ScalerState(slo=SloState(demand=[40.0] * 60))
    before = state.model_dump()
    panic(sp, snap(40.0), state, T0, obs(4))
    assert state.model_dump() == before


def test_inflight_rule_without_slo_is_proportional_per_replica():
    sp = spec_of(slo_on=False, bursts=False, concurrency=2)
    # 4 replicas, 16 in flight = 4 per replica = 200 % of concurrency 2 → 16 / (2 × 0.7) = 11.4 → 12.
    d = decide(sp, MetricSnapshot(inflight=16.0, qps=24.0, observed_at=T0), None, ScalerState(), T0, obs(4))
    assert d.reactive_total == 12 and "inflight 200%" in d.reasons[0]
    assert d.desired["fp32"] == 8  # the HPA scale-up rate limit (+100 % per 15 s) applies on this path
    # Inside the band (40-100 % of concurrency per replica): hold.
    d = decide(sp, MetricSnapshot(inflight=5.0, qps=24.0, observed_at=T0), None, ScalerState(), T0, obs(4))
    assert d.desired["fp32"] == 4


def test_slo_plan_reads_inflight_only_upwards():
    sp = spec_of(bursts=False, concurrency=2)
    low = decide(sp, MetricSnapshot(qps=40.0, inflight=1.0, observed_at=T0), None, ScalerState(), T0, obs(6))
    same = decide(sp, MetricSnapshot(qps=40.0, observed_at=T0), None, ScalerState(), T0, obs(6))
    assert low.desired == same.desired  # below capacity the rate governs
    high = decide(sp, MetricSnapshot(qps=40.0, inflight=30.0, observed_at=T0), None, ScalerState(), T0, obs(6))
    assert high.slo.panic and high.desired["fp32"] > same.desired["fp32"]
    assert any("in-flight requests" in r for r in high.reasons)


def test_panic_shortens_the_lead_time():
    on, off = spec_of(), spec_of(enabled=False)
    st = SloState(startup_seconds={"fp32": 30.0, "int8": 10.0})
    # Full cycle: 15 s old + 30 s (half the rate window) + 15 s sync = 60 s; panic check: 2 × 5 s.
    assert slo.lead_seconds(st, off, 15.0)["fp32"] == 90.0
    assert slo.lead_seconds(st, on, 15.0)["fp32"] == 40.0
    # Scale-downs are made by the full cycle only: they keep waiting on its lead.
    assert slo.lead_seconds(st, on, 15.0, panic_check=False)["fp32"] == 90.0
    plan = slo.plan(on, MetricSnapshot(qps=40.0, observed_at=T0 - timedelta(seconds=15)), None, st, T0, obs(6))
    assert plan.summary.lead_seconds["fp32"] == 40.0 and plan.hold_seconds == 90.0
