"""Naive forecasters: the baseline every model must beat, and the fallback when ARIMA cannot fit.

* **seasonal naive**: the value one season ago (the longest seasonal period of the spec that the history
  covers), when at least one period plus the horizon is in the history;
* **last value** otherwise.

Prediction intervals are empirical: the quantiles of the same method's errors over the history (for
last value, of the ``h``-step differences for each lead ``h``), added to the point forecast.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np

from ..api.decision import Forecast
from ..api.spec import ForecastingSpec
from ..api.window import MetricWindow
from .base import ErrorTracker, StepSeries, epoch, feed_window, from_epoch, make_points, not_ready


class NaiveForecaster:
    """Seasonal-naive (or last-value) forecasts with empirical intervals."""

    method = "naive"

    def __init__(self, spec: ForecastingSpec, min_points: int = 10, seasonal: bool = True):
        self.spec = spec
        self.min_points = min_points
        self.seasonal = seasonal
        self.series: StepSeries | None = None
        self.step = 0
        self.steps_ahead = 0
        self.tracker = ErrorTracker()
        self._cached: tuple[tuple[int, int], Forecast] | None = None

    def _setup(self, window_step: int) -> None:
        self.step = self.spec.step_seconds if window_step <= self.spec.step_seconds else window_step
        self.series = StepSeries(self.step, max(1, self.spec.history_seconds // self.step))
        self.steps_ahead = max(1, math.ceil(self.spec.horizon_seconds / self.step))
        self.tracker = ErrorTracker(min(240, max(10, 3600 // self.step)))

    def period_steps(self) -> int | None:
        """Steps in the season used, or None for last-value forecasts."""
        if not self.seasonal or self.series is None:
            return None
        usable = [
            p // self.step
            for p in self.spec.seasonal_periods_seconds
            if p % self.step == 0 and p // self.step + self.steps_ahead + 1 <= self.series.observed
            and p // self.step > self.steps_ahead
        ]
        return max(usable, default=None)

    def update(self, window: MetricWindow, now: datetime) -> Forecast:
        try:
            return self._update(window, now)
        except Exception as exc:  # noqa: BLE001 - never stop the scaling loop
            return not_ready(now, self.method, f"forecaster error: {type(exc).__name__}: {exc}", self.spec.quantile)

    def _update(self, window: MetricWindow, now: datetime) -> Forecast:
        early, _, new = feed_window(self, window, now)
        if early is not None:
            return early
        series = self.series
        assert series is not None and series.end_label is not None
        if len(new):
            self._cached = None
        origin = from_epoch(series.end_label)
        need = max(self.min_points, 2 * self.steps_ahead + 2)
        if series.observed < need:
            return not_ready(origin, self.method, f"history {series.observed} of {need} steps of {self.step} s",
                             self.spec.quantile)
        steps = max(self.steps_ahead,
                    math.ceil((epoch(now) - series.end_label + self.spec.horizon_seconds) / self.step - 1e-9))
        key = (series.end_label, steps)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        mean, lower, upper, how = self.predict(series.values, steps)
        if not np.all(np.isfinite(mean)):
            return not_ready(origin, self.method, "not enough recent data for a naive forecast", self.spec.quantile,
                             self.tracker.smape)
        self.tracker.predict(series.end_label + self.steps_ahead * self.step, float(mean[self.steps_ahead - 1]))
        fc = Forecast(origin=origin, points=make_points(self.step, mean, lower, upper), quantile=self.spec.quantile,
                      method=self.method, error=self.tracker.smape, ready=True, reason=how)
        self._cached = (key, fc)
        return fc

    def predict(self, y: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """Point forecasts and empirical bands for ``steps`` steps after the end of ``y``."""
        q = self.spec.quantile
        period = self.period_steps() if steps < len(y) else None
        if period is not None and steps <= period:
            idx = len(y) - period + np.arange(steps)
            mean = y[idx]
            if np.isnan(mean).any():  # a missing value a season ago: use the last value there
                mean = np.where(np.isnan(mean), _last(y), mean)
            resid = y[period:] - y[:-period]
            lo, up = _quantiles(resid, q)
            return mean, mean + lo, mean + up, f"seasonal naive, period {period} steps of {self.step} s"
        last = _last(y)
        mean = np.full(steps, last)
        lower = np.empty(steps)
        upper = np.empty(steps)
        for h in range(1, steps + 1):
            lo, up = _quantiles(y[h:] - y[:-h], q) if h < len(y) else (0.0, 0.0)
            lower[h - 1], upper[h - 1] = last + lo, last + up
        return mean, lower, upper, "last value"


def _last(y: np.ndarray) -> float:
    ok = np.flatnonzero(np.isfinite(y))
    return float(y[ok[-1]]) if len(ok) else math.nan


def _quantiles(resid: np.ndarray, q: float) -> tuple[float, float]:
    r = resid[np.isfinite(resid)]
    if len(r) == 0:
        return 0.0, 0.0
    return float(np.quantile(r, 1 - q)), float(np.quantile(r, q))
