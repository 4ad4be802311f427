"""In-flight requests per replica, as percent of the concurrency one replica has at ``capacityQps``.

The snapshot carries the model's *total* in-flight requests (model servers plus the activator); the rule
divides by the current replicas and by ``spec.inflight_concurrency`` and then applies the same band and
proportional formula as CPU. The proportional result, ``current * value / target``, is then
``inflight / (concurrency * target)``: what Knative's KPA asks for in concurrency mode.
"""

from __future__ import annotations

from dataclasses import replace

from .base import RuleInput, RuleResult
from .proportional import proportional

_percent_rule = proportional("inflight", "%")


def inflight(inp: RuleInput) -> RuleResult:
    if inp.current <= 0:
        return RuleResult(inp.current, "inflight: no replicas", holds=True, floor=inp.current)
    percent = 100.0 * inp.value / (inp.current * inp.spec.inflight_concurrency)
    return _percent_rule(replace(inp, value=percent))
