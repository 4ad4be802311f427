"""A metrics source the tenancy policy (``metrics.policy``) or a missing Secret rules out.

It answers the ``MetricSource`` contract without any connection: every signal is unknown, with a message
naming the field and the fix. The decision then holds (never scales down), and the message reaches the
``MetricsAvailable`` condition and the ``MetricsUnavailable`` Event.
"""

from __future__ import annotations

from datetime import datetime

from ..api.decision import MetricSnapshot
from ..api.spec import ModelDeploymentSpec
from ..api.window import MetricWindow
from .policy import NotAllowed


class RefusedSource:
    """Every read is refused with ``message`` (``NotAllowed``)."""

    def __init__(self, message: str):
        self.message = message

    def snapshot(self, spec: ModelDeploymentSpec, namespace: str, name: str, at: datetime | None = None,
                 signals: tuple[str, ...] | None = None) -> MetricSnapshot:
        return MetricSnapshot(errors={"prometheus": f"NotAllowed: {self.message}"})

    def model_rates(self, spec: ModelDeploymentSpec, namespace: str, name: str) -> dict[str, float]:
        raise NotAllowed(self.message)

    def history(
        self, spec: ModelDeploymentSpec, namespace: str, name: str, end: datetime, seconds: int, step: int
    ) -> MetricWindow:
        raise NotAllowed(self.message)
