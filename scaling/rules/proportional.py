"""Threshold band plus the HPA proportional formula, for signals that scale with load per replica.

CPU, memory, latency and error rate share this shape: inside ``[scaleDownBelow, scaleUpAbove]`` the rule
holds; outside, it asks for ``current * value / target`` replicas (HPA: ``ceil(current * value / target)``),
unless the ratio is within the tolerance of 1.
"""

from __future__ import annotations

from .base import RuleInput, RuleResult


def _fmt(value: float, unit: str) -> str:
    return f"{value:.0f}{unit}" if value >= 10 else f"{value:.2g}{unit}"


def proportional(signal: str, unit: str):
    def rule(inp: RuleInput) -> RuleResult:
        r = inp.rule
        v = _fmt(inp.value, unit)
        # Per-replica load scales with 1 / replicas: the fewest replicas that keep it under the upper bound.
        floor = inp.current * inp.value / r.scale_up_above if r.scale_up_above > 0 else inp.current
        if r.scale_down_below <= inp.value <= r.scale_up_above:
            return RuleResult(
                inp.current, f"{signal} {v} within [{_fmt(r.scale_down_below, unit)}, {_fmt(r.scale_up_above, unit)}]",
                holds=True, floor=floor,
            )
        target = r.effective_target
        ratio = inp.value / target if target > 0 else float("inf")
        if abs(ratio - 1) <= inp.tolerance:
            return RuleResult(inp.current, f"{signal} {v} within tolerance of target {_fmt(target, unit)}", holds=True,
                              floor=floor)
        desired = inp.current * ratio
        if inp.value > r.scale_up_above:
            return RuleResult(desired, f"{signal} {v} > {_fmt(r.scale_up_above, unit)}")
        return RuleResult(desired, f"{signal} {v} < {_fmt(r.scale_down_below, unit)}")

    rule.__name__ = f"{signal}_rule"
    return rule


cpu = proportional("cpu", "%")
memory = proportional("memory", "%")
latency = proportional("latency", "ms")
error_rate = proportional("errors", "%")
