"""Scaling rules, registered by signal name (one flat registry, like KEDA's scalers builder)."""

from __future__ import annotations

from .base import Rule, RuleInput, RuleResult
from .inflight import inflight
from .proportional import cpu, error_rate, latency, memory
from .qps import qps

RULES: dict[str, Rule] = {
    "cpu": cpu,
    "memory": memory,
    "qps": qps,
    "latency": latency,
    "error_rate": error_rate,
    "inflight": inflight,
}

__all__ = ["RULES", "Rule", "RuleInput", "RuleResult"]
