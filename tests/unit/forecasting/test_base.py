"""StepSeries (overlapping windows → an even, epoch-aligned grid), the sMAPE tracker, seasonality planning."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from elastiserve.api.window import MetricWindow
from elastiserve.forecasting import ErrorTracker, StepSeries, plan_seasonality

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
E0 = int(T0.timestamp())


def win(offset_s: float, step: int, values) -> MetricWindow:
    return MetricWindow(T0 + timedelta(seconds=offset_s), step, np.asarray(values, dtype=float))


@pytest.mark.parametrize(
    "windows,step,want_labels,want_values",
    [
        ([(60, 60, [1, 2, 3])], 60, [60, 120, 180], [1, 2, 3]),
        # a finer window is averaged per bucket (L - step, L]; the last bucket is complete at its label
        ([(15, 15, [1, 3, 5, 7, 2, 2, 2, 2])], 60, [60, 120], [4, 2]),
        # overlap: the second window repeats two points; they are consumed once
        ([(60, 60, [1, 2, 3]), (120, 60, [2, 3, 4])], 60, [60, 120, 180, 240], [1, 2, 3, 4]),
        # shifted grid (a Prometheus range query issued 15 s later): samples share buckets
        ([(45, 60, [1, 2]), (120, 60, [9, 4])], 60, [60, 120, 180], [1, 5.5, 4]),
        # a gap between windows becomes NaN
        ([(60, 60, [1]), (240, 60, [4])], 60, [60, 120, 180, 240], [1, np.nan, np.nan, 4]),
    ],
    ids=["aligned", "finer-step-averaged", "overlap-consumed-once", "shifted-grid", "gap-is-nan"],
)
def test_step_series_feeds(windows, step, want_labels, want_values):
    s = StepSeries(step, capacity=100)
    for off, wstep, vals in windows:
        s.feed(win(off, wstep, vals))
    np.testing.assert_array_equal(s.labels() - E0, want_labels)
    np.testing.assert_allclose(s.values, want_values, equal_nan=True)


def test_incomplete_bucket_waits_for_its_end():
    s = StepSeries(60, 10)
    first, new = s.feed(win(15, 15, [1, 1, 1]))  # 15, 30, 45: bucket (0, 60] not complete yet
    assert len(new) == 0 and len(s) == 0
    first, new = s.feed(win(60, 15, [5]))
    assert first - E0 == 60 and new.tolist() == [2.0]


def test_gap_longer_than_history_restarts_the_series():
    s = StepSeries(60, capacity=5)
    s.feed(win(60, 60, [1, 2, 3]))
    s.feed(win(60 * 100, 60, [7, 8]))
    assert len(s) == 5 and s.values[-2:].tolist() == [7, 8]
    assert s.resets == 1


def test_capacity_keeps_the_newest():
    s = StepSeries(60, capacity=3)
    s.feed(win(60, 60, range(10)))
    assert s.values.tolist() == [7, 8, 9] and s.end_label - E0 == 600


@pytest.mark.parametrize(
    "actual,forecast,floor,want",
    [(100, 100, 1e-9, 0.0), (100, 50, 1e-9, 50 / 75), (0, 0, 1e-9, 0.0), (0.0, 0.1, 5.0, 0.1 / 5.0), (0, 10, 1e-9, 2.0)],
    ids=["exact", "half", "both-zero", "idle-floor", "worst"],
)
def test_smape_terms(actual, forecast, floor, want):
    t = ErrorTracker(window=10)
    t.floor = floor
    t.predict(E0 + 60, forecast)
    t.realise(np.array([E0 + 60]), np.array([float(actual)]))
    assert t.smape == pytest.approx(want)


def test_tracker_is_rolling_and_drops_unrealised():
    t = ErrorTracker(window=2)
    for k, (a, f) in enumerate([(100, 0), (100, 100), (100, 100)]):
        t.predict(E0 + 60 * k, f)
        t.realise(np.array([E0 + 60 * k]), np.array([float(a)]))
    assert t.smape == 0.0  # the 2.0 term rolled out
    t.predict(E0 + 60, 5.0)
    t.realise(np.array([E0 + 600]), np.array([1.0]))  # a later label: the stale prediction is dropped
    assert not t.predictions


@pytest.mark.parametrize(
    "periods,step,history,want,dropped",
    [
        ([86400], 60, 3 * 86400, (86400,), 0),
        ([86400, 604800], 60, 3 * 86400, (86400,), 1),
        ([86400, 604800], 300, 15 * 86400, (86400, 604800), 0),
        ([120], 60, 3600, (), 1),
    ],
    ids=["daily", "weekly-needs-14d", "daily-and-weekly", "period-too-short"],
)
def test_plan_seasonality(periods, step, history, want, dropped):
    season, notes = plan_seasonality(periods, 3, step, history)
    assert season.periods == want
    assert len(notes) == dropped
    assert season.design(np.arange(5) * step).shape == (5, season.columns)
