"""The forecaster contract and the pieces every forecaster shares.

* ``Forecaster``: ``update(window, now) -> Forecast``. The caller passes the latest history window every
  cycle (windows may overlap); the forecaster consumes only what is new. It never raises for data
  problems: it returns a ``Forecast`` with ``ready=False`` and a reason.
* ``StepSeries``: request-rate history on an epoch-aligned grid of ``step`` seconds, fed by overlapping
  windows of any finer step (Prometheus range queries whose grid shifts from cycle to cycle).
* ``ErrorTracker``: rolling sMAPE of the forecaster's own one-horizon-ahead forecasts.

Nothing here reads a clock: ``now`` is an argument and "data time" is the time of the observations.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

import numpy as np

from ..api.decision import Forecast, ForecastPoint
from ..api.window import MetricWindow


@runtime_checkable
class Forecaster(Protocol):
    """Request-rate forecaster fed with overlapping history windows."""

    method: str

    def update(self, window: MetricWindow, now: datetime) -> Forecast:
        """Consume the new points of ``window`` and forecast ``horizonSeconds`` past the last observation."""
        ...


def epoch(t: datetime) -> float:
    """Seconds since the Unix epoch; naive datetimes are taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def not_ready(origin: datetime, method: str, reason: str, quantile: float, error: float | None = None) -> Forecast:
    """A forecast the decision engine must not use, with the reason in words."""
    return Forecast(origin=origin, points=[], quantile=quantile, method=method, error=error, ready=False, reason=reason)


def make_points(step: int, mean: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> list[ForecastPoint]:
    """Forecast points at ``step, 2*step, ...`` seconds after the origin; rates are clipped at 0."""
    mean = np.clip(np.nan_to_num(mean, nan=0.0, posinf=0.0), 0.0, None)
    lower = np.minimum(np.clip(np.nan_to_num(lower, nan=0.0, posinf=0.0), 0.0, None), mean)
    upper = np.maximum(np.nan_to_num(upper, nan=0.0, posinf=0.0), mean)
    return [
        ForecastPoint(offset_seconds=(i + 1) * step, mean=float(m), lower=float(lo), upper=float(up))
        for i, (m, lo, up) in enumerate(zip(mean, lower, upper))
    ]


class StepSeries:
    """Evenly spaced history at labels ``k * step`` (epoch seconds), built from overlapping windows.

    A window point at time ``t`` falls in the bucket labelled ``L = step * ceil(t / step)`` (the interval
    ``(L - step, L]``); a bucket's value is the mean of its points and is emitted once a point at or after
    ``L`` has been seen. Points at or before the last point already seen are skipped, so overlapping
    windows are consumed once. Buckets missing between two windows become NaN (the Kalman filter treats
    them as missing observations); a gap longer than the whole history starts the series again.
    """

    def __init__(self, step: int, capacity: int):
        if step <= 0 or capacity <= 0:
            raise ValueError(f"step and capacity must be positive (got step={step}, capacity={capacity})")
        self.step = int(step)
        self.capacity = int(capacity)
        self.values = np.empty(0)
        self.end_label: int | None = None
        """Label (epoch seconds) of the newest emitted bucket."""
        self.last_seen: float | None = None
        self._pending_t = np.empty(0)
        self._pending_v = np.empty(0)
        self.resets = 0

    def __len__(self) -> int:
        return len(self.values)

    @property
    def start_label(self) -> int | None:
        if self.end_label is None:
            return None
        return self.end_label - (len(self.values) - 1) * self.step

    @property
    def observed(self) -> int:
        """Buckets that hold a value (not NaN)."""
        return int(np.count_nonzero(~np.isnan(self.values)))

    def labels(self) -> np.ndarray:
        if self.end_label is None:
            return np.empty(0, dtype=np.int64)
        return self.end_label - self.step * np.arange(len(self.values) - 1, -1, -1, dtype=np.int64)

    def feed(self, window: MetricWindow) -> tuple[int, np.ndarray]:
        """Consume the new points of ``window``; returns (first new label, new bucket values incl. NaN gaps)."""
        if len(window) == 0:
            return 0, np.empty(0)
        t0 = epoch(window.start)
        ts = t0 + window.step_seconds * np.arange(len(window), dtype=float)
        vs = np.asarray(window.values, dtype=float)
        if self.last_seen is not None:
            keep = ts > self.last_seen + 1e-6
            ts, vs = ts[keep], vs[keep]
        if len(ts) == 0:
            return 0, np.empty(0)
        self.last_seen = float(ts[-1])
        t = np.concatenate([self._pending_t, ts])
        v = np.concatenate([self._pending_v, vs])
        labels = (np.ceil(t / self.step - 1e-9) * self.step).astype(np.int64)
        complete = labels <= t[-1] + 1e-6
        if self.end_label is not None:
            late = labels <= self.end_label  # a bucket already emitted: too late, drop
            complete &= ~late
            stay = ~complete & ~late
        else:
            stay = ~complete
        self._pending_t, self._pending_v = t[stay], v[stay]
        if not complete.any():
            return 0, np.empty(0)
        done, inverse = np.unique(labels[complete], return_inverse=True)
        sums = np.bincount(inverse, weights=v[complete])
        counts = np.bincount(inverse)
        means = sums / counts
        first = int(done[0]) if self.end_label is None else self.end_label + self.step
        span = (int(done[-1]) - first) // self.step + 1
        new = np.full(span, np.nan)
        new[(done - first) // self.step] = means
        if span >= self.capacity:
            # The first window, or a gap plus new data, covers the whole history: keep only the newest part.
            if self.end_label is not None:
                self.resets += 1
            new = new[-self.capacity :]
            self.values = new
            first = int(done[-1]) - (len(new) - 1) * self.step
        else:
            self.values = np.concatenate([self.values, new])[-self.capacity :]
        self.end_label = int(done[-1])
        return first, new

    def clear(self) -> None:
        self.__init__(self.step, self.capacity)


class ErrorTracker:
    """Rolling sMAPE of one-horizon-ahead forecasts against the values later observed.

    sMAPE term: ``|a - f| / max((|a| + |f|) / 2, floor)``, in ``[0, 2]``. The floor (a small share of the
    recent level, set by the forecaster) keeps idle stretches, where both values are near zero, from
    counting as 200 % errors.
    """

    def __init__(self, window: int = 60):
        self.window = int(window)
        self.predictions: dict[int, float] = {}
        self.terms: deque[float] = deque(maxlen=self.window)
        self.floor = 1e-9

    def set_floor_from(self, history: np.ndarray) -> None:
        """Floor = 5 % of the *typical* level over the whole history, not the recent one: at night the
        recent level is zero, and every near-zero forecast would then count as a 200 % error."""
        level = float(np.nanmean(history)) if np.isfinite(history).any() else 0.0
        self.floor = max(0.05 * abs(level), 1e-9)

    def predict(self, label: int, value: float) -> None:
        self.predictions[int(label)] = float(value)

    def realise(self, labels: np.ndarray, values: np.ndarray) -> None:
        for label, actual in zip(labels, values):
            f = self.predictions.pop(int(label), None)
            if f is None or not math.isfinite(actual):
                continue
            denom = max((abs(actual) + abs(f)) / 2, self.floor)
            self.terms.append(min(2.0, abs(actual - f) / denom) if denom > 0 else 0.0)
        if self.predictions and len(labels):
            newest = int(labels[-1])
            for stale in [k for k in self.predictions if k <= newest]:
                del self.predictions[stale]

    @property
    def smape(self) -> float | None:
        return float(np.mean(self.terms)) if self.terms else None

    def reset(self) -> None:
        self.predictions.clear()
        self.terms.clear()


def feed_window(fc, window: MetricWindow, now: datetime) -> tuple[Forecast | None, int, np.ndarray]:
    """The first half of every forecaster's ``update()``: set its series up on the first window, feed the
    window's new steps, and score the forecasts those steps realise (sMAPE floor from the whole history).

    ``fc`` has ``series`` (None until set up), ``_setup(step)``, ``step``, ``tracker``, ``method`` and
    ``spec``. Returns (a not-ready forecast when there is nothing to forecast from yet, else None; the
    label of the first new step; the new steps' values), as :meth:`StepSeries.feed` gives them."""
    if fc.series is None:
        if len(window) == 0:
            return not_ready(now, fc.method, "no data yet", fc.spec.quantile), 0, np.empty(0)
        fc._setup(window.step_seconds)
    series: StepSeries = fc.series
    first, new = series.feed(window)
    if series.end_label is None:
        return not_ready(now, fc.method, "no complete step of data yet", fc.spec.quantile), first, new
    if len(new):
        labels = first + fc.step * np.arange(len(new), dtype=np.int64)
        fc.tracker.set_floor_from(series.values)
        fc.tracker.realise(labels, new)
    return None, first, new
