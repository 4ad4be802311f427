"""Apply: the one place that carries out a ``plan.Plan``: API server writes, the status patch, Events, log lines
and the operator's Prometheus metrics, in a fixed order.

    owned -> repairs -> [after-decide] -> rollout -> replicas -> [after-actuate] -> routing -> hot set
      -> status -> Events -> metrics

The failpoints (``operator/failpoints.py``) sit where a crash test wants them: after the decision (only the
repairs of hand-edited replicas are applied) and after the replica patches (status not yet written). A
failed API call raises kopf's Temporary/Permanent error (``kube.py``) and stops the plan there; the next
cycle plans again from what the cluster then has.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import telemetry
from .failpoints import failpoint
from .kube import SCALER_MANAGER, TEMPLATE_MANAGER, Kube
from .plan import (
    Apply, ApplyAll, Delete, Event, Log, Plan, Remember, SetActivatorSlice, SetHotSet, SetHpaVariant, SetReady, Step,
)
from .state import ObjectState


def post(body: Any, event: Event) -> None:
    """Post an Event. (kopf.info obeys settings.posting.level, which is WARNING so that kopf's own per-tick
    "succeeded" lines never become Events; our Normal Events must still be posted, so kopf.event.)"""
    if event.type == "Warning":
        kopf.warn(body, reason=event.reason, message=event.message)
    else:
        kopf.event(body, type="Normal", reason=event.reason, message=event.message)


async def run_steps(steps: tuple[Step, ...], kube: Kube, obj: ObjectState, body: Any, logger: Any) -> None:
    for step in steps:
        if isinstance(step, Apply):
            if step.unless_changed is not None and obj.applied.get(step.unless_changed[0]) != step.unless_changed[1]:
                continue
            await kube.apply(step.obj, SCALER_MANAGER if step.scaler else TEMPLATE_MANAGER)
        elif isinstance(step, ApplyAll):
            await kube.apply_all([dict(o) for o in step.objs])
        elif isinstance(step, Delete):
            await kube.delete(step.kind, step.namespace, step.name)
        elif isinstance(step, Remember):
            if step.value is None:
                obj.applied.pop(step.key, None)
            else:
                obj.applied[step.key] = step.value
        elif isinstance(step, SetHpaVariant):
            obj.hpa_variant = step.variant
        elif isinstance(step, SetHotSet):
            obj.hot_set = list(step.models)
        elif isinstance(step, SetActivatorSlice):
            obj.activator_slice = (tuple(step.addresses), step.port)
        elif isinstance(step, SetReady):
            obj.ready = dict(step.condition)
        elif isinstance(step, Event):
            post(body, step)
        elif isinstance(step, Log):
            getattr(logger, step.level)(step.message)
        else:  # pragma: no cover - a new step type without its apply
            raise TypeError(f"no apply for {type(step).__name__}")


def export(plan: Plan) -> None:
    """The plan's metric values into the operator's registry (``telemetry``)."""
    for m in plan.metrics:
        metric = getattr(telemetry, m.name).labels(*m.labels)
        if m.op == "inc":
            metric.inc(m.value)
        else:
            metric.set(m.value)


async def apply_plan(plan: Plan, kube: Kube, obj: ObjectState, body: Any, patch: Any, logger: Any) -> None:
    """Carry out ``plan`` in the fixed order above."""
    await run_steps(plan.owned, kube, obj, body, logger)
    await run_steps(plan.repairs, kube, obj, body, logger)
    if plan.decided:
        failpoint("after-decide")
    await run_steps(plan.rollout, kube, obj, body, logger)
    await run_steps(plan.replicas, kube, obj, body, logger)
    if plan.decided:
        failpoint("after-actuate")  # replicas patched, status not yet written
    await run_steps(plan.routing, kube, obj, body, logger)
    await run_steps(plan.hot_set, kube, obj, body, logger)
    for key, value in plan.status.items():
        patch.status[key] = value
    await run_steps(plan.events, kube, obj, body, logger)
    export(plan)
