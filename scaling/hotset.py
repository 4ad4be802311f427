"""The hot set: sub-models a new replica loads at start-up, chosen from per-model request rates (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from ..api.spec import ModelDeploymentSpec


def hot_set(spec: ModelDeploymentSpec, rates: Mapping[str, float]) -> list[str]:
    """The ``lazyLoading.hotSetSize`` busiest models that served requests, busiest first.

    Only models the spec declares count (a rate for a removed sub-model must never reach a new
    replica's start-up list), and models the spec already preloads are left out (they load anyway).
    Ties are broken by name so the list, and the ConfigMap holding it, only change when the ranking does.
    """
    lazy = spec.model.lazy_loading
    if not lazy.enabled or lazy.hot_set_size <= 0:
        return []
    declared = {spec.model.name} | {s.name for s in spec.model.sub_models}
    pinned = set(lazy.preload)
    busy = [(rate, model) for model, rate in rates.items() if model in declared and model not in pinned and rate > 0]
    busy.sort(key=lambda rm: (-rm[0], rm[1]))
    return [model for _, model in busy[: lazy.hot_set_size]]
