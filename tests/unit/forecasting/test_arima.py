"""ArimaForecaster: accuracy against the seasonal-naive baseline, the fast-update path, not-ready paths."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from elastiserve.api.spec import ForecastingSpec
from elastiserve.api.window import MetricWindow
from elastiserve.forecasting import (
    ArimaForecaster,
    ArimaSettings,
    FallbackForecaster,
    NaiveForecaster,
    ReplayForecaster,
    make_forecaster,
)

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
STEP = 300  # 5-minute steps keep the seasonal fits small: 288 per day


def seasonal_series(days: float, seed: int = 0, step: int = STEP) -> np.ndarray:
    """Known structure: a daily log-curve (two harmonics) times AR(1) noise (phi 0.9), level 100 req/s."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / step)
    t = (np.arange(n) + 1) * step
    ar = np.zeros(n)
    for i in range(1, n):
        ar[i] = 0.9 * ar[i - 1] + rng.normal(0, 0.05)
    return 100 * np.exp(0.6 * np.sin(2 * np.pi * t / 86400) + 0.2 * np.cos(4 * np.pi * t / 86400) + ar)


def spec(**kw) -> ForecastingSpec:
    base = dict(enabled=True, step_seconds=STEP, history_seconds=3 * 86400, horizon_seconds=900, refit_seconds=6 * 3600)
    base.update(kw)
    return ForecastingSpec(**base)


def window(values, first_step: int = 0, step: int = STEP) -> MetricWindow:
    """Values for steps first_step.. (labels at the end of each step)."""
    return MetricWindow(T0 + timedelta(seconds=(first_step + 1) * step), step, np.asarray(values, dtype=float))


def at(k: int, step: int = STEP) -> datetime:
    """Time of the label of step k (the moment its value is complete)."""
    return T0 + timedelta(seconds=(k + 1) * step)


def test_beats_seasonal_naive_on_a_seasonal_series():
    y = seasonal_series(4)
    fc = ArimaForecaster(spec(), ArimaSettings(drift=False))
    path = fc.forecast_path(window(y), first=2 * 288 - 1)
    h = fc.steps_ahead
    origins = np.arange(3 * 288, len(y) - h)  # score the last day
    arima = path.mean[origins, h - 1]
    naive = y[origins + h - 288]  # value one season before the target
    actual = y[origins + h]
    mae_arima = np.mean(np.abs(arima - actual))
    mae_naive = np.mean(np.abs(naive - actual))
    assert path.ready[origins].all()
    assert mae_arima < 0.8 * mae_naive, (mae_arima, mae_naive)
    # the p90 band covers roughly 90 % of outcomes
    cover = np.mean(actual <= path.upper[origins, h - 1])
    assert 0.8 <= cover <= 0.98


def test_online_update_equals_bulk_path():
    """update() step by step gives the forecasts forecast_path() computes in bulk (extend() per segment)."""
    y = seasonal_series(3, seed=1)
    start = 2 * 288
    online = ArimaForecaster(spec(), ArimaSettings(drift=False))
    online.update(window(y[:start]), at(start - 1))
    got = []
    for k in range(start, start + 100):  # crosses a refit (every 72 steps)
        f = online.update(window(y[k - 3 : k + 1], k - 3), at(k))
        got.append([p.upper for p in f.points[:3]])
    assert online.fits == 2
    bulk = ArimaForecaster(spec(), ArimaSettings(drift=False)).forecast_path(window(y[: start + 100]), first=start - 1)
    np.testing.assert_allclose(np.array(got), bulk.upper[start : start + 100, :3], rtol=1e-8)
    replay = ReplayForecaster(bulk, 900)
    f = replay.update(window(y[: start + 100]), at(start + 99))
    assert [p.upper for p in f.points[:3]] == pytest.approx(got[-1], rel=1e-9)


def test_fast_update_equals_refit_within_tolerance():
    """extend() with the old parameters forecasts like a fresh fit on the same data (orders fixed)."""
    y = seasonal_series(3, seed=2)
    start = 2 * 288
    s = spec(order=[1, 0, 1], refit_seconds=7 * 86400)
    fast = ArimaForecaster(s, ArimaSettings(drift=False))
    fast.update(window(y[:start]), at(start - 1))
    for k in range(start, start + 144):
        f_fast = fast.update(window(y[k : k + 1], k), at(k))
    assert fast.fits == 1 and fast.fit.updates == 144
    refit = ArimaForecaster(s, ArimaSettings(drift=False))
    f_refit = refit.update(window(y[: start + 144]), at(start + 143))
    a = np.array([p.mean for p in f_fast.points])
    b = np.array([p.mean for p in f_refit.points])
    np.testing.assert_allclose(a, b, rtol=0.03)


def test_extend_matches_append_without_refit():
    y = seasonal_series(3, seed=3)
    start = 2 * 288
    f = ArimaForecaster(spec(order=[1, 0, 0]), ArimaSettings(drift=False))
    f.update(window(y[:start]), at(start - 1))
    base = f.fit.results
    fitted_end = start
    f.update(window(y[start : start + 10], start), at(start + 9))
    labels = f.fit.end_label - STEP * np.arange(9, -1, -1)
    appended = base.append(np.log1p(y[fitted_end : fitted_end + 10]), exog=f.season.design(labels))
    steps = 3
    ex = f.season.design(f.fit.end_label + STEP * np.arange(1, steps + 1))
    np.testing.assert_allclose(f.fit.results.forecast(steps, exog=ex), appended.forecast(steps, exog=ex), rtol=1e-10)


def test_overlapping_windows_are_consumed_once():
    y = seasonal_series(3, seed=4)
    start = 2 * 288
    f = ArimaForecaster(spec(), ArimaSettings(drift=False))
    f.update(window(y[:start]), at(start - 1))
    f.update(window(y[start - 20 : start + 1], start - 20), at(start))
    f.update(window(y[start - 20 : start + 1], start - 20), at(start))  # same window again
    assert f.fit.updates == 1 and len(f.series) == start + 1


def test_refits_follow_data_time_not_calls():
    y = seasonal_series(3, seed=5)
    start = 2 * 288
    f = ArimaForecaster(spec(refit_seconds=3600), ArimaSettings(drift=False))
    f.update(window(y[:start]), at(start - 1))
    for _ in range(5):  # many cycles, no new data: no refit
        f.update(window(y[start - 5 : start], start - 5), at(start - 1))
    assert f.fits == 1
    for k in range(start, start + 24):  # 2 hours of data at 5 min: refits at +1 h and +2 h
        f.update(window(y[k : k + 1], k), at(k))
    assert f.fits == 3


def test_log_forecasts_are_never_negative():
    y = np.clip(seasonal_series(3, seed=6) - 80, 0, None)  # long stretches at zero
    f = ArimaForecaster(spec(), ArimaSettings(drift=False))
    out = f.update(window(y), at(len(y) - 1))
    assert out.ready
    assert all(p.lower >= 0 and p.mean >= p.lower and p.upper >= p.mean for p in out.points)


def test_error_is_tracked_against_realised_values():
    y = seasonal_series(3, seed=7)
    start = 2 * 288
    f = ArimaForecaster(spec(), ArimaSettings(drift=False))
    out = f.update(window(y[:start]), at(start - 1))
    assert out.error is None  # nothing realised yet
    for k in range(start, start + 40):
        out = f.update(window(y[k : k + 1], k), at(k))
    assert out.error is not None and 0 < out.error < 0.2


def _fail(*_a, **_k):
    raise np.linalg.LinAlgError("singular matrix")


@pytest.mark.parametrize(
    "values,now_step,settings,patch,reason",
    [
        ([], 0, {}, False, "no data yet"),
        (seasonal_series(1), 287, {}, False, "history 288 of 576 steps"),
        (seasonal_series(0.05), 13, {"seasonal_periods_seconds": []}, False, "history 14 of 30 steps"),
        (seasonal_series(3), 2000, {}, False, "no new data"),
        (seasonal_series(3), 863, {}, True, "fit failed: "),
    ],
    ids=["empty-window", "under-two-seasons", "under-minimum-count", "stale-data", "fit-fails"],
)
def test_not_ready(values, now_step, settings, patch, reason, monkeypatch):
    f = ArimaForecaster(spec(**settings))
    if patch:
        monkeypatch.setattr(f, "_fit_one", _fail)
    w = window(values) if len(values) else MetricWindow(T0, STEP, np.empty(0))
    out = f.update(w, at(now_step))
    assert not out.ready and reason in out.reason
    assert out.points == []


def test_not_ready_until_first_forecast_then_ready():
    y = seasonal_series(3)
    f = ArimaForecaster(spec())
    assert not f.update(window(y[:575]), at(574)).ready
    out = f.update(window(y[575:576], 575), at(575))
    assert out.ready and out.reason.startswith("arima(")
    assert len(out.points) == 3 and out.points[0].offset_seconds == STEP


def test_constant_and_zero_series_do_not_raise():
    for y in (np.zeros(700), np.full(700, 5.0)):
        out = ArimaForecaster(spec()).update(window(y), at(699))
        assert out.ready or out.reason  # either way: an answer, not an exception


def test_fallback_hands_over_to_naive_when_the_fit_fails(monkeypatch):
    y = seasonal_series(3)
    fb = make_forecaster(spec())
    assert isinstance(fb, FallbackForecaster)
    monkeypatch.setattr(fb.primary, "_fit_one", _fail)
    out = fb.update(window(y), at(len(y) - 1))
    assert out.ready and out.method == "naive"
    assert "fit failed" in out.reason and "naive fallback" in out.reason


def test_fallback_stays_not_ready_while_history_is_short():
    out = make_forecaster(spec()).update(window(seasonal_series(1)), at(287))
    assert not out.ready and "history" in out.reason


def test_make_forecaster_naive_method():
    assert isinstance(make_forecaster(spec(method="naive")), NaiveForecaster)


def test_coarser_window_sets_the_step():
    y = seasonal_series(3, step=900)
    f = ArimaForecaster(spec())
    out = f.update(window(y, step=900), at(len(y) - 1, step=900))
    assert f.step == 900 and out.ready and out.points[0].offset_seconds == 900


def test_idle_stretches_do_not_count_as_200_percent_errors():
    """sMAPE against a near-zero forecast at night is measured against the typical level, not zero."""
    from elastiserve.forecasting.base import ErrorTracker

    tracker = ErrorTracker(window=10)
    tracker.floor = 0.05 * 20.0  # typical level 20 qps
    labels = np.arange(5, dtype=np.int64)
    for label in labels:
        tracker.predict(int(label), 0.1)  # the model expects a trickle at night
    tracker.realise(labels, np.zeros(5))  # nothing came
    assert tracker.smape is not None and tracker.smape < 0.15


@pytest.mark.parametrize("order", [None, [1, 1, 1]])
def test_forecast_equals_statsmodels_get_forecast(order):
    """The online forecast (the filter's newest state propagated through the state-space matrices) gives
    statsmodels' own ``get_forecast()`` numbers, after a fit and after ``extend()`` updates, with or
    without differencing in the state."""
    y = seasonal_series(3, seed=4)
    start = 2 * 288
    f = ArimaForecaster(spec(**({"order": order} if order else {})), ArimaSettings(drift=False))
    fc = f.update(window(y[:start]), at(start - 1))
    for k in range(start, start + 8):
        if k in (start, start + 1, start + 7):  # the fit, one update, several in a row
            fit = f.fit
            labels = fit.end_label + STEP * np.arange(1, len(fc.points) + 1, dtype=np.int64)
            pred = fit.results.get_forecast(len(fc.points), exog=f._design(labels))
            mean, lower, upper = f._bands(np.asarray(pred.predicted_mean), np.asarray(pred.var_pred_mean), fit.log)
            np.testing.assert_allclose([p.mean for p in fc.points], mean, rtol=1e-9)
            np.testing.assert_allclose([p.upper for p in fc.points], upper, rtol=1e-9)
            np.testing.assert_allclose([p.lower for p in fc.points], np.minimum(np.clip(lower, 0, None), mean),
                                       rtol=1e-9)
        fc = f.update(window(y[k : k + 1], k), at(k))
