"""Fourier terms: the exogenous regressors that carry seasonality into the ARIMA model.

Terms are functions of *absolute* time (seconds since the Unix epoch), not of an observation index, so
the columns of a refit and of an ``extend()`` line up, and a daily period is anchored at 00:00 UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Seasonality:
    """Seasonal periods (seconds) with the number of sine/cosine pairs used for each."""

    periods: tuple[int, ...] = ()
    terms: tuple[int, ...] = ()

    @property
    def columns(self) -> int:
        return 2 * sum(self.terms)

    @property
    def longest(self) -> int:
        return max(self.periods, default=0)

    def describe(self) -> str:
        if not self.periods:
            return "no seasonality"
        return "+".join(f"{_human(p)}×{k}" for p, k in zip(self.periods, self.terms))

    def design(self, times: np.ndarray) -> np.ndarray:
        """The regressor matrix (len(times) × columns) at the given epoch seconds."""
        t = np.asarray(times, dtype=float)
        cols: list[np.ndarray] = []
        for period, k in zip(self.periods, self.terms):
            # Reduce modulo the period first: keeps the phase exact for large epoch values.
            phase = 2 * np.pi * np.mod(t, period) / period
            for j in range(1, k + 1):
                cols.append(np.sin(j * phase))
                cols.append(np.cos(j * phase))
        if not cols:
            return np.empty((len(t), 0))
        return np.column_stack(cols)


def plan_seasonality(
    periods: Sequence[int], terms: int, step_seconds: int, history_seconds: int
) -> tuple[Seasonality, list[str]]:
    """The periods a model can use, and notes on the ones it drops.

    A period is usable when the history holds two of them (otherwise its shape cannot be told apart from
    the level) and when it spans at least ``2 * terms + 1`` steps (fewer terms are used on short periods).
    """
    kept: list[tuple[int, int]] = []
    notes: list[str] = []
    for p in sorted(set(int(p) for p in periods)):
        if 2 * p > history_seconds:
            notes.append(f"period {_human(p)} dropped: needs {_human(2 * p)} of history, the spec keeps {_human(history_seconds)}")
            continue
        k = min(terms, (p // step_seconds - 1) // 2)
        if k < 1:
            notes.append(f"period {_human(p)} dropped: shorter than 3 steps of {step_seconds} s")
            continue
        kept.append((p, k))
    return Seasonality(tuple(p for p, _ in kept), tuple(k for _, k in kept)), notes


def _human(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
