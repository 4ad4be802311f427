"""Request-rate rule: size the model so each replica runs at ``target`` percent of its capacity.

Utilisation is ``qps / (current primary-equivalents * capacityQps)``. Inside the band the rule holds;
outside it asks for ``qps / (capacityQps * target%)`` replicas. Unlike the proportional rules this one
works from zero replicas, which is what lets a model wake up on its first requests.
"""

from __future__ import annotations

from .base import RuleInput, RuleResult


def qps(inp: RuleInput) -> RuleResult:
    r = inp.rule
    cap = inp.spec.primary.capacity_qps
    needed = inp.value / (cap * r.effective_target / 100)
    if inp.current <= 0:
        return RuleResult(needed, f"qps {inp.value:.3g}/s with no replicas → {needed:.3g}")
    util = 100 * inp.value / (inp.current * cap)
    text = f"qps {inp.value:.3g}/s = {util:.0f}% of {inp.current:.3g}×{cap:g}/s"
    floor = inp.value / (cap * r.scale_up_above / 100) if r.scale_up_above > 0 else inp.current
    if r.scale_down_below <= util <= r.scale_up_above:
        return RuleResult(inp.current, f"{text} within [{r.scale_down_below:g}%, {r.scale_up_above:g}%]", holds=True,
                          floor=floor)
    ratio = util / r.effective_target if r.effective_target > 0 else float("inf")
    if abs(ratio - 1) <= inp.tolerance:
        return RuleResult(inp.current, f"{text} within tolerance of {r.effective_target:g}%", holds=True, floor=floor)
    sign = ">" if util > r.scale_up_above else "<"
    bound = r.scale_up_above if util > r.scale_up_above else r.scale_down_below
    return RuleResult(needed, f"{text} {sign} {bound:g}%")
