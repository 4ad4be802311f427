"""kopf handlers: reconcile owned objects, run the scaling loop, repair drift. I/O only; no arithmetic.

- ``reconcile`` (create/resume/update of spec): validate, dry-run then apply the owned objects, prune
  variants that left the spec, write ``Ready``.
- ``scale`` (timer): read metrics (and history for the forecaster), call ``scaling.decide``, apply
  replicas under the scaler's field manager, write status, conditions and Events.
- ``owned_deployments`` (index) gives replicas and readiness per variant without listing.
- ``deployment_event`` repairs template drift and reverts hand-edited replicas with an Event.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import kopf
import numpy as np

from .. import tracing
from ..api import GROUP, PLURAL, VERSION, SpecError, parse_spec
from ..api.decision import Forecast, MetricSnapshot, Observation, ScalerState
from ..api.spec import Actuation, ModelDeploymentSpec
from ..api.window import MetricWindow
from ..metrics import MetricsError, NoData, PrometheusSource
from ..metrics.policy import TOKEN_SECRET_LABEL, MetricsPolicy, NotAllowed
from ..api.status import RolloutStatus
from ..scaling import decide
from ..scaling.hotset import hot_set
from ..scaling.rollout import RolloutPlan, VersionHealth, advance, split_versions
from . import builders, telemetry
from .failpoints import failpoint
from .kube import SCALER_MANAGER, Kube
from .loadfailures import CONDITION as LOAD_CONDITION, load_failure_report, read_load_failures

WAKE_ANNOTATION = "elastiserve.dev/activate"
"""Set by the activator (``<unix time>:<pending requests>``) to wake a model at zero."""
from .status import decision_conditions, forecast_status, iso, set_condition, variant_summary

TRACER = tracing.tracer("elastiserve.operator")
TICK_SECONDS = 5.0
"""How often each object's timer wakes; a cycle runs when its spec's syncPeriodSeconds has passed."""

MANAGED = {builders.LABEL_MANAGED: builders.MANAGER}


def notice(body: Any, *, reason: str, message: str) -> None:
    """A Normal Event. (kopf.info obeys settings.posting.level, which is WARNING so that kopf's own
    per-tick "succeeded" lines never become Events; our Normal Events must still be posted.)"""
    kopf.event(body, type="Normal", reason=reason, message=message)


def _now(memo: Any) -> datetime:
    clock = getattr(memo, "clock", None)
    return clock() if clock else datetime.now(timezone.utc)


def _inherited_env(memo: Any) -> list[tuple[str, str]]:
    """What model-server pods inherit from the operator's environment (tracing settings)."""
    return list(getattr(memo, "pod_env", None) or [])


def _kube(memo: Any) -> Kube:
    if getattr(memo, "kube", None) is None:
        memo.kube = Kube()
    return memo.kube


def _invalid(body: Any, patch: kopf.Patch, status: Any, exc: SpecError, now: datetime, generation: int | None) -> None:
    message = "; ".join(f"{p}: {m}" for p, m in exc.problems)
    patch.status["phase"] = "Error"
    patch.status["conditions"] = set_condition(
        (status or {}).get("conditions"), "Ready", False, "InvalidSpec", message, now, generation
    )
    kopf.warn(body, reason="InvalidSpec", message=message[:1000])


# --------------------------------------------------------------------------- indexes


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def owned_deployments(
    namespace: str, name: str, labels: kopf.Labels, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any
):
    """(namespace, modeldeployment) → one entry per variant Deployment."""
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
            # A rolling update is done when every replica runs the newest template and is ready.
            "rolled_out": (st.get("updatedReplicas", 0) or 0) >= replicas and (st.get("readyReplicas", 0) or 0) >= replicas
            and st.get("observedGeneration", 0) >= (meta.get("generation") or 0),
        }
    }


def observed(index: kopf.Index, namespace: str, name: str, canary: bool = False) -> dict[str, dict[str, Any]]:
    """Owned Deployments of one ModelDeployment by variant: the stable ones, or the canaries of a rollout."""
    return {e["variant"]: e for e in index.get((namespace, name), []) if e.get("canary", False) == canary}


# --------------------------------------------------------------------------- reconcile


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    spec: kopf.Spec,
    name: str,
    namespace: str,
    uid: str,
    meta: kopf.Meta,
    status: kopf.Status,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    memo: kopf.Memo,
    owned_deployments: kopf.Index,
    **_: Any,
) -> None:
    now = _now(memo)
    generation = meta.get("generation")
    try:
        mspec = parse_spec(spec, f"{namespace}/{name}")
    except SpecError as exc:
        _invalid(body, patch, status, exc, now, generation)
        raise kopf.PermanentError(str(exc)) from None
    st = status or {}
    await apply_owned(mspec, name, namespace, uid, memo, owned_deployments, logger, st.get("routing"),
                      (st.get("rollout") or {}).get("stableVersion"))
    conds = set_condition(
        (status or {}).get("conditions"), "Ready", True, "Reconciled",
        f"{len(mspec.variants)} variant Deployment(s) and Service applied", now, generation,
    )
    patch.status["conditions"] = conds
    patch.status["observedGeneration"] = generation
    if (status or {}).get("phase") in (None, "Error", "Pending"):
        patch.status["phase"] = "Ready"
    logger.info(f"reconciled {len(mspec.variants)} variants (generation {generation})")


async def apply_owned(
    mspec: ModelDeploymentSpec,
    name: str,
    namespace: str,
    uid: str,
    memo: Any,
    index: kopf.Index,
    logger: Any,
    routing: str | None = None,
    stable_version: str | None = None,
) -> list[str]:
    """Apply every owned object; new Deployments start at their minimum. Returns variants created.

    ``stable_version``: during a rollout the stable Deployments keep the old version (the canary path
    changes versions, not this one)."""
    kube = _kube(memo)
    current = observed(index, namespace, name)
    objs = builders.desired_objects(mspec, name, namespace, uid, stable_version, _inherited_env(memo))
    if routing == "activator" and getattr(memo, "activator", None) is not None:
        # At zero the public Service stays pointed at the activator; a spec change must not flip it.
        objs = [builders.build_service_to_activator(mspec, name, namespace, uid) if o["kind"] == "Service"
                and o["metadata"]["name"] == name else o for o in objs]
    created = []
    initial = builders.initial_replicas(mspec)
    for obj in objs:
        if obj["kind"] == "Deployment":
            variant = obj["metadata"]["labels"][builders.LABEL_VARIANT]
            if variant not in current:
                # Only a new Deployment gets replicas in its template; afterwards the scaler owns them.
                obj["spec"]["replicas"] = initial[variant]
                created.append(variant)
                # Known before the Deployment exists: a hand edit seen while we finish creating it is
                # drift to restore (with its Event), not an unknown value to adopt silently.
                memo_applied(memo)[(namespace, name, variant)] = initial[variant]
    await kube.apply_all(objs)
    for variant in created:
        if memo_applied(memo).get((namespace, name, variant)) == initial[variant]:
            await kube.apply(builders.build_replicas(name, namespace, variant, initial[variant]), SCALER_MANAGER)
    wanted = {v.name for v in mspec.variants}
    for variant, entry in current.items():
        if variant not in wanted:
            await kube.delete("Deployment", namespace, entry["name"])
            logger.info(f"deleted Deployment {entry['name']}: variant {variant} left the spec")
    if not mspec.model.sub_models and any(e.get("submodels") for e in current.values()):
        await kube.delete("ConfigMap", namespace, builders.submodels_name(name))  # the last sub-model was removed
    primary_key = (namespace, name, mspec.primary.name)
    if mspec.actuation == Actuation.HPA:
        hpa_managed(memo).add(primary_key)
    else:
        hpa_managed(memo).discard(primary_key)
        await kube.delete("HorizontalPodAutoscaler", namespace, builders.deployment_name(name, mspec.primary.name))
    return created


def memo_applied(memo: Any) -> dict[tuple[str, str, str], int]:
    """Replicas we last applied per (namespace, modeldeployment, variant).

    Shared across objects: kopf gives each object a *shallow copy* of the operator memo, so this
    dict must be created once at start-up (``shared_memo``), never lazily on a per-object copy."""
    return memo.applied


def hpa_managed(memo: Any) -> set[tuple[str, str, str]]:
    """Deployments whose replicas an HPA owns (actuation: HPA)."""
    return memo.hpa_variants


def shared_memo(**settings: Any) -> kopf.Memo:
    """The operator-level memo: containers every object's memo copy must share."""
    return kopf.Memo(applied={}, hpa_variants=set(), sources={}, forecasters={}, last_cycle={}, locks={}, hot_sets={},
                     kube=None, **settings)


# --------------------------------------------------------------------------- scaling loop


class RefusedSource:
    """A metrics source the tenancy policy (or a missing Secret) rules out: every signal is unknown, with
    a message naming the field and the fix. The decision then holds (never scales down), and the message
    reaches the MetricsAvailable condition and the MetricsUnavailable Event."""

    def __init__(self, message: str):
        self.message = message

    def snapshot(self, spec: ModelDeploymentSpec, namespace: str, name: str, at: datetime | None = None) -> MetricSnapshot:
        return MetricSnapshot(errors={"prometheus": f"NotAllowed: {self.message}"})

    def model_rates(self, spec: ModelDeploymentSpec, namespace: str, name: str) -> dict[str, float]:
        raise NotAllowed(self.message)

    def history(self, spec: ModelDeploymentSpec, namespace: str, name: str, end: datetime, seconds: int, step: int):
        raise NotAllowed(self.message)


def _policy(memo: Any) -> MetricsPolicy:
    policy = getattr(memo, "metrics_policy", None)
    if policy is None:  # unit tests that hand in a bare memo: the default Prometheus only
        policy = memo.metrics_policy = MetricsPolicy.build(getattr(memo, "prometheus_url", None))
    return policy


async def _source(memo: Any, mspec: ModelDeploymentSpec, namespace: str) -> PrometheusSource | RefusedSource:
    """The Prometheus this spec may read, under the operator's tenancy policy (``metrics.policy``).

    A URL off the allowlist is refused before any connection; the bearer token Secret is read only for an
    allowed URL and only when it carries the consent label."""
    prom = mspec.metrics.prometheus
    policy = _policy(memo)
    try:
        url, own = policy.prometheus_url(namespace, prom.url)
    except NotAllowed as exc:
        return RefusedSource(str(exc))
    token = None
    if prom.bearer_token_secret:
        ref = prom.bearer_token_secret
        try:
            token = await _kube(memo).read_secret_key(namespace, ref.name, ref.key, label=TOKEN_SECRET_LABEL)
        except (PermissionError, LookupError) as exc:
            return RefusedSource(f"spec.metrics.prometheus.bearerTokenSecret: {exc}")
    custom = policy.custom_queries_allowed(namespace, own)
    key = (url, token, prom.tls_verify, prom.timeout_seconds, custom)
    sources = getattr(memo, "sources", None)
    if sources is None:
        sources = memo.sources = {}
    if key not in sources:
        sources[key] = PrometheusSource(url=url, token=token, tls_verify=prom.tls_verify, timeout=prom.timeout_seconds,
                                        custom_queries=custom)
    return sources[key]


async def _forecast(
    memo: Any, source: Any, mspec: ModelDeploymentSpec, namespace: str, name: str, now: datetime, at_zero: bool = False
) -> Forecast | None:
    """Feed the forecaster new history and return its forecast (None when forecasting is off)."""
    fc = mspec.forecasting
    if not fc.enabled:
        return None
    from ..forecasting import make_forecaster

    cache = getattr(memo, "forecasters", None)
    if cache is None:
        cache = memo.forecasters = {}
    key = (namespace, name, "qps")
    fingerprint = fc.model_dump_json()
    entry = cache.get(key)
    if entry is None or entry[0] != fingerprint:
        entry = cache[key] = (fingerprint, make_forecaster(fc), None, None)
    _, forecaster, last_end, last_forecast = entry
    # The first cycle reads the whole history window; later ones only what is new (plus overlap).
    seconds = fc.history_seconds if last_end is None else min(
        fc.history_seconds, int((now - last_end).total_seconds()) + 3 * fc.step_seconds
    )
    try:
        window = await asyncio.to_thread(source.history, mspec, namespace, name, now, seconds, fc.step_seconds)
    except MetricsError as exc:
        if at_zero and last_end is not None and isinstance(exc, NoData):
            # No pods and no activator traffic: the true request rate is zero, not unknown.
            steps = max(1, int((now - last_end).total_seconds() // fc.step_seconds))
            window = MetricWindow(last_end + timedelta(seconds=fc.step_seconds), fc.step_seconds, np.zeros(steps))
        else:
            if last_forecast is not None and (now - last_forecast.origin).total_seconds() < fc.horizon_seconds:
                return last_forecast  # no new samples yet: the last forecast still covers now
            return Forecast(origin=now, points=[], ready=False, reason=f"no history: {exc}", method=fc.method)
    # A first fit (order search) takes seconds: keep it off the event loop.
    forecast = await asyncio.to_thread(forecaster.update, window, now)
    cache[key] = (fingerprint, forecaster, window.end, forecast)
    return forecast


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, initial_delay=1.0)
async def scale(
    spec: kopf.Spec,
    name: str,
    namespace: str,
    uid: str,
    meta: kopf.Meta,
    status: kopf.Status,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    memo: kopf.Memo,
    owned_deployments: kopf.Index,
    **_: Any,
) -> None:
    """The scaling loop: one cycle per ``syncPeriodSeconds``."""
    try:
        mspec = parse_spec(spec)
    except SpecError:
        return  # reconcile reported it; nothing to scale
    last = _memo_dict(memo, "last_cycle")
    if time.monotonic() - last.get((namespace, name), -1e9) < mspec.sync_period_seconds - 0.5:
        return
    await cycle(mspec, name, namespace, uid, meta, status, body, patch, logger, memo, owned_deployments)


@kopf.on.field(GROUP, VERSION, PLURAL, field=("metadata", "annotations", WAKE_ANNOTATION))
async def wake(
    new: Any,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    uid: str,
    meta: kopf.Meta,
    status: kopf.Status,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    memo: kopf.Memo,
    owned_deployments: kopf.Index,
    **_: Any,
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


def _memo_dict(memo: Any, attr: str) -> dict:
    value = getattr(memo, attr, None)
    if value is None:  # only in unit tests that hand in a bare memo
        value = {}
        setattr(memo, attr, value)
    return value


async def cycle(
    mspec: ModelDeploymentSpec,
    name: str,
    namespace: str,
    uid: str,
    meta: Any,
    status: Any,
    body: Any,
    patch: kopf.Patch,
    logger: Any,
    memo: Any,
    owned_deployments: kopf.Index,
    *,
    pending: int | None = None,
) -> None:
    """Gather, decide, actuate, report — one object, one cycle (serialized per object)."""
    key = (namespace, name)
    lock = _memo_dict(memo, "locks").setdefault(key, asyncio.Lock())
    async with lock:
        _memo_dict(memo, "last_cycle")[key] = time.monotonic()
        # One trace per cycle: its Prometheus queries, forecast, decide() and API calls are its spans.
        with TRACER.start_as_current_span("cycle", attributes={
                "k8s.namespace.name": namespace, "elastiserve.modeldeployment": name,
                "elastiserve.generation": meta.get("generation") or 0, "elastiserve.woken": bool(pending)}):
            await _cycle(mspec, name, namespace, uid, meta, status, body, patch, logger, memo, owned_deployments, pending)


async def _cycle(
    mspec: ModelDeploymentSpec,
    name: str,
    namespace: str,
    uid: str,
    meta: Any,
    status: Any,
    body: Any,
    patch: kopf.Patch,
    logger: Any,
    memo: Any,
    owned_deployments: kopf.Index,
    pending: int | None,
) -> None:
    started = time.perf_counter()
    now = _now(memo)
    generation = meta.get("generation")
    st = status or {}

    current = observed(owned_deployments, namespace, name)
    missing = [v.name for v in mspec.variants if v.name not in current]
    if missing:
        # Drift: an owned Deployment was deleted. Recreate it from the spec, then decide next cycle.
        await apply_owned(mspec, name, namespace, uid, memo, owned_deployments, logger, st.get("routing"),
                          (st.get("rollout") or {}).get("stableVersion"))
        kopf.warn(body, reason="DriftRepaired", message=f"recreated Deployment(s) for variant(s) {', '.join(missing)}")
        return

    source = await _source(memo, mspec, namespace)
    with telemetry.RECONCILE_SECONDS.labels("metrics").time(), TRACER.start_as_current_span("metrics"):
        snapshot = await asyncio.to_thread(source.snapshot, mspec, namespace, name, None)
    if pending:
        snapshot = snapshot.model_copy(
            update={"pending": max(snapshot.pending or 0, pending), "observed_at": snapshot.observed_at or now}
        )
    for signal in snapshot.errors:
        telemetry.PROMETHEUS_ERRORS.labels(namespace, name, signal).inc()
    with telemetry.RECONCILE_SECONDS.labels("forecast").time(), TRACER.start_as_current_span("forecast"):
        at_zero = sum(e["replicas"] for e in current.values()) == 0
        forecast = await _forecast(memo, source, mspec, namespace, name, now, at_zero)

    applied = memo_applied(memo)
    for vs in st.get("variants") or []:  # after a restart: what we decided last is in the status
        applied.setdefault((namespace, name, vs["name"]), vs.get("desired"))
    for v, e in list(current.items()):
        if await restore_replicas(memo, namespace, name, v, e["replicas"], body, logger):
            current[v] = dict(e, replicas=applied[(namespace, name, v)])
    canaries = observed(owned_deployments, namespace, name, canary=True)
    plan = await _rollout_plan(mspec, name, namespace, st, current, canaries, source, now)
    counting_canary = plan.status.phase == "Progressing"  # while promoting the canary is a temporary duplicate
    obs = Observation(
        replicas={v: e["replicas"] + (canaries.get(v, {}).get("replicas", 0) if counting_canary else 0)
                  for v, e in current.items()},
        ready={v: e["ready"] + (canaries.get(v, {}).get("ready", 0) if counting_canary else 0) for v, e in current.items()},
    )
    state = ScalerState.model_validate(st.get("scaler") or {})
    with telemetry.RECONCILE_SECONDS.labels("decide").time(), TRACER.start_as_current_span("decide") as span:
        decision = decide(mspec, snapshot, forecast, state, now, obs)
        span.set_attributes({"elastiserve.desired": sum(decision.desired.values()),
                             "elastiserve.replicas": sum(obs.replicas.values()),
                             "elastiserve.reasons": list(decision.reasons)})
    if plan.reasons:
        decision = decision.model_copy(update={"reasons": decision.reasons + list(plan.reasons)})

    failpoint("after-decide")
    stable_desired, canary_desired = await rollout_apply(
        mspec, name, namespace, uid, plan, decision.desired, current, canaries, body, memo, logger
    )
    stable_obs = Observation(replicas={v: e["replicas"] for v, e in current.items()},
                             ready={v: e["ready"] for v, e in current.items()})
    await actuate(mspec, name, namespace, uid, stable_desired, stable_obs, body, memo, logger)
    await actuate(mspec, name, namespace, uid, canary_desired, Observation(
        replicas={v: e["replicas"] for v, e in canaries.items()}), body, memo, logger, canary=True)
    failpoint("after-actuate")  # replicas patched, status not yet written
    routing = await route(mspec, name, namespace, uid, decision.desired, obs, st.get("routing"), body, memo)
    hot = await publish_hot_set(mspec, name, namespace, uid, source, memo)
    failures = await read_load_failures(source, mspec, namespace, name)

    # ---- status, Events, metrics
    summary = decision.summary()
    changed = decision.desired != obs.replicas
    patch.status["routing"] = routing
    if hot is not None:
        patch.status["hotSet"] = hot
    # Merge patches keep keys they do not mention: send cleared fields as null so they are removed
    # (an outage's metricsMissingSince must not outlive the outage).
    patch.status["scaler"] = decision.state.model_dump(by_alias=True, mode="json")
    patch.status["rollout"] = plan.status.model_dump(by_alias=True, mode="json")
    patch.status["variants"] = [
        {"name": v, "replicas": obs.replicas.get(v, 0), "desired": d, "ready": obs.ready.get(v, 0)}
        for v, d in decision.desired.items()
    ]
    patch.status["replicas"] = sum(obs.replicas.values())
    patch.status["desired"] = sum(decision.desired.values())
    patch.status["variantSummary"] = variant_summary(decision.desired)
    patch.status["lastDecision"] = {"time": iso(now), "desired": decision.desired, "reasons": decision.reasons}
    patch.status["forecast"] = forecast_status(forecast, mspec.forecasting.horizon_seconds)
    patch.status["slo"] = decision.slo.to_api() if decision.slo is not None else None
    conds = decision_conditions(st.get("conditions"), decision, forecast, mspec.forecasting.enabled, now, generation)
    active = plan.status.phase in ("Progressing", "Promoting")
    rollout_reason = {"Progressing": "Progressing", "Promoting": "Promoting", "RolledBack": "RolledBack"}.get(
        plan.status.phase, "Idle")
    patch.status["conditions"] = set_condition(conds, "Rollout", active, rollout_reason,
                                               plan.status.message or "no rollout", now, generation)
    if failures is not None:  # sub-models the servers cannot load: status, condition, Events on change
        report = load_failure_report(failures, st.get("subModelLoadFailures"))
        patch.status["subModelLoadFailures"] = report.entries
        patch.status["conditions"] = set_condition(patch.status["conditions"], LOAD_CONDITION, report.loaded,
                                                   report.reason, report.message, now, generation)
        for type_, reason, message in report.events:
            kopf.event(body, type=type_, reason=reason, message=message[:1000])
    if plan.event:
        reason, message = plan.event
        (kopf.warn if reason == "RolloutRolledBack" else notice)(body, reason=reason, message=message[:1000])
    patch.status["phase"] = "ScaledToZero" if sum(decision.desired.values()) == 0 else (
        "Scaling" if changed or obs.ready != obs.replicas else "Ready"
    )
    if changed:
        patch.status["lastScaleTime"] = iso(now)
        patch.status["lastScaleReason"] = summary[:1024]
        # The trace id leads from `kubectl describe mdep` to the cycle's trace (see docs/observability.md).
        tid = tracing.trace_id()
        notice(body, reason="ScaledToZero" if decision.scale_to_zero else "Scaled",
               message=summary[:960] + (f" (trace {tid})" if tid else ""))
        logger.info(f"scaled: {summary}")
    else:
        logger.debug(f"hold: {summary}")
    was = next((c for c in st.get("conditions") or [] if c.get("type") == "MetricsAvailable"), None)
    if not decision.metrics_available and (was is None or was.get("status") != "False"):
        kopf.warn(body, reason="MetricsUnavailable", message=summary[:1000])
    if decision.metrics_available and was is not None and was.get("status") == "False":
        notice(body, reason="MetricsRecovered", message="metrics are back; scaling resumed")
    _export(namespace, name, mspec, decision, obs, snapshot, forecast, now)
    telemetry.RECONCILE_SECONDS.labels("cycle").observe(time.perf_counter() - started)


def _export(namespace, name, mspec, decision, obs, snapshot, forecast, now) -> None:
    labels = (namespace, name)
    telemetry.DECISIONS.labels(*labels).inc()
    telemetry.METRICS_AVAILABLE.labels(*labels).set(1 if decision.metrics_available else 0)
    telemetry.LAST_DECISION.labels(*labels).set(now.timestamp())
    telemetry.SCALED_TO_ZERO.labels(*labels).set(1 if sum(decision.desired.values()) == 0 else 0)
    if snapshot.qps is not None:
        telemetry.OBSERVED_QPS.labels(*labels).set(snapshot.qps)
    for v, d in decision.desired.items():
        telemetry.DESIRED.labels(*labels, v).set(d)
        telemetry.REPLICAS.labels(*labels, v).set(obs.replicas.get(v, 0))
        telemetry.READY.labels(*labels, v).set(obs.ready.get(v, 0))
        variant = next(x for x in mspec.variants if x.name == v)
        telemetry.MAX_REPLICAS.labels(*labels, v).set(mspec.bounds(variant).max)
        before = obs.replicas.get(v, 0)
        if d != before:
            telemetry.SCALE_EVENTS.labels(*labels, v, "up" if d > before else "down").inc()
    if forecast is not None and forecast.ready:
        telemetry.FORECAST_QPS.labels(*labels, "mean").set(forecast.peak_mean())
        telemetry.FORECAST_QPS.labels(*labels, "upper").set(forecast.peak_upper())
        if forecast.error is not None:
            telemetry.FORECAST_ERROR.labels(*labels).set(forecast.error)


async def route(
    mspec: ModelDeploymentSpec,
    name: str,
    namespace: str,
    uid: str,
    desired: dict[str, int],
    obs: Observation,
    routing: str | None,
    body: Any,
    memo: Any,
) -> str:
    """Point the public Service at the activator while at zero, and back at the pods once one is ready."""
    activator = getattr(memo, "activator", None)  # (addresses, port) from --activator-service
    kube = _kube(memo)
    has_ready = sum(obs.ready.values()) > 0
    if routing == "activator" and (has_ready or not mspec.scale_to_zero.enabled or activator is None):
        # A replica is ready, or scale-to-zero was switched off: the pods take the traffic again.
        await kube.apply(builders.build_service(mspec, name, namespace, uid))
        await kube.delete("EndpointSlice", namespace, f"{name}-activator")
        notice(body, reason="RoutedToPods", message="the Service points at the pods again")
        return "pods"
    if not mspec.scale_to_zero.enabled or activator is None:
        return routing or "pods"
    addresses, port = activator
    at_zero = sum(desired.values()) == 0 and sum(obs.ready.values()) == 0
    if routing != "activator" and at_zero:
        await kube.apply(builders.build_service_to_activator(mspec, name, namespace, uid))
        await kube.apply(builders.build_activator_slice(name, namespace, uid, addresses, port))
        notice(body, reason="RoutedToActivator", message="no replicas: Service now points at the activator")
        return "activator"
    return routing or "pods"


async def _rollout_plan(mspec, name, namespace, st, current, canaries, source, now) -> RolloutPlan:
    """Health of both versions (only while a rollout runs) and the next rollout state."""
    status = RolloutStatus.model_validate(st["rollout"]) if st.get("rollout") else None
    stable_h = canary_h = VersionHealth()
    running = status is not None and (status.canary_version is not None or mspec.model.version != status.stable_version)
    if running and status.phase == "Progressing" and isinstance(source, PrometheusSource):
        on_step = (now - (status.step_started_at or now)).total_seconds()
        window = int(min(max(on_step, 10), mspec.rollout.step_seconds))
        stable_raw, canary_raw = await asyncio.gather(
            asyncio.to_thread(source.version_health, mspec, namespace, name, False, window),
            asyncio.to_thread(source.version_health, mspec, namespace, name, True, window),
        )
        stable_h = VersionHealth(**stable_raw, ready=sum(e["ready"] for e in current.values()))
        canary_h = VersionHealth(**canary_raw, ready=sum(e["ready"] for e in canaries.values()))
    elif running and status.phase == "Progressing":
        canary_h = VersionHealth(ready=sum(e["ready"] for e in canaries.values()))
    stable_updated = bool(status and status.canary_version) and all(
        e.get("version") == status.canary_version and e.get("rolled_out") for e in current.values()
    )
    return advance(mspec, status, stable_h, canary_h, now, stable_updated=stable_updated)


async def rollout_apply(
    mspec, name, namespace, uid, plan: RolloutPlan, desired: dict[str, int], current, canaries, body, memo, logger
) -> tuple[dict[str, int], dict[str, int]]:
    """Create/remove canary Deployments and move the stable ones; returns (stable, canary) replicas."""
    kube = _kube(memo)
    status = plan.status
    if not plan.active:
        for variant, entry in canaries.items():
            await kube.delete("Deployment", namespace, entry["name"])
            memo_applied(memo).pop((namespace, name, f"{variant}@canary"), None)
        if canaries and mspec.model.sub_models:
            await kube.delete("ConfigMap", namespace, builders.submodels_name(name, canary=True))
        return desired, {}
    canary_version = status.canary_version
    stable, canary = {}, {}
    for v in mspec.variants:
        entry = canaries.get(v.name)
        ready = entry.get("ready", 0) if entry is not None and entry.get("version") == canary_version else 0
        stable[v.name], canary[v.name] = split_versions(desired[v.name], plan.canary_share, ready)
        if entry is None or entry.get("version") != canary_version:
            if mspec.model.sub_models:  # before the pods that mount it
                await kube.apply(builders.build_submodels(mspec, name, namespace, uid, canary_version, canary=True))
            obj = builders.build_deployment(mspec, name, namespace, uid, v, version=canary_version, canary=True,
                                            inherited_env=_inherited_env(memo))
            obj["spec"]["replicas"] = canary[v.name]
            await kube.apply(obj)
        if status.phase == "Promoting" and current.get(v.name, {}).get("version") != canary_version:
            # Rolling update of the stable Deployment to the new version (maxUnavailable 0).
            if mspec.model.sub_models:
                await kube.apply(builders.build_submodels(mspec, name, namespace, uid, canary_version))
            await kube.apply(builders.build_deployment(mspec, name, namespace, uid, v, version=canary_version,
                                                       inherited_env=_inherited_env(memo)))
            logger.info(f"promoting {canary_version}: stable Deployment of {v.name} updated")
    return stable, canary


async def actuate(
    mspec: ModelDeploymentSpec,
    name: str,
    namespace: str,
    uid: str,
    desired: dict[str, int],
    obs: Observation,
    body: Any,
    memo: Any,
    logger: Any,
    canary: bool = False,
) -> None:
    """Apply replicas that differ from what the cluster has (HPA mode: move the HPA floor)."""
    kube = _kube(memo)
    applied = memo_applied(memo)
    for variant, replicas in desired.items():
        if canary:
            key = (namespace, name, f"{variant}@canary")
            if obs.replicas.get(variant) != replicas or applied.get(key) != replicas:
                applied[key] = replicas
                await kube.apply(builders.build_replicas(name, namespace, variant, replicas, canary=True), SCALER_MANAGER)
            continue
        if mspec.actuation == Actuation.HPA and variant == mspec.primary.name:
            floor_key = (namespace, name, f"{variant}@hpa-floor")
            if applied.get(floor_key) != replicas:
                await kube.apply(builders.build_hpa(mspec, name, namespace, uid, replicas))
                applied[floor_key] = replicas
            continue
        if obs.replicas.get(variant) == replicas and applied.get((namespace, name, variant)) == replicas:
            continue
        applied[(namespace, name, variant)] = replicas
        await kube.apply(builders.build_replicas(name, namespace, variant, replicas), SCALER_MANAGER)


async def publish_hot_set(
    mspec: ModelDeploymentSpec, name: str, namespace: str, uid: str, source: Any, memo: Any
) -> list[str] | None:
    """Publish the busiest sub-models in ``<name>-hotset`` for new replicas to load at start-up.

    Returns the hot set, or None when there is nothing to publish (no sub-models, hot set off, or no
    per-model rates this cycle: then the ConfigMap keeps its last list). Applied when the list changes,
    and once after a restart."""
    lazy = mspec.model.lazy_loading
    if not mspec.model.sub_models or not lazy.enabled or lazy.hot_set_size <= 0:
        return None
    try:
        rates = await asyncio.to_thread(source.model_rates, mspec, namespace, name)
    except MetricsError:
        return None
    if not rates:
        return None  # nothing served in the window (e.g. at zero): keep the last hot set
    hot = hot_set(mspec, rates)
    published = _memo_dict(memo, "hot_sets")
    key = (namespace, name)
    if published.get(key) != hot:
        await _kube(memo).apply(builders.build_hotset(name, namespace, uid, hot))
    published[key] = hot
    return hot


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
    key = (namespace, mdep, f"{variant}@canary" if canary else variant)
    ours = memo_applied(memo).get(key)
    if ours is None or theirs is None or theirs == ours or (namespace, mdep, variant) in hpa_managed(memo):
        return False
    await _kube(memo).apply(builders.build_replicas(mdep, namespace, variant, ours, canary=canary), SCALER_MANAGER)
    name = builders.deployment_name(mdep, variant, canary)
    message = (
        f"spec.replicas of {name} was set to {theirs} outside elastiserve; restored {ours}. "
        f"Change spec.replicas.min/max of ModelDeployment {mdep} instead."
    )
    logger.warning(message)
    kopf.warn(body, reason="ReplicasRestored", message=message)  # on the Deployment, or the ModelDeployment
    return True
