"""The generated traces the backtest checks generalisation on: seeded, the shapes their docstring states."""

from __future__ import annotations

import numpy as np
import pytest

from elastiserve.simulation.synthetic import GENERATED, generated_trace


def lag1(x: np.ndarray) -> float:
    x = x - x.mean()
    return float(np.dot(x[:-1], x[1:]) / np.dot(x, x))


@pytest.mark.parametrize("kind", GENERATED)
def test_seeded_and_scaled(kind):
    a, b = generated_trace(kind, days=4, seed=2), generated_trace(kind, days=4, seed=2)
    assert np.array_equal(a.requests, b.requests)
    assert not np.array_equal(a.requests, generated_trace(kind, days=4, seed=3).requests)
    assert a.rate.mean() == pytest.approx(250, rel=0.05)


@pytest.mark.parametrize(
    "kind,check",
    [
        ("spiky", lambda r: r.max() / r.mean() > 5 and lag1(r) < 0.7),
        ("flash", lambda r: r.max() / np.median(r) > 4),
        ("growth", lambda r: r[-288:].mean() > 1.1 * r[:288].mean()),
        ("social", lambda r: r.max() / r.mean() > 8),
    ],
    ids=["spiky", "flash", "growth", "social"],
)
def test_shapes(kind, check):
    assert check(generated_trace(kind, days=10, seed=1).rate)


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="unknown generated trace 'x'"):
        generated_trace("x")
