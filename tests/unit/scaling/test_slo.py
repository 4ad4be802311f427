"""Table-driven tests of the SLO policy's pure steps (``scaling/slo.py``) and its use in ``decide()``."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from elastiserve.api import Forecast, ForecastPoint, MetricSnapshot, Observation, ScalerState, parse_spec
from elastiserve.api.decision import SloState, TimedValue
from elastiserve.scaling import decide
from elastiserve.scaling import slo

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def spec_of(**overrides):
    base = {
        "model": {"name": "m", "uri": "file:///m.onnx"},
        "variants": [
            {"name": "fp32", "capacityQps": 10, "replicas": {"min": 1, "max": 40}},
            {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 20, "replicas": {"min": 0, "max": 10}},
        ],
        "replicas": {"min": 1, "max": 40},
        "metrics": {"rules": {"cpu": {"enabled": False, "scaleUpAbove": 80, "scaleDownBelow": 30},
                              "latency": {"enabled": False, "scaleUpAbove": 200, "scaleDownBelow": 50}}},
        "slo": {"enabled": True},
    }
    base.update(overrides)
    return parse_spec(base)


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize(
    "cycles,want",
    [
        # (desired, ready) of fp32 per 15 s cycle, the scale-up decided at cycle 0
        ([(2, 2), (4, 2), (4, 2), (4, 4)], 45.0),
        ([(2, 2), (4, 2), (4, 4)], 30.0),
        ([(2, 2), (4, 2), (2, 2)], None),  # cancelled before any became ready: no measurement
        ([(2, 2), (2, 2)], None),
    ],
    ids=["ready-after-3-cycles", "ready-after-2-cycles", "cancelled", "no-scale-up"],
)
def test_startup_is_learned_from_ready_counts(cycles, want):
    sp = spec_of()
    st = SloState()
    for i, (d, r) in enumerate(cycles):
        now = T0 + timedelta(seconds=15 * i)
        observed = Observation(replicas={"fp32": d, "int8": 0}, ready={"fp32": r, "int8": 0})
        slo.learn_startup(st, sp, observed, now)
        if i + 1 < len(cycles):
            slo.note_scale_up(st, {"fp32": d, "int8": 0}, {"fp32": cycles[i + 1][0], "int8": 0}, observed, now)
    assert st.startup_seconds.get("fp32") == want


def test_startup_is_smoothed_and_sets_lead_times():
    sp = spec_of()
    st = SloState(startup_seconds={"fp32": 30.0})
    st.starting_since["fp32"] = TimedValue(time=T0, value=1)
    slo.learn_startup(st, sp, Observation(replicas={"fp32": 3}, ready={"fp32": 3}), T0 + timedelta(seconds=90))
    assert st.startup_seconds["fp32"] == pytest.approx(30 + slo.STARTUP_SMOOTHING * 60)
    leads = slo.lead_seconds(st, sp, metrics_age=15)
    # metric age + half the 60 s rate window + one 15 s sync + start-up (prior for int8: never seen)
    assert leads == {"fp32": pytest.approx(15 + 30 + 15 + st.startup_seconds["fp32"]),
                     "int8": pytest.approx(15 + 30 + 15 + slo.STARTUP_PRIOR)}


# --------------------------------------------------------------------------- demand history


@pytest.mark.parametrize(
    "demand,k,q,want",
    [
        ([100.0] * 100, 4, 0.99, 0.0),
        ([200.0, 100.0] * 50, 1, 0.75, 100.0),  # alternating, last step down: the next one rises by 100
        ([100.0, 200.0] * 50, 1, 0.75, -100.0),  # last step up: in this history a fall always followed
        ([100.0] * 10, 4, 0.99, None),  # too little history
        ([100.0] * 60 + [400.0] + [100.0] * 3, 3, 1.0, 300.0),  # a recent spike: the largest rise ahead
        ([300.0] * 60 + [100.0] * 60, 2, 1.0, 0.0),  # a step down never counts as a rise
    ],
    ids=["flat", "alternating-down", "alternating-up", "too-short", "spike", "step-down"],
)
def test_rise_quantile(demand, k, q, want):
    got = slo.rise_quantile(demand, k, q)
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(want, rel=1e-6)


def test_rise_quantile_is_conditioned_on_the_current_growth(monkeypatch):
    """Flat stretches with two ramps of +50 per cycle: while demand is flat, the quantile reads the rises
    that followed recent flat cycles; once a ramp is under way, the rises that followed ramp cycles."""
    ramp = [100.0 + 50 * i for i in range(1, 7)]
    history = [100.0] * 150 + ramp + [100.0] * 150 + ramp + [100.0] * 150
    calm = slo.rise_quantile(history, 4, 0.9)
    rising = slo.rise_quantile(history + [150.0], 4, 0.9)
    assert calm == pytest.approx(0.0)
    assert rising is not None and rising >= 100.0
    # Unconditioned (every cycle a neighbour), the ramps would set a calm cycle's headroom too.
    monkeypatch.setattr(slo, "NEIGHBOURS", 1.0)
    assert slo.rise_quantile(history, 4, 0.99) >= 100.0


def test_demand_ring_is_bounded_and_restarts_after_a_gap():
    st = SloState()
    for i in range(slo.RING + 10):
        slo.record_demand(st, float(i), T0 + timedelta(seconds=15 * i), 15)
    assert len(st.demand) == slo.RING and st.demand[-1] == slo.RING + 9
    slo.record_demand(st, 5.0, st.demand_time, 15)  # the same cycle again: counted once
    assert len(st.demand) == slo.RING and st.demand[-1] == slo.RING + 9
    slo.record_demand(st, 7.0, st.demand_time + timedelta(minutes=10), 15)
    assert st.demand == [7.0]


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize(
    "latency,qps,ready_qps,errors,want",
    [
        (250.0, 10.0, 100.0, None, True),
        (150.0, 10.0, 100.0, None, False),
        (None, 120.0, 100.0, None, True),  # latency unknown: overload stands in for it
        (None, 80.0, 100.0, None, False),
        (150.0, 10.0, 100.0, 9.0, True),  # above the 5 % error ceiling
    ],
    ids=["slow", "fast", "overload-proxy", "no-overload", "errors"],
)
def test_violation_indicator(latency, qps, ready_qps, errors, want):
    sp = spec_of(slo={"enabled": True, "maxErrorRatePercent": 5})
    m = MetricSnapshot(latency=latency, qps=qps, error_rate=errors, observed_at=T0)
    assert slo.violated(sp, m, ready_qps) is want


@pytest.mark.parametrize("factor", [0.0, 0.5, 2.0, 5.0], ids=["calm", "half", "double", "five-times"])
def test_calibration_tracks_the_allowed_violation_rate(factor):
    """ACI: misses at ``factor`` × the target rate move the quantile down (factor < 1) or up (> 1); a
    process whose misses depend on the quantile settles where the miss rate equals the target."""
    sp = spec_of()
    target = slo.TARGET_SHARE * (1 - sp.slo.attainment)
    st = SloState()
    q0 = slo.quantile(st, sp)
    every = round(1 / (factor * target)) if factor else 0
    for i in range(3000):
        slo.calibrate(st, sp, miss=bool(every) and i % every == 0)
    q = slo.quantile(st, sp)
    if factor < 1:
        assert q < q0
    else:
        assert q > q0 or st.headroom_log > 0


def test_calibration_settles_at_the_target_rate():
    """Misses happen when the demand quantile is exceeded: a deterministic low-discrepancy 'demand' in
    [0, 1); the quantile times the headroom is the capacity. The realised miss share converges to the target."""
    sp = spec_of()
    target = slo.TARGET_SHARE * (1 - sp.slo.attainment)
    st = SloState()
    misses, n = 0, 100_000
    golden = (math.sqrt(5) - 1) / 2
    for i in range(n):
        u = (i * golden) % 1.0
        miss = u > slo.quantile(st, sp) * math.exp(st.headroom_log)
        misses += miss
        slo.calibrate(st, sp, miss)
    assert misses / n == pytest.approx(target, rel=0.3)


def test_headroom_takes_over_at_the_top_quantile_and_is_bounded():
    sp = spec_of()
    st = SloState()
    for _ in range(10000):
        slo.calibrate(st, sp, miss=True)
    assert slo.quantile(st, sp) == slo.Q_MAX
    assert st.headroom_log == slo.HEADROOM_LOG_BOUNDS[1]
    slo.calibrate(st, sp, miss=False)  # calm: the headroom is spent before the quantile moves
    assert st.headroom_log < slo.HEADROOM_LOG_BOUNDS[1] and slo.quantile(st, sp) == slo.Q_MAX


# --------------------------------------------------------------------------- forecast weight


def fc(mean=100.0, upper=120.0, error=0.05, quantile=0.9, origin=T0, n=5):
    pts = [ForecastPoint(offset_seconds=60 * (i + 1), mean=mean, lower=mean / 2, upper=upper) for i in range(n)]
    return Forecast(origin=origin, points=pts, quantile=quantile, error=error)


def v_losses(best: int) -> list[float]:
    """Blend losses with their least at ``BLEND_WEIGHTS[best]``."""
    return [1.0 + abs(i - best) for i in range(len(slo.BLEND_WEIGHTS))]


@pytest.mark.parametrize(
    "losses,checked,error,want",
    [
        (v_losses(5), 100, 0.0, 0.5),  # the even blend did best
        (v_losses(10), 100, 0.0, 1.0),  # the forecast alone
        (v_losses(0), 100, 0.0, 0.0),  # the empirical quantile alone
        ([0.0] * 11, 100, 0.0, 0.0),  # nothing to tell them apart: the empirical quantile
        (v_losses(10), 5, 0.0, 0.0),  # not enough checks yet
        (v_losses(10), 100, 0.25, 0.5),  # half way to maxError 0.5
    ],
    ids=["blend", "forecast", "empirical", "undecided", "unchecked", "error-discount"],
)
def test_forecast_weight_is_the_blend_with_the_least_quantile_loss(losses, checked, error, want):
    st = SloState(blend_losses=losses, blend_checked=checked)
    assert slo.forecast_weight(st, fc(error=error), max_error=0.5) == pytest.approx(want)


def test_forecast_weight_ignores_coverage_alone():
    """A bound that covers every rate by being high earned full weight from its coverage; scored on the
    peak demand over the lead time, every blend with it loses to the empirical quantile."""
    st = SloState()
    for _ in range(40):
        slo.add_blend_check(st, cycles=1, q=0.9, empirical=105.0, forecast=200.0)
        slo.score_blend(st, 100.0)
    st.forecast_coverage, st.forecast_checked = 1.0, 100
    assert slo.forecast_weight(st, fc(error=0.0), max_error=0.5) == 0.0


def test_forecast_weight_rewards_a_sharper_forecast():
    """Demand alternates 100 / 140; the forecast knows which comes next, the empirical quantile has to
    cover both: the forecast alone has the least loss."""
    st = SloState()
    for i in range(40):
        nxt = 140.0 if i % 2 else 100.0
        slo.add_blend_check(st, cycles=1, q=0.9, empirical=140.0, forecast=nxt)
        slo.score_blend(st, nxt)
    assert slo.forecast_weight(st, fc(error=0.0), max_error=0.5) == 1.0


@pytest.mark.parametrize(
    "q,predicted,actual,want",
    [(0.9, 100.0, 110.0, 9.0), (0.9, 110.0, 100.0, 1.0), (0.5, 90.0, 100.0, 5.0), (0.9, 100.0, 100.0, 0.0)],
    ids=["under", "over", "median", "exact"],
)
def test_pinball_loss(q, predicted, actual, want):
    assert slo.pinball(q, predicted, actual) == pytest.approx(want)


def test_blend_checks_score_the_blends_against_the_peak_over_the_lead():
    st = SloState()
    slo.add_blend_check(st, cycles=3, q=0.9, empirical=110.0, forecast=150.0)
    for qps in (100.0, 120.0):
        slo.score_blend(st, qps)
    assert st.blend_checked == 0 and st.blend_checks[0].peak == 120.0 and st.blend_checks[0].left == 1
    slo.score_blend(st, 105.0)  # the third sample closes the lead time: peak 120
    assert st.blend_checks == [] and st.blend_checked == 1
    assert st.blend_losses[0] == pytest.approx(0.9 * 10)  # empirical: 10 under the peak
    assert st.blend_losses[-1] == pytest.approx(0.1 * 30)  # forecast: 30 over it
    # w = 0.25 would be exact (110 + 0.25 * 40 = 120); w = 0.2 is 2 under, w = 0.3 is 2 over
    assert st.blend_losses[2] == pytest.approx(0.9 * 2) and st.blend_losses[3] == pytest.approx(0.1 * 2)


def test_a_high_forecast_loses_its_weight_in_decide():
    """End to end through decide(): noisy flat demand, a forecast whose bound is twice the demand (it
    covers every rate, so the old coverage weight gave it 1). Scored on the peak over the lead time it
    loses to the empirical quantile, and the plan sizes as it does without a forecast."""
    sp = spec_of(forecasting={"enabled": True})

    def last(with_forecast: bool):
        state = ScalerState()
        desired = {"fp32": 12, "int8": 0}
        for i in range(300):
            now = T0 + timedelta(seconds=15 * i)
            qps = 100.0 + (3.0 if i % 3 == 0 else -1.5)
            f = fc(mean=200.0, upper=240.0, error=0.0, origin=now - timedelta(seconds=30)) if with_forecast else None
            m = MetricSnapshot(qps=qps, observed_at=now - timedelta(seconds=15))
            d = decide(sp, m, f, state, now, Observation(replicas=dict(desired), ready=dict(desired)))
            state, desired = d.state, dict(d.desired)
        return d

    high, none = last(True), last(False)
    assert high.state.slo.forecast_coverage == pytest.approx(1.0, abs=1e-3)
    assert high.slo.forecast_weight < 0.05, high.reasons
    assert none.desired["fp32"] <= high.desired["fp32"] <= none.desired["fp32"] + 1, (high.reasons, none.reasons)
    assert high.desired["fp32"] < 20  # the forecast alone asks for 24 or more


def test_forecast_checks_score_coverage():
    st = SloState()
    slo.check_forecast(st, fc(upper=120.0), MetricSnapshot(qps=100.0, observed_at=T0), lead=60)
    assert [c.upper for c in st.forecast_checks] == [120.0]
    slo.check_forecast(st, None, MetricSnapshot(qps=130.0, observed_at=T0 + timedelta(seconds=60)), lead=60)
    assert st.forecast_coverage == 0.0 and st.forecast_checked == 1 and st.forecast_checks == []


def test_forecast_quantile_widens_with_q():
    f = fc(mean=100.0, upper=120.0)
    assert slo.forecast_quantile(f, 0.9, 300) == pytest.approx(120.0, rel=1e-6)
    assert slo.forecast_quantile(f, 0.99, 300) > 120.0
    assert slo.forecast_quantile(f, 0.5, 300) == pytest.approx(100.0, rel=1e-6)


# --------------------------------------------------------------------------- decide() with the SLO policy


def run_cycles(sp, qps_series, ready_lag=2, latency=None, start=10):
    """Step decide() through a qps series; replicas become ready ``ready_lag`` cycles after they are asked for."""
    state = ScalerState()
    desired = {"fp32": start, "int8": 0}
    history = [dict(desired)]
    out = []
    for i, q in enumerate(qps_series):
        now = T0 + timedelta(seconds=15 * i)
        old = history[max(0, len(history) - 1 - ready_lag)]
        ready = {k: min(desired[k], old.get(k, 0)) if desired[k] > old.get(k, 0) else desired[k] for k in desired}
        m = MetricSnapshot(qps=q, latency=latency, observed_at=now - timedelta(seconds=15))
        d = decide(sp, m, None, state, now, Observation(replicas=dict(desired), ready=ready))
        state, desired = d.state, dict(d.desired)
        history.append(dict(desired))
        out.append(d)
    return out


def test_flat_load_is_sized_near_the_load():
    sp = spec_of()
    ds = run_cycles(sp, [100.0] * 200)
    last = ds[-1]
    # flat 100 qps at 10 qps per replica: growth ×1, so 10 replicas (× the calibrated headroom ≤ 1)
    assert last.desired["fp32"] == 10 and last.desired["int8"] == 0
    assert last.slo is not None and last.slo.quantile < 0.99 and last.slo.headroom == 1.0  # calm: q drifts down
    assert "fp32" in last.slo.lead_seconds


def test_jump_past_ready_capacity_panics_and_bridges_with_burst():
    sp = spec_of()
    # load triples; the 60 s rate window shows it as a ramp over four 15 s cycles
    ds = run_cycles(sp, [100.0] * 100 + [150.0, 200.0, 250.0] + [300.0] * 8 + [100.0] * 80)
    jump = ds[100]
    assert jump.slo.panic
    # the newest 15 s of the window ran at ~300 qps: sized from that, not from the 150 qps mean
    assert jump.slo.demand_qps >= 300
    assert jump.desired["int8"] > 0, jump.reasons  # the fast variant starts in the same cycle
    assert any("bridges" in r for r in jump.reasons)
    # burst replicas are released once the primary is ready, not before their own lead time
    released = next(i for i in range(101, len(ds)) if ds[i].desired["int8"] == 0)
    assert (released - 100) * 15 >= 0 and ds[released].desired["fp32"] >= 10


def test_spiky_history_keeps_more_headroom_than_calm_history():
    sp = spec_of()
    calm = run_cycles(sp, [100.0] * 200)[-1]
    spiky = run_cycles(sp, ([100.0] * 15 + [250.0] * 2) * 12 + [100.0] * 4)[-1]
    assert spiky.slo.demand_qps > 1.5 * calm.slo.demand_qps
    assert spiky.desired["fp32"] > calm.desired["fp32"]


def test_state_round_trips_through_status():
    sp = spec_of()
    ds = run_cycles(sp, [100.0] * 60)
    raw = ds[-1].state.to_api()
    again = ScalerState.model_validate(raw)
    assert again == ds[-1].state


def test_disabled_slo_keeps_the_old_decisions():
    base = spec_of(slo={"enabled": False})
    d = decide(base, MetricSnapshot(qps=100.0, observed_at=T0), None, ScalerState(), T0,
               Observation(replicas={"fp32": 2, "int8": 0}, ready={"fp32": 2, "int8": 0}))
    assert d.slo is None and d.state.slo is None


@pytest.mark.parametrize(
    "prev,now_qps,gap,want",
    [
        (100.0, 100.0, 15, 100.0),
        (100.0, 150.0, 15, 300.0),  # the 60 s mean rose by 50 in 15 s: the newest 15 s ran at ~300
        (150.0, 100.0, 15, 0.0),  # falling: clipped at 0 (only ever used upwards)
        (100.0, 150.0, 120, 0.0),  # not consecutive
    ],
    ids=["flat", "jump", "fall", "gap"],
)
def test_fresh_rate_from_consecutive_windows(prev, now_qps, gap, want):
    sp = spec_of()
    st = SloState(demand=[prev], demand_time=T0)
    assert slo.fresh_rate(st, now_qps, T0 + timedelta(seconds=gap), sp) == pytest.approx(want)


def test_anticipated_rise_starts_no_burst_replicas_only_panic_does():
    """Burst replicas bridge demand already past the ready capacity (panic), not a rise merely
    anticipated: the primary replicas were started a lead time ahead for that one."""
    sp = spec_of()
    # a steady ramp (+1 qps per cycle) after a calm hour: the rise quantile asks for replicas ahead of it
    ramp = [100.0] * 240 + [100.0 + i for i in range(1, 120)]
    ds = run_cycles(sp, ramp)
    calm = [i for i in range(241, len(ds)) if not ds[i].slo.panic]
    assert len(calm) > 100
    scaled_up = [i for i in calm if ds[i].desired["fp32"] > ds[i - 1].desired["fp32"]]
    assert scaled_up, "the ramp must make the policy add primary replicas outside panic"
    started = [i for i in calm if ds[i].desired["int8"] > ds[i - 1].desired["int8"]]
    assert not started, ds[started[0]].reasons
