"""kopf handlers: thin. Each builds an observation, runs the pipeline and hands the plan to ``apply``.

- ``reconcile`` (create/resume/update of spec): validate, then apply the owned objects (dry-run first),
  prune variants that left the spec, write ``Ready``.
- ``scale`` (timer) and ``wake`` (the activator's annotation): one scaling cycle, observe → decide → plan →
  apply (``observe.py``, ``plan.decide_cycle``, ``plan.plan_cycle``, ``apply.py``; docs/operator.md).
- ``owned_deployments`` (index) gives replicas and readiness per variant without listing.
- ``deployment_event`` reverts hand-edited replicas of an owned Deployment with an Event.

Per-object state lives in ``state.ObjectState`` (see ``state.py`` for what survives a restart).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from ..api import GROUP, PLURAL, VERSION, SpecError, parse_spec
from ..api.spec import ModelDeploymentSpec
from . import builders, observe, telemetry
from .apply import apply_plan
from .kube import SCALER_MANAGER
from .plan import (canary_key, decide_cycle, decide_panic, missing_variants, panic_check_due, plan_cycle, plan_panic,
                   plan_reconcile, plan_recreate)
from .state import OperatorState, operator_state
from .status import set_condition

WAKE_ANNOTATION = "elastiserve.dev/activate"
"""Set by the activator (``<unix time>:<pending requests>``) to wake a model at zero."""

TRACER = telemetry.TRACER
TICK_SECONDS = 5.0
"""How often each object's timer wakes; a cycle runs when its spec's syncPeriodSeconds has passed, the panic
check (``metrics.rules.inflight``) when its panic period has (so a period below this acts every 5 s)."""

MANAGED = {builders.LABEL_MANAGED: builders.MANAGER}


def shared_memo(*, kube: Any = None, activator: tuple[list[str], int] | None = None, pod_env: Any = None,
                metrics_policy: Any = None, activator_service: tuple[str, str] | None = None,
                activator_settle_s: float = 10.0, **settings: Any) -> kopf.Memo:
    """The operator-level memo: the operator's state (one ``OperatorState``, which every object's shallow memo
    copy shares) and the start-up settings ``main.configure`` reads (peering...)."""
    state = OperatorState(kube=kube, activator=activator, activator_service=activator_service,
                          activator_settle_s=activator_settle_s, pod_env=list(pod_env or []), policy=metrics_policy)
    return kopf.Memo(state=state, **settings)


# --------------------------------------------------------------------------- indexes


def rolled_out(replicas: int, generation: int, status: Mapping[str, Any]) -> bool:
    """A Deployment's rolling update is done (as ``kubectl rollout status`` decides): the controller has seen
    the newest spec, every replica runs the newest template, no pod of an older template is left, and the new
    ones are ready. Counting ready pods of both templates is not enough: while the last new pod starts, an
    old one still serves (a real rollout answered with the old version after the operator had declared it
    done and removed the canary)."""
    updated = status.get("updatedReplicas", 0) or 0
    return (status.get("observedGeneration", 0) >= generation and updated >= replicas
            and (status.get("replicas", 0) or 0) <= updated and (status.get("readyReplicas", 0) or 0) >= replicas)


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def owned_deployments(
    namespace: str, name: str, labels: kopf.Labels, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any
):
    """(namespace, modeldeployment) → one entry per variant Deployment (the fields of ``plan.Owned``)."""
    mdep = labels.get(builders.LABEL_MDEP)
    variant = labels.get(builders.LABEL_VARIANT)
    if not mdep or not variant:
        return None
    st = status or {}
    replicas = spec.get("replicas", 0) or 0
    return {
        (namespace, mdep): {
            "variant": variant,
            "name": name,
            "canary": labels.get(builders.LABEL_TRACK) == "canary",
            "version": labels.get(builders.LABEL_VERSION),
            # it mounts the sub-model ConfigMap (see builders.build_deployment)
            "submodels": builders.ANNOTATION_SUBMODELS in (
                ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}),
            "replicas": replicas,
            "ready": st.get("readyReplicas", 0) or 0,
            "rolled_out": rolled_out(replicas, meta.get("generation") or 0, st),
        }
    }


# --------------------------------------------------------------------------- reconcile


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    spec: kopf.Spec, name: str, namespace: str, uid: str, meta: kopf.Meta, status: kopf.Status, body: kopf.Body,
    patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, owned_deployments: kopf.Index, **_: Any,
) -> None:
    ctx = operator_state(memo)
    now = ctx.now()
    generation = meta.get("generation")
    try:
        mspec = parse_spec(spec, f"{namespace}/{name}")
    except SpecError as exc:
        message = "; ".join(f"{p}: {m}" for p, m in exc.problems)
        patch.status["phase"] = "Error"
        patch.status["conditions"] = set_condition(
            (status or {}).get("conditions"), "Ready", False, "InvalidSpec", message, now, generation)
        kopf.warn(body, reason="InvalidSpec", message=message[:1000])
        raise kopf.PermanentError(str(exc)) from None
    obj = ctx.of(namespace, name)
    # One writer per object at a time: a cycle waits for the owned objects and the Ready condition it keeps.
    async with obj.lock:
        seen = observe.base(ctx, obj, mspec, namespace, name, uid, generation, status, owned_deployments, now)
        await apply_plan(plan_reconcile(seen), ctx.api(), obj, body, patch, logger)


# --------------------------------------------------------------------------- scaling loop


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, initial_delay=1.0)
async def scale(
    spec: kopf.Spec, name: str, namespace: str, uid: str, meta: kopf.Meta, status: kopf.Status, body: kopf.Body,
    patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, owned_deployments: kopf.Index, **_: Any,
) -> None:
    """The scaling loop: one cycle per ``syncPeriodSeconds``."""
    try:
        mspec = parse_spec(spec)
    except SpecError:
        return  # reconcile reported it; nothing to scale
    obj = operator_state(memo).of(namespace, name)
    since_cycle = time.monotonic() - obj.last_cycle
    if since_cycle < mspec.sync_period_seconds - 0.5:
        rollout = bool(((status or {}).get("rollout") or {}).get("canaryVersion"))
        if panic_check_due(mspec, rollout, since_cycle, time.monotonic() - obj.last_panic_check):
            await panic_cycle(mspec, name, namespace, uid, meta, status, body, patch, logger, memo, owned_deployments)
        return
    await cycle(mspec, name, namespace, uid, meta, status, body, patch, logger, memo, owned_deployments)


async def panic_cycle(
    mspec: ModelDeploymentSpec, name: str, namespace: str, uid: str, meta: Any, status: Any, body: Any,
    patch: kopf.Patch, logger: Any, memo: Any, owned_deployments: kopf.Index,
) -> None:
    """The fast panic check between full cycles: observe (in-flight only) → decide (``scaling.panic``, scale-up
    only) → plan → apply, serialized with the full cycle by the object's lock."""
    ctx = operator_state(memo)
    obj = ctx.of(namespace, name)
    async with obj.lock:
        obj.last_panic_check = time.monotonic()
        started = time.perf_counter()
        with TRACER.start_as_current_span("panic-check", attributes={
                "k8s.namespace.name": namespace, "elastiserve.modeldeployment": name}):
            observe.remember_from_status(obj, status or {})
            seen = observe.base(ctx, obj, mspec, namespace, name, uid, meta.get("generation"), status,
                                owned_deployments, ctx.now())
            if missing_variants(seen):
                return  # the full cycle recreates them
            seen = await observe.observe_inflight(seen, ctx)
            with telemetry.phase("decide"):
                decision, observation = decide_panic(seen)
            await apply_plan(plan_panic(seen, decision, observation), ctx.api(), obj, body, patch, logger)
        telemetry.RECONCILE_SECONDS.labels("panic").observe(time.perf_counter() - started)


@kopf.on.field(GROUP, VERSION, PLURAL, field=("metadata", "annotations", WAKE_ANNOTATION))
async def wake(
    new: Any, spec: kopf.Spec, name: str, namespace: str, uid: str, meta: kopf.Meta, status: kopf.Status,
    body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, owned_deployments: kopf.Index, **_: Any,
) -> None:
    """The activator holds requests for this model: decide now instead of at the next sync."""
    if not new:
        return
    try:
        mspec = parse_spec(spec)
        pending = max(1, int(str(new).rsplit(":", 1)[-1]))
    except (SpecError, ValueError):
        return
    logger.info(f"activator reports {pending} waiting request(s): deciding now")
    await cycle(mspec, name, namespace, uid, meta, status, body, patch, logger, memo, owned_deployments, pending=pending)


async def cycle(
    mspec: ModelDeploymentSpec, name: str, namespace: str, uid: str, meta: Any, status: Any, body: Any,
    patch: kopf.Patch, logger: Any, memo: Any, owned_deployments: kopf.Index, *, pending: int | None = None,
) -> None:
    """Observe, decide, plan, apply: one object, one cycle (serialized per object)."""
    ctx = operator_state(memo)
    obj = ctx.of(namespace, name)
    async with obj.lock:
        obj.last_cycle = time.monotonic()
        started = time.perf_counter()
        # One trace per cycle: its Prometheus queries, forecast, decide() and API calls are its spans.
        with TRACER.start_as_current_span("cycle", attributes={
                "k8s.namespace.name": namespace, "elastiserve.modeldeployment": name,
                "elastiserve.generation": meta.get("generation") or 0, "elastiserve.woken": bool(pending)}):
            observe.remember_from_status(obj, status or {})
            await observe.refresh_activator(ctx, obj.last_cycle)
            seen = observe.base(ctx, obj, mspec, namespace, name, uid, meta.get("generation"), status,
                                owned_deployments, ctx.now())
            if missing_variants(seen):
                await apply_plan(plan_recreate(seen), ctx.api(), obj, body, patch, logger)
                return
            seen = await observe.observe(seen, ctx, obj, pending)
            with telemetry.phase("decide") as span:
                decided = decide_cycle(seen)
                span.set_attributes({"elastiserve.desired": sum(decided.decision.desired.values()),
                                     "elastiserve.replicas": sum(decided.observation.replicas.values()),
                                     "elastiserve.reasons": list(decided.decision.reasons)})
            await apply_plan(plan_cycle(seen, decided), ctx.api(), obj, body, patch, logger)
        telemetry.RECONCILE_SECONDS.labels("cycle").observe(time.perf_counter() - started)


# --------------------------------------------------------------------------- drift


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_event(
    type: str, body: kopf.Body, namespace: str, labels: kopf.Labels, spec: kopf.Spec, memo: kopf.Memo,
    logger: kopf.Logger, **_: Any,
) -> None:
    """Someone else changed ``spec.replicas`` of an owned Deployment: put our value back and say why."""
    if type != "MODIFIED":
        return
    mdep = labels.get(builders.LABEL_MDEP)
    variant = labels.get(builders.LABEL_VARIANT)
    if not mdep or not variant:
        return
    canary = labels.get(builders.LABEL_TRACK) == "canary"
    await restore_replicas(memo, namespace, mdep, variant, spec.get("replicas"), body, logger, canary=canary)


async def restore_replicas(
    memo: Any, namespace: str, mdep: str, variant: str, theirs: int | None, body: Any, logger: Any, *, canary: bool = False
) -> bool:
    """Re-apply the replicas we decided when they were changed behind our back. True if it did."""
    ctx = operator_state(memo)
    obj = ctx.of(namespace, mdep)
    ours = obj.applied.get(canary_key(variant) if canary else variant)
    if ours is None or theirs is None or theirs == ours or variant == obj.hpa_variant:
        return False
    await ctx.api().apply(builders.build_replicas(mdep, namespace, variant, ours, canary=canary), SCALER_MANAGER)
    name = builders.deployment_name(mdep, variant, canary)
    message = (
        f"spec.replicas of {name} was set to {theirs} outside elastiserve; restored {ours}. "
        f"Change spec.replicas.min/max of ModelDeployment {mdep} instead."
    )
    logger.warning(message)
    kopf.warn(body, reason="ReplicasRestored", message=message)  # on the Deployment
    return True
