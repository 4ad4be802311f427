"""The operator's state, in one typed place.

**What lives where, and what a restart does to it.** Everything a decision depends on across cycles is
persisted in the ModelDeployment's ``status``: ``status.scaler`` (the ``ScalerState``: cooldowns,
panic mode, the metric-outage clock, the SLO demand history), ``status.rollout`` (the canary's phase
and step), ``status.routing`` (pods or activator), ``status.variants[].desired`` (the replicas last
decided) and the conditions. A restarted operator, or its standby replica after a takeover, reads them
back and goes on as if nothing happened. Only an :class:`ObjectState` per ModelDeployment lives in
memory, and all of it is a cache or a guard that can be rebuilt: ``applied`` (the replicas and HPA
floors we last sent, to skip unchanged patches and to tell our own edits from someone else's) is seeded
from ``status.variants[].desired`` on the first cycle after a restart; ``hpa_variant`` is set again
by the ``resume`` handler; ``hot_set`` (the last published hot set) is empty after a restart, so the
ConfigMap is applied once more; ``ready`` (the Ready condition the last reconcile wrote) is set again by
the ``resume`` handler; ``forecaster`` is refitted from Prometheus' history (the first cycle
reads the whole history window); ``lock`` and ``last_cycle`` only serialise cycles and pace the timer.
Operator-wide, :class:`OperatorState` holds the API client, the clock, the activator's address, the
environment model-server pods inherit, the metrics tenancy policy and the Prometheus clients by
settings, all rebuilt from the command line at start-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..api.decision import Forecast
    from ..metrics.policy import MetricsPolicy
    from .kube import Kube

Key = tuple[str, str]
"""(namespace, ModelDeployment name)."""


@dataclass
class ForecasterEntry:
    """One object's forecaster, the settings it was made for, and how far its history reaches."""

    fingerprint: str
    forecaster: Any
    last_end: datetime | None = None
    last_forecast: Forecast | None = None


@dataclass
class ObjectState:
    """In-memory state of one ModelDeployment (see the module docstring for what survives a restart)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_cycle: float = float("-inf")
    """``time.monotonic()`` when the last cycle started (the timer ticks more often than syncPeriodSeconds)."""
    last_panic_check: float = float("-inf")
    """``time.monotonic()`` of the last panic check between cycles (``metrics.rules.inflight.panicPeriodSeconds``)."""
    applied: dict[str, int] = field(default_factory=dict)
    """What we last sent, by ``variant``, ``variant@canary`` or ``variant@hpa-floor``."""
    hpa_variant: str | None = None
    """The variant whose replicas an HPA owns (actuation: HPA): its replicas are never restored."""
    hot_set: list[str] | None = None
    """The hot set last published in ``<name>-hotset``."""
    ready: dict[str, Any] | None = None
    """The ``Ready`` condition the last reconcile wrote. A cycle that read the status before that write
    landed keeps this condition instead of dropping it (its merge patch replaces the whole list)."""
    forecaster: ForecasterEntry | None = None
    activator_slice: tuple[tuple[str, ...], int] | None = None
    """The (addresses, port) the model's activator EndpointSlice was last applied with."""


@dataclass
class OperatorState:
    """Operator-wide clients and settings, and the per-object records. One instance, made at start-up and
    shared by every object's memo (kopf hands each object a shallow copy of the operator memo)."""

    kube: Kube | None = None
    clock: Callable[[], datetime] | None = None
    activator: tuple[list[str], int] | None = None
    """(addresses, port) that zero-scaled models' Services point at: the activator's Ready pods
    (``--activator-service``, kept current by :func:`observe.refresh_activator`) or ``--activator-address``."""
    activator_service: tuple[str, str] | None = None
    """(namespace, name) of the activator's Service (``--activator-service``)."""
    activator_settle_s: float = 10.0
    """Seconds a routing change gets to reach kube-proxy (``--activator-settle-seconds``, ``Observed``)."""
    activator_checked: float = float("-inf")
    """``time.monotonic()`` of the last read of the activator's endpoints."""
    pod_env: list[tuple[str, str]] = field(default_factory=list)
    """What model-server pods inherit from the operator's environment (tracing settings)."""
    policy: MetricsPolicy | None = None
    sources: dict[tuple, Any] = field(default_factory=dict)
    """Prometheus clients by (url, token, tls_verify, timeout, custom queries allowed)."""
    objects: dict[Key, ObjectState] = field(default_factory=dict)

    def now(self) -> datetime:
        return self.clock() if self.clock else datetime.now(timezone.utc)

    def of(self, namespace: str, name: str) -> ObjectState:
        return self.objects.setdefault((namespace, name), ObjectState())

    def api(self) -> Kube:
        if self.kube is None:
            from .kube import Kube

            self.kube = Kube()
        return self.kube


def operator_state(memo: Any) -> OperatorState:
    """The operator's state in kopf's memo. ``shared_memo`` creates it at start-up; a bare memo (unit tests)
    gets one on first use."""
    state = getattr(memo, "state", None)
    if state is None:
        state = memo.state = OperatorState()
    return state
