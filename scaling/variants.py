"""Capacity arithmetic across variants: primary-equivalents, and splitting a total into variants.

The engine reasons in *primary-equivalent replicas*: a burst replica whose ``capacityQps`` is 1.5× the
primary's counts as 1.5. A total is split by filling the primary up to its bounds, then putting the
overflow on burst variants (cheaper, lower quality), within their bounds and the quality budget.
"""

from __future__ import annotations

import math

from ..api.spec import ModelDeploymentSpec, Role, Variant
from .limits import clamp


def equivalents(spec: ModelDeploymentSpec, replicas: dict[str, int]) -> float:
    """Replicas in primary-equivalents."""
    cap = spec.primary.capacity_qps
    return sum(replicas.get(v.name, 0) * v.capacity_qps / cap for v in spec.variants)


def max_equivalents(spec: ModelDeploymentSpec) -> int:
    """Most primary-equivalents the bounds allow (burst capacity limited by the quality budget)."""
    primary_max = spec.bounds(spec.primary).max
    if not spec.burst.enabled:
        return primary_max
    cap = spec.primary.capacity_qps
    burst = sum(spec.bounds(b).max * b.capacity_qps / cap for b in spec.bursts)
    if spec.burst.quality_budget < 1 and burst > 0:
        # burst share b / (p + b) <= budget  =>  b <= budget / (1 - budget) * p
        burst = min(burst, spec.burst.quality_budget / (1 - spec.burst.quality_budget) * primary_max)
    return primary_max + math.floor(burst + 1e-9)


def _burst_replicas(spec: ModelDeploymentSpec, variant: Variant, overflow: float, budget_left: float) -> int:
    """Replicas of one burst variant for ``overflow`` primary-equivalents, within its bounds and what is
    left of the quality budget (in primary-equivalents)."""
    cap_p = spec.primary.capacity_qps
    bounds = spec.bounds(variant)
    want = overflow * cap_p / variant.capacity_qps
    budget_cap = max(budget_left, 0.0) * cap_p / variant.capacity_qps
    return clamp(min(want, budget_cap), bounds.min, bounds.max)


def bursts_by_quality(spec: ModelDeploymentSpec) -> list[Variant]:
    """Burst variants in the order they take overflow: least quality lost first (e.g. INT8 before a
    pruned variant), ties in spec order."""
    return sorted(spec.bursts, key=lambda v: v.quality_cost)


def split(
    spec: ModelDeploymentSpec,
    total: int,
    *,
    primary_total: int | None = None,
) -> tuple[dict[str, int], list[str]]:
    """Split ``total`` primary-equivalents into replicas per variant.

    ``primary_total`` caps what the primary gets (used for short forecast peaks: the primary stays at
    the reactive level and burst replicas take the rest).
    """
    reasons: list[str] = []
    out = {v.name: 0 for v in spec.variants}
    if total <= 0:
        return out, reasons
    primary = spec.primary
    pb = spec.bounds(primary)
    want_primary = total if primary_total is None else min(total, primary_total)
    out[primary.name] = clamp(want_primary, pb.min, pb.max)
    overflow = total - out[primary.name]
    # Quality budget: all burst variants together provide at most `qualityBudget` of the capacity.
    budget_left = spec.burst.quality_budget * total
    for b in bursts_by_quality(spec):
        if not spec.burst.enabled:
            out[b.name] = spec.bounds(b).min
            continue
        n = _burst_replicas(spec, b, max(overflow, 0), budget_left) if overflow > 0 else spec.bounds(b).min
        out[b.name] = n
        if n > 0 and overflow > 0:
            reasons.append(f"{b.name} burst +{n} for {overflow:g} over {primary.name}")
        overflow -= n * b.capacity_qps / primary.capacity_qps
        budget_left -= n * b.capacity_qps / primary.capacity_qps
    if overflow > 1e-9 and out[primary.name] < pb.max:
        # Burst could not take it all (bounds or quality budget): give the rest back to the primary.
        extra = clamp(overflow, 0, pb.max - out[primary.name])
        out[primary.name] += extra
        overflow -= extra
    if overflow > 1e-9:
        reasons.append(f"capped: {overflow:.3g} replicas short at maximum")
    return out, reasons


def is_burst(variant: Variant) -> bool:
    return variant.role == Role.burst
