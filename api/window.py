"""A clean, evenly spaced time series: what ``metrics/`` returns and ``forecasting/`` consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np


@dataclass(frozen=True)
class MetricWindow:
    """Values at ``start + i * step_seconds``; no NaN (gaps are repaired or refused by the producer)."""

    start: datetime
    step_seconds: int
    values: np.ndarray = field(repr=False)
    signal: str = "qps"

    def __post_init__(self) -> None:
        vals = np.asarray(self.values, dtype=float)
        if vals.ndim != 1:
            raise ValueError("a MetricWindow holds one series")
        if self.step_seconds <= 0:
            raise ValueError(f"step_seconds must be positive (got {self.step_seconds})")
        if not np.all(np.isfinite(vals)):
            raise ValueError("a MetricWindow must not hold NaN or Inf; repair or drop them first")
        object.__setattr__(self, "values", vals)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def end(self) -> datetime:
        """Time of the last value."""
        return self.start + timedelta(seconds=self.step_seconds * (len(self.values) - 1))

    def time_of(self, i: int) -> datetime:
        return self.start + timedelta(seconds=self.step_seconds * i)

    def tail(self, n: int) -> "MetricWindow":
        n = min(n, len(self.values))
        return MetricWindow(self.time_of(len(self.values) - n), self.step_seconds, self.values[-n:], self.signal)

    def since(self, t: datetime) -> "MetricWindow":
        """Values strictly after ``t``."""
        import math

        offset = (t - self.start).total_seconds() / self.step_seconds
        first = min(len(self.values), max(0, math.floor(offset) + 1))
        return MetricWindow(self.time_of(first), self.step_seconds, self.values[first:], self.signal)
