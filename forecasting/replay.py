"""Replaying precomputed forecasts (``ArimaForecaster.forecast_path``) behind the ``Forecaster`` contract.

A backtest over weeks would otherwise pay one ``extend()`` and one ``get_forecast()`` per step; the path
computes all of them in bulk and this class hands out, at each ``update``, the forecast from the newest
step the window has completed: the same answer the online forecaster gives when it is fed the same data.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np

from ..api.decision import Forecast
from ..api.window import MetricWindow
from .arima import ForecastPath
from .base import epoch, from_epoch, make_points, not_ready


class ReplayForecaster:
    """Serves ``path`` row by row; the window only tells which steps are complete."""

    def __init__(self, path: ForecastPath, horizon_seconds: int, max_error: float | None = None):
        self.path = path
        self.method = path.method
        self.horizon_seconds = horizon_seconds
        self.steps_ahead = max(1, math.ceil(horizon_seconds / path.step))
        self._cache: tuple[tuple[int, int], Forecast] | None = None

    def update(self, window: MetricWindow, now: datetime) -> Forecast:
        p = self.path
        if len(window) == 0 or len(p.labels) == 0:
            return not_ready(now, self.method, "no data yet", p.quantile)
        last = epoch(window.end)
        # The newest bucket that the window has completed: label <= last point seen.
        i = int(np.searchsorted(p.labels, last + 1e-6, side="right")) - 1
        if i < 0:
            return not_ready(now, self.method, "no complete step of data yet", p.quantile)
        origin = from_epoch(int(p.labels[i]))
        err = float(p.error[i]) if math.isfinite(p.error[i]) else None
        if not p.ready[i]:
            return not_ready(origin, self.method, p.reasons[p.reason_index[i]], p.quantile, err)
        steps = max(self.steps_ahead,
                    math.ceil((epoch(now) - p.labels[i] + self.horizon_seconds) / p.step - 1e-9))
        steps = min(steps, p.mean.shape[1])
        key = (i, steps)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        fc = Forecast(
            origin=origin,
            points=make_points(p.step, p.mean[i, :steps], p.lower[i, :steps], p.upper[i, :steps]),
            quantile=p.quantile, method=self.method, error=err, ready=True, reason=p.reasons[p.reason_index[i]],
        )
        self._cache = (key, fc)
        return fc
