"""The contract every scaling rule follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ...api.spec import ModelDeploymentSpec, ThresholdRule


@dataclass(frozen=True)
class RuleInput:
    """What a rule sees: the spec, its own signal value, and current capacity."""

    spec: ModelDeploymentSpec
    rule: ThresholdRule
    value: float
    """The signal's current value (never NaN; unknown values never reach a rule)."""
    current: float
    """Current replicas in primary-equivalents (burst replicas weighted by capacity)."""
    tolerance: float


@dataclass(frozen=True)
class RuleResult:
    """A rule's recommendation in primary-equivalent replicas, with the reason in words."""

    desired: float
    reason: str
    holds: bool = False
    """True when the value is inside the band (the rule asks for no change)."""
    floor: float = 0.0
    """For a holding rule: the fewest replicas that keep this signal inside its band. When another
    rule asks to scale down, a holding rule lets it go this far and no further."""


class Rule(Protocol):
    def __call__(self, inp: RuleInput) -> RuleResult: ...
