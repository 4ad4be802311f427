"""The hot set: busiest declared sub-models first, bounded, stable under ties."""

from __future__ import annotations

import pytest

from elastiserve.api import parse_spec
from elastiserve.scaling.hotset import hot_set


def spec(**lazy):
    return parse_spec({
        "model": {"name": "main", "uri": "file:///models/main",
                  "subModels": [{"name": n, "uri": f"file:///models/{n}"} for n in ("a", "b", "c", "d")],
                  "lazyLoading": lazy},
        "variants": [{"name": "fp32"}],
    })


@pytest.mark.parametrize(
    "lazy,rates,want",
    [
        ({"hotSetSize": 2}, {"a": 1.0, "b": 5.0, "c": 3.0}, ["b", "c"]),
        ({"hotSetSize": 4}, {"a": 1.0, "b": 0.0}, ["a"]),  # no requests: not hot
        ({"hotSetSize": 2}, {"removed": 50.0, "a": 1.0}, ["a"]),  # only declared models
        ({"hotSetSize": 2, "preload": ["b"]}, {"a": 1.0, "b": 9.0, "c": 2.0}, ["c", "a"]),  # preloaded anyway
        ({"hotSetSize": 3}, {"d": 2.0, "a": 2.0, "main": 2.0}, ["a", "d", "main"]),  # ties by name
        ({"hotSetSize": 0}, {"a": 1.0}, []),
        ({"enabled": False}, {"a": 1.0}, []),
    ],
    ids=["busiest-first", "idle-models-left-out", "undeclared-ignored", "preload-excluded", "ties-stable",
         "off", "lazy-loading-off"],
)
def test_hot_set(lazy, rates, want):
    assert hot_set(spec(**lazy), rates) == want
