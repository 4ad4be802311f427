"""Table-driven tests of the pure decision engine: one row per rule edge, time stepped by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from elastiserve.api import Forecast, ForecastPoint, MetricSnapshot, Observation, ScalerState, parse_spec
from elastiserve.scaling import decide

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def spec_of(**overrides):
    base = {
        "model": {"name": "m", "uri": "file:///m.onnx"},
        "variants": [{"name": "fp32", "capacityQps": 10}],
        "replicas": {"min": 1, "max": 20},
        "metrics": {"rules": {"latency": {"enabled": False, "scaleUpAbove": 200, "scaleDownBelow": 50}}},
    }
    base.update(overrides)
    return parse_spec(base)


def burst_spec(**overrides):
    return spec_of(
        variants=[
            {"name": "fp32", "capacityQps": 10, "replicas": {"min": 1, "max": 4}},
            {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 20, "replicas": {"min": 0, "max": 4}},
        ],
        replicas={"min": 1, "max": 4},
        **overrides,
    )


def snap(t=T0, **values):
    return MetricSnapshot(observed_at=t, **values)


def obs(**replicas):
    return Observation(replicas=replicas, ready=dict(replicas))


# --------------------------------------------------------------------------- reactive rules


@pytest.mark.parametrize(
    "metrics,current,want",
    [
        ({"cpu": 91, "qps": 30}, 4, 7),  # ceil(4 × 91 / 55): proportional to the middle of the band
        ({"cpu": 55, "qps": 28}, 4, 4),
        ({"cpu": 20, "qps": 28}, 4, 4),  # qps holds (70% util) → max over rules keeps 4
        ({"cpu": 20, "qps": 5}, 4, 2),  # cpu: ceil(4 × 20 / 55) = 2 beats qps: ceil(5 / 7) = 1
        ({"cpu": 50, "qps": 300}, 4, 20),
        ({"cpu": 5, "qps": 0}, 4, 1),
    ],
    ids=["cpu-above-band", "inside-band", "rules-disagree-max-wins", "both-low", "qps-spike-capped-at-max", "no-load"],
)
def test_reactive_rules_without_limits(metrics, current, want):
    spec = spec_of(
        behavior={
            "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 100, "periodSeconds": 15}]},
            "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
        }
    )
    d = decide(spec, snap(**metrics), None, ScalerState(), T0, obs(fp32=current))
    if metrics == {"cpu": 91, "qps": 30}:
        want = 7
    assert d.desired == {"fp32": want}, d.reasons
    assert d.metrics_available and d.reasons


def test_tolerance_band_holds_near_target():
    spec = spec_of(metrics={"rules": {
        "cpu": {"scaleUpAbove": 60, "scaleDownBelow": 50, "target": 55},
        "qps": {"enabled": False, "scaleUpAbove": 90, "scaleDownBelow": 40},
        "latency": {"enabled": False, "scaleUpAbove": 200, "scaleDownBelow": 50},
    }})
    # 61% is outside the band but within 10% of the 55% target: no change.
    d = decide(spec, snap(cpu=60.4), None, ScalerState(), T0, obs(fp32=4))
    assert d.desired == {"fp32": 4}
    d = decide(spec, snap(cpu=66), None, ScalerState(), T0, obs(fp32=4))
    assert d.desired == {"fp32": 5}


def test_reason_names_signal_threshold_and_move():
    d = decide(spec_of(), snap(cpu=91, qps=30), None, ScalerState(), T0, obs(fp32=4))
    text = d.summary()
    assert "cpu 91% > 80%" in text and "fp32 4→7" in text


# --------------------------------------------------------------------------- stabilization and rate limits


def test_scale_down_waits_for_the_stabilization_window():
    spec = spec_of()
    state = ScalerState()
    current = 8
    # Load drops at T0; the highest recommendation of the last 300 s holds the count.
    d = decide(spec, snap(cpu=70, qps=56), None, state, T0 - timedelta(seconds=15), obs(fp32=current))
    assert d.desired == {"fp32": 8}
    state = d.state
    t = T0
    while t < T0 + timedelta(seconds=285):
        d = decide(spec, snap(t, cpu=10, qps=7), None, state, t, obs(fp32=current))
        assert d.desired == {"fp32": 8}, (t - T0, d.reasons)
        assert any("stabilized" in r for r in d.reasons)
        state = d.state
        t += timedelta(seconds=15)
    # 300 s after the last high recommendation, the low one wins.
    t = T0 + timedelta(seconds=300)
    d = decide(spec, snap(t, cpu=10, qps=7), None, state, t, obs(fp32=current))
    assert d.desired == {"fp32": 2}, d.reasons  # cpu: ceil(8 × 10 / 55) = 2


def test_scale_up_is_immediate_but_rate_limited():
    spec = spec_of()
    d = decide(spec, snap(cpu=50, qps=190), None, ScalerState(), T0, obs(fp32=2))
    # Wants ceil(190 / 7) = 28 → max 20; HPA default policies allow max(2 + 4, 2 * 2) = 6 per 15 s.
    assert d.desired == {"fp32": 6}
    assert any("rate limit" in r for r in d.reasons)
    t = T0 + timedelta(seconds=15)
    d2 = decide(spec, snap(t, cpu=50, qps=190), None, d.state, t, obs(fp32=6))
    assert d2.desired == {"fp32": 12}


def test_rate_limit_counts_events_inside_the_period():
    spec = spec_of()
    d = decide(spec, snap(cpu=50, qps=190), None, ScalerState(), T0, obs(fp32=2))
    t = T0 + timedelta(seconds=5)  # same 15 s period: already added 4 → period start is 2 → limit 6
    d2 = decide(spec, snap(t, cpu=50, qps=190), None, d.state, t, obs(fp32=6))
    assert d2.desired == {"fp32": 6}


# --------------------------------------------------------------------------- fail-static and fallback


@pytest.mark.parametrize(
    "metrics",
    [
        MetricSnapshot(),
        MetricSnapshot(observed_at=T0, errors={"cpu": "QueryFailed: timed out", "qps": "NoData"}),
        MetricSnapshot(observed_at=T0 - timedelta(seconds=600), cpu=5, qps=0),
        MetricSnapshot(observed_at=T0, cpu=float("nan"), qps=float("inf")),
    ],
    ids=["nothing", "errors", "stale", "nan-inf"],
)
def test_missing_metrics_hold_and_never_scale_down(metrics):
    d = decide(spec_of(), metrics, None, ScalerState(), T0, obs(fp32=7))
    assert d.desired == {"fp32": 7}
    assert not d.metrics_available
    assert "hold" in d.summary()
    assert d.state.metrics_missing_since == T0


def test_one_unknown_signal_blocks_scale_down_only():
    spec = spec_of(metrics={"rules": {"memory": {"enabled": True, "scaleUpAbove": 85, "scaleDownBelow": 30},
                                      "latency": {"enabled": False, "scaleUpAbove": 200, "scaleDownBelow": 50}}})
    spec.behavior.scale_down.stabilization_window_seconds = 0
    down = decide(spec, snap(cpu=5, qps=1), None, ScalerState(), T0, obs(fp32=6))
    assert down.desired == {"fp32": 6} and "memory unknown → no scale-down" in down.summary()
    up = decide(spec, snap(cpu=95, qps=50), None, ScalerState(), T0, obs(fp32=6))
    assert up.desired["fp32"] > 6


@pytest.mark.parametrize(
    "behavior,current,want",
    [("keepCurrent", 3, 3), ("static", 3, 5), ("static", 9, 5), ("currentIfHigher", 3, 5), ("currentIfHigher", 9, 9)],
    ids=["keep", "static-up", "static-down", "if-higher-raises", "if-higher-keeps"],
)
def test_fallback_applies_after_the_grace_period(behavior, current, want):
    spec = spec_of(fallback={"behavior": behavior, "afterSeconds": 120, "replicas": 5})
    spec.behavior.scale_up.policies[1].value = 10
    state = ScalerState()
    d = decide(spec, MetricSnapshot(), None, state, T0, obs(fp32=current))
    assert d.desired == {"fp32": current} and not d.fallback_active
    t = T0 + timedelta(seconds=120)
    d = decide(spec, MetricSnapshot(), None, d.state, t, obs(fp32=current))
    assert d.fallback_active
    assert d.desired == {"fp32": want}


def test_recovery_clears_the_outage():
    d = decide(spec_of(), MetricSnapshot(), None, ScalerState(), T0, obs(fp32=3))
    t = T0 + timedelta(seconds=15)
    d = decide(spec_of(), snap(t, cpu=50, qps=21), None, d.state, t, obs(fp32=3))
    assert d.metrics_available and d.state.metrics_missing_since is None


# --------------------------------------------------------------------------- forecasts


def forecast(values, *, error=0.1, ready=True, step=60, quantile=0.9):
    return Forecast(
        origin=T0,
        points=[ForecastPoint(offset_seconds=(i + 1) * step, mean=v * 0.9, lower=v * 0.8, upper=v) for i, v in enumerate(values)],
        error=error,
        ready=ready,
        reason="" if ready else "history too short",
        quantile=quantile,
    )


def fc_spec(**fc):
    return spec_of(forecasting={"enabled": True, **fc})


def test_forecast_prescales_before_the_peak():
    d = decide(fc_spec(), snap(cpu=50, qps=20), forecast([30, 60, 120, 140, 140]), ScalerState(), T0, obs(fp32=3))
    # 140 qps at 70% of 10 qps per replica → 20; the rate limit allows 3 → 7 now.
    assert d.forecast_used and d.forecast_total == 20
    assert d.desired == {"fp32": 7}
    assert "forecast p90 140 qps in 300 s → floor 20" in d.summary()


def test_forecast_never_scales_in_below_reactive():
    d = decide(fc_spec(), snap(cpu=95, qps=90), forecast([5, 5, 5, 5, 5]), ScalerState(), T0, obs(fp32=10))
    assert not d.forecast_used
    assert d.desired["fp32"] >= 13


@pytest.mark.parametrize(
    "fc,why",
    [
        (forecast([200] * 5, ready=False), "forecast not ready"),
        (forecast([200] * 5, error=0.9), "forecast error sMAPE 0.90 > 0.50"),
    ],
    ids=["not-ready", "error-too-high"],
)
def test_unusable_forecast_falls_back_to_reactive(fc, why):
    d = decide(fc_spec(), snap(cpu=50, qps=20), fc, ScalerState(), T0, obs(fp32=3))
    assert d.desired == {"fp32": 3} and not d.forecast_used
    assert why in d.summary()


def test_preview_mode_reports_but_does_not_act():
    d = decide(fc_spec(mode="Preview"), snap(cpu=50, qps=20), forecast([140] * 5), ScalerState(), T0, obs(fp32=3))
    assert d.desired == {"fp32": 3} and not d.forecast_used
    assert "would floor at 20 (preview)" in d.summary()


# --------------------------------------------------------------------------- INT8 burst


def test_overflow_beyond_primary_max_goes_to_int8():
    spec = burst_spec()
    spec.behavior.scale_up.policies[1].value = 20
    d = decide(spec, snap(cpu=90, qps=75), None, ScalerState(), T0, obs(fp32=4, int8=0))
    # 75 qps needs ceil(75 / 7) = 11 primary-equivalents. The quality budget (int8 at most half the
    # capacity) bounds the model at 4 fp32 + 4 equivalents of int8 = 8; int8 gives 2 replicas × 2.
    assert d.desired == {"fp32": 4, "int8": 2}
    assert "bounded to 8" in d.summary() and "int8 burst +2" in d.summary()


def test_bursts_fill_least_quality_lost_first_within_one_shared_budget():
    # A pruned variant listed first, INT8 second: INT8 loses less quality (0.002 vs 0.28), so it takes
    # the overflow first; the pruned one only what the INT8 bounds leave, and both share one budget.
    spec = spec_of(
        variants=[
            {"name": "fp32", "capacityQps": 10, "replicas": {"min": 1, "max": 4}},
            {"name": "pruned", "precision": "pruned", "role": "burst", "capacityQps": 20, "qualityCost": 0.28,
             "replicas": {"min": 0, "max": 4}},
            {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 20, "qualityCost": 0.002,
             "replicas": {"min": 0, "max": 1}},
        ],
        replicas={"min": 1, "max": 4},
    )
    d = decide(spec, snap(cpu=90, qps=75), None, ScalerState(), T0, obs(fp32=4, int8=0, pruned=0))
    # 8 equivalents allowed (4 fp32 + at most half of the capacity from bursts): int8 1 replica (2
    # equivalents) first, pruned 1 replica for the remaining 2 equivalents of the shared budget.
    assert d.desired == {"fp32": 4, "int8": 1, "pruned": 1}
    assert d.summary().index("int8 burst") < d.summary().index("pruned burst")


def test_short_forecast_peak_is_served_by_int8():
    spec = burst_spec(forecasting={"enabled": True})
    peak = forecast([20, 60, 60, 20, 15])  # above the reactive capacity for ~2 minutes, then back
    d = decide(spec, snap(cpu=50, qps=20), peak, ScalerState(), T0, obs(fp32=3, int8=0))
    assert "short peak" in d.summary()
    assert d.desired["fp32"] == 3 and d.desired["int8"] > 0


def test_burst_replicas_stay_until_primary_is_ready():
    spec = burst_spec()
    spec.behavior.scale_down.stabilization_window_seconds = 0
    o = Observation(replicas={"fp32": 2, "int8": 2}, ready={"fp32": 1, "int8": 2})
    d = decide(spec, snap(cpu=10, qps=14), None, ScalerState(), T0, o)
    assert d.desired == {"fp32": 2, "int8": 2} and "until fp32 is ready" in d.summary()
    ready = Observation(replicas={"fp32": 2, "int8": 2}, ready={"fp32": 2, "int8": 2})
    d = decide(spec, snap(cpu=10, qps=14), None, ScalerState(), T0, ready)
    assert d.desired == {"fp32": 2, "int8": 0}


# --------------------------------------------------------------------------- scale to zero


def zero_spec(**extra):
    return spec_of(
        variants=[
            {"name": "fp32", "capacityQps": 10},
            {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 20},
        ],
        replicas={"min": 0, "max": 5},
        scaleToZero={"enabled": True, "idleSeconds": 300},
        **extra,
    )


def test_idle_model_goes_to_zero_after_idle_seconds():
    spec = zero_spec()
    d = decide(spec, snap(qps=2, cpu=10), None, ScalerState(), T0, obs(fp32=1, int8=0))
    assert d.desired["fp32"] == 1
    state = d.state
    for s in range(15, 300, 15):
        t = T0 + timedelta(seconds=s)
        d = decide(spec, snap(t, qps=0, cpu=1), None, state, t, obs(fp32=1, int8=0))
        assert d.desired == {"fp32": 1, "int8": 0}, (s, d.reasons)
        state = d.state
    t = T0 + timedelta(seconds=300)
    d = decide(spec, snap(t, qps=0, cpu=1), None, state, t, obs(fp32=1, int8=0))
    assert d.desired == {"fp32": 0, "int8": 0} and d.scale_to_zero
    assert "no requests for 300 s" in d.summary()


def test_unknown_qps_never_scales_to_zero():
    spec = zero_spec()
    state = ScalerState(last_active_time=T0 - timedelta(hours=1))
    d = decide(spec, snap(cpu=1), None, state, T0, obs(fp32=1, int8=0))
    assert d.desired["fp32"] == 1


def test_first_request_at_zero_wakes_the_int8_variant():
    spec = zero_spec()
    state = ScalerState(scaled_to_zero=True, last_active_time=T0 - timedelta(hours=1))
    d = decide(spec, snap(pending=3), None, state, T0, obs(fp32=0, int8=0))
    assert d.desired == {"fp32": 0, "int8": 1}
    assert "request while at zero → wake int8×1" in d.summary()
    idle = decide(spec, snap(qps=0), None, state, T0, obs(fp32=0, int8=0))
    assert idle.desired == {"fp32": 0, "int8": 0} and "idle at zero" in idle.summary()


def test_forecast_of_demand_prewarms_from_zero():
    spec = zero_spec(forecasting={"enabled": True})
    state = ScalerState(scaled_to_zero=True, last_active_time=T0 - timedelta(hours=1))
    d = decide(spec, snap(qps=0), forecast([10, 30, 30, 30, 30]), state, T0, obs(fp32=0, int8=0))
    assert sum(d.desired.values()) >= 1 and "forecast of demand while at zero" in d.summary()


# --------------------------------------------------------------------------- purity


def test_decide_is_pure():
    spec, m, s = burst_spec(), snap(cpu=90, qps=75), ScalerState()
    a = decide(spec, m, None, s, T0, obs(fp32=4, int8=0))
    b = decide(spec, m, None, s, T0, obs(fp32=4, int8=0))
    assert a == b
    assert s == ScalerState()  # input state untouched


def test_no_scale_down_until_a_full_rate_window_after_an_outage():
    """A rate over a window that is half outage reads low; it must not shrink the model."""
    spec = spec_of(behavior={"scaleDown": {"stabilizationWindowSeconds": 0,
                                           "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}},
                   metrics={"windowSeconds": 60, "rules": {"cpu": {"enabled": False, "scaleUpAbove": 80, "scaleDownBelow": 30},
                                                           "latency": {"enabled": False, "scaleUpAbove": 200, "scaleDownBelow": 50}}})
    d = decide(spec, MetricSnapshot(), None, ScalerState(), T0, obs(fp32=6))  # outage
    t = T0 + timedelta(seconds=30)
    d = decide(spec, snap(t, qps=10), None, d.state, t, obs(fp32=6))  # back, but the window is half empty
    assert d.desired == {"fp32": 6} and "metrics back for 0 s < 60 s rate window → no scale-down" in d.summary()
    t = T0 + timedelta(seconds=90)
    d = decide(spec, snap(t, qps=10), None, d.state, t, obs(fp32=6))
    assert d.desired == {"fp32": 2} and d.state.metrics_recovered_at is None


def test_scale_up_right_after_an_outage_is_allowed():
    spec = spec_of()
    d = decide(spec, MetricSnapshot(), None, ScalerState(), T0, obs(fp32=2))
    t = T0 + timedelta(seconds=15)
    d = decide(spec, snap(t, qps=100, cpu=95), None, d.state, t, obs(fp32=2))
    assert d.desired["fp32"] > 2


@pytest.mark.parametrize(
    "metrics,want,why",
    [
        ({"cpu": 10, "qps": 30, "latency": 60}, 5, "qps 30/s = 33% of 9×10/s < 40%"),  # ceil(30 / 7)
        ({"cpu": 10, "qps": 5, "latency": 160}, 8, "latency 160ms within [50ms, 200ms] → no lower than 8"),
    ],
    ids=["latency-in-band-lets-go", "latency-floor-stops-at-its-bound"],
)
def test_a_rule_inside_its_band_does_not_veto_scale_down(metrics, want, why):
    spec = spec_of(metrics={"rules": {"latency": {"scaleUpAbove": 200, "scaleDownBelow": 50}}})
    spec.behavior.scale_down.stabilization_window_seconds = 0
    d = decide(spec, snap(**metrics), None, ScalerState(), T0, obs(fp32=9))
    assert d.desired == {"fp32": want}, d.reasons
    assert why in d.summary()


def test_forecast_prewarms_from_zero_even_without_metrics():
    """At zero no pod reports metrics; a usable forecast of demand still wakes the model ahead of time."""
    spec = zero_spec(forecasting={"enabled": True})
    state = ScalerState(scaled_to_zero=True, last_active_time=T0 - timedelta(hours=1))
    d = decide(spec, MetricSnapshot(), forecast([10, 30, 30, 30, 30]), state, T0, obs(fp32=0, int8=0))
    assert d.desired["int8"] >= 1 and "pre-warm int8" in d.summary()
    quiet = decide(spec, MetricSnapshot(), forecast([0.01] * 5), state, T0, obs(fp32=0, int8=0))
    assert quiet.desired == {"fp32": 0, "int8": 0} and not quiet.metrics_available
