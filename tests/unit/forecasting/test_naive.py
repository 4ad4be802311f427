"""The naive baseline: seasonal naive when a season of history exists, last value otherwise."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from elastiserve.api.spec import ForecastingSpec
from elastiserve.api.window import MetricWindow
from elastiserve.forecasting import NaiveForecaster

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def spec(**kw) -> ForecastingSpec:
    base = dict(enabled=True, method="naive", step_seconds=60, history_seconds=3 * 3600, horizon_seconds=180,
                seasonal_periods_seconds=[3600])
    base.update(kw)
    return ForecastingSpec(**base)


def run(values, **kw):
    f = NaiveForecaster(spec(**kw))
    w = MetricWindow(T0 + timedelta(seconds=60), 60, np.asarray(values, dtype=float))
    return f.update(w, w.end)


@pytest.mark.parametrize(
    "n,want_reason",
    [(70, "seasonal naive, period 60 steps"), (30, "last value")],
    ids=["a-season-of-history", "shorter"],
)
def test_method_follows_history(n, want_reason):
    y = 100 + 10 * np.sin(2 * np.pi * np.arange(n) / 60)
    out = run(y)
    assert out.ready and out.reason.startswith(want_reason)
    if n >= 70:
        # one season before each target step
        assert [p.mean for p in out.points] == pytest.approx(y[n - 60 : n - 57].tolist())
    else:
        assert all(p.mean == pytest.approx(y[-1]) for p in out.points)


def test_bands_are_empirical_and_ordered():
    rng = np.random.default_rng(0)
    out = run(100 + rng.normal(0, 5, 200))
    assert all(p.lower <= p.mean <= p.upper for p in out.points)
    assert out.points[0].upper - out.points[0].mean > 3


def test_not_ready_on_short_history():
    out = run(np.ones(5))
    assert not out.ready and "history 5 of" in out.reason
