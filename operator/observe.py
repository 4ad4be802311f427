"""Observe: everything a cycle reads, gathered into one immutable ``plan.Observed``.

The owned Deployments come from kopf's index (no API call); the metric snapshot, the forecaster's new
history, the versions' health during a canary step and the per-sub-model rates come from Prometheus (the
``metrics`` package); the previous status from the object kopf hands the handler; what we last applied from
the in-memory ``ObjectState``. Reads only: nothing here changes the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import kopf
import numpy as np

from .. import tracing
from ..api.decision import Forecast
from ..api.spec import ModelDeploymentSpec
from ..api.window import MetricWindow
from ..metrics import MetricsError, NoData, PrometheusSource
from ..metrics.policy import TOKEN_SECRET_LABEL, MetricsPolicy, NotAllowed
from ..metrics.refused import RefusedSource
from ..scaling.rollout import VersionHealth
from . import telemetry
from .loadfailures import load_failure_report, read_load_failures
from .plan import Observed, Owned, hot_set_enabled, measuring_rollout, rollout_status
from .state import ForecasterEntry, ObjectState, OperatorState


def deployments(index: kopf.Index, namespace: str, name: str, canary: bool = False) -> dict[str, Owned]:
    """Owned Deployments of one ModelDeployment by variant: the stable ones, or the canaries of a rollout."""
    return {e["variant"]: Owned.from_index(e) for e in index.get((namespace, name), [])
            if e.get("canary", False) == canary}


def policy(ctx: OperatorState) -> MetricsPolicy:
    if ctx.policy is None:  # unit tests that hand in a bare memo: the default Prometheus only
        ctx.policy = MetricsPolicy.build(None)
    return ctx.policy


async def source(ctx: OperatorState, spec: ModelDeploymentSpec, namespace: str) -> PrometheusSource | RefusedSource:
    """The Prometheus this spec may read, under the operator's tenancy policy (``metrics.policy``).

    A URL off the allowlist is refused before any connection; the bearer token Secret is read only for an
    allowed URL and only when it carries the consent label."""
    prom = spec.metrics.prometheus
    pol = policy(ctx)
    try:
        url, own = pol.prometheus_url(namespace, prom.url)
    except NotAllowed as exc:
        return RefusedSource(str(exc))
    token = None
    if prom.bearer_token_secret:
        ref = prom.bearer_token_secret
        try:
            token = await ctx.api().read_secret_key(namespace, ref.name, ref.key, label=TOKEN_SECRET_LABEL)
        except (PermissionError, LookupError) as exc:
            return RefusedSource(f"spec.metrics.prometheus.bearerTokenSecret: {exc}")
    custom = pol.custom_queries_allowed(namespace, own)
    key = (url, token, prom.tls_verify, prom.timeout_seconds, custom)
    if key not in ctx.sources:
        ctx.sources[key] = PrometheusSource(url=url, token=token, tls_verify=prom.tls_verify,
                                            timeout=prom.timeout_seconds, custom_queries=custom)
    return ctx.sources[key]


async def forecast(
    obj: ObjectState, src: Any, spec: ModelDeploymentSpec, namespace: str, name: str, now: datetime,
    at_zero: bool = False,
) -> Forecast | None:
    """Feed the forecaster new history and return its forecast (None when forecasting is off)."""
    fc = spec.forecasting
    if not fc.enabled:
        return None
    from ..forecasting import make_forecaster

    fingerprint = fc.model_dump_json()
    entry = obj.forecaster
    if entry is None or entry.fingerprint != fingerprint:
        entry = obj.forecaster = ForecasterEntry(fingerprint, make_forecaster(fc))
    # The first cycle reads the whole history window; later ones only what is new (plus overlap).
    seconds = fc.history_seconds if entry.last_end is None else min(
        fc.history_seconds, int((now - entry.last_end).total_seconds()) + 3 * fc.step_seconds
    )
    try:
        window = await asyncio.to_thread(src.history, spec, namespace, name, now, seconds, fc.step_seconds)
    except MetricsError as exc:
        if at_zero and entry.last_end is not None and isinstance(exc, NoData):
            # No pods and no activator traffic: the true request rate is zero, not unknown.
            steps = max(1, int((now - entry.last_end).total_seconds() // fc.step_seconds))
            window = MetricWindow(entry.last_end + timedelta(seconds=fc.step_seconds), fc.step_seconds, np.zeros(steps))
        else:
            last = entry.last_forecast
            if last is not None and (now - last.origin).total_seconds() < fc.horizon_seconds:
                return last  # no new samples yet: the last forecast still covers now
            return Forecast(origin=now, points=[], ready=False, reason=f"no history: {exc}", method=fc.method)
    # A first fit (order search) takes seconds: keep it off the event loop.
    result = await asyncio.to_thread(entry.forecaster.update, window, now)
    entry.last_end, entry.last_forecast = window.end, result
    return result


async def version_health(
    src: Any, spec: ModelDeploymentSpec, namespace: str, name: str, status: dict[str, Any],
    stable: dict[str, Owned], canaries: dict[str, Owned], now: datetime,
) -> tuple[VersionHealth, VersionHealth]:
    """Health of both versions, read only while a canary step runs (the rollout step decides on it)."""
    if not measuring_rollout(spec, status):
        return VersionHealth(), VersionHealth()
    canary_ready = sum(e.ready for e in canaries.values())
    if not isinstance(src, PrometheusSource):
        return VersionHealth(), VersionHealth(ready=canary_ready)
    step_started = rollout_status(status).step_started_at or now
    window = int(min(max((now - step_started).total_seconds(), 10), spec.rollout.step_seconds))
    stable_raw, canary_raw = await asyncio.gather(
        asyncio.to_thread(src.version_health, spec, namespace, name, False, window),
        asyncio.to_thread(src.version_health, spec, namespace, name, True, window),
    )
    return (VersionHealth(**stable_raw, ready=sum(e.ready for e in stable.values())),
            VersionHealth(**canary_raw, ready=canary_ready))


async def model_rates(src: Any, spec: ModelDeploymentSpec, namespace: str, name: str) -> dict[str, float] | None:
    """Requests per sub-model, for the hot set (None when the hot set is off or the rates are unknown)."""
    if not hot_set_enabled(spec):
        return None
    try:
        return await asyncio.to_thread(src.model_rates, spec, namespace, name)
    except MetricsError:
        return None


async def observe_inflight(o: Observed, ctx: OperatorState) -> Observed:
    """The panic check's only read: the in-flight gauge (one query, no forecast, no rate windows)."""
    src = await source(ctx, o.spec, o.namespace)
    with telemetry.phase("metrics"):
        snapshot = await asyncio.to_thread(src.snapshot, o.spec, o.namespace, o.name, None, ("inflight",))
    return replace(o, snapshot=snapshot, trace_id=tracing.trace_id())


log = logging.getLogger(__name__)

ACTIVATOR_REFRESH_S = 5.0
"""How often the activator's endpoints are read again (at most; only when a cycle runs)."""


def read_activator(service: tuple[str, str]) -> tuple[list[str], int | None]:
    """The activator Service's Ready pod addresses and their port, from its EndpointSlices. Zero-scaled models'
    Services point at these pods: a Service's cluster IP cannot be the endpoint of another Service, as
    kube-proxy translates an address once. The port is None while the Service has no slice with a port."""
    from kubernetes import client as k8s

    namespace, name = service
    svc = k8s.CoreV1Api().read_namespaced_service(name, namespace)
    first = svc.spec.ports[0]
    slices = k8s.DiscoveryV1Api().list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={name}").items
    addresses: set[str] = set()
    port = first.target_port if isinstance(first.target_port, int) else None
    for sl in slices:
        ports = [p for p in (sl.ports or []) if p.name == first.name] or list(sl.ports or [])
        if not ports or ports[0].port is None:
            continue
        port = ports[0].port
        for ep in sl.endpoints or []:
            if ep.conditions is None or ep.conditions.ready is not False:
                addresses.update(ep.addresses or [])
    return sorted(addresses), port


async def refresh_activator(ctx: OperatorState, monotonic: float) -> None:
    """Read the activator's endpoints again when ``ACTIVATOR_REFRESH_S`` have passed (``--activator-service``)."""
    if ctx.activator_service is None or monotonic - ctx.activator_checked < ACTIVATOR_REFRESH_S:
        return
    ctx.activator_checked = monotonic
    try:
        addresses, port = await asyncio.to_thread(read_activator, ctx.activator_service)
    except Exception as exc:  # the API busy: keep what we had, try again next time
        log.warning(f"could not read the activator's endpoints ({type(exc).__name__}: {exc}); keeping the last ones")
        return
    if port is not None:
        ctx.activator = (addresses, port)


def remember_from_status(obj: ObjectState, status: dict[str, Any]) -> None:
    """After a restart, what we decided last is in the status: it is what we applied."""
    for vs in status.get("variants") or []:
        obj.applied.setdefault(vs["name"], vs.get("desired"))


def base(ctx: OperatorState, obj: ObjectState, spec: ModelDeploymentSpec, namespace: str, name: str, uid: str,
         generation: int | None, status: Any, index: kopf.Index, now: datetime) -> Observed:
    """What needs no metrics: the spec, the owned Deployments, the previous status and the in-memory state."""
    return Observed(
        spec=spec, namespace=namespace, name=name, uid=uid, now=now, generation=generation,
        status=dict(status or {}),
        stable=deployments(index, namespace, name), canaries=deployments(index, namespace, name, canary=True),
        applied=dict(obj.applied), hpa_variant=obj.hpa_variant,
        hot_set=tuple(obj.hot_set) if obj.hot_set is not None else None, ready=obj.ready,
        activator=(tuple(ctx.activator[0]), ctx.activator[1]) if ctx.activator else None,
        activator_slice=obj.activator_slice,
        activator_settle_s=ctx.activator_settle_s,
        pod_env=tuple(tuple(kv) for kv in ctx.pod_env),
    )


async def observe(o: Observed, ctx: OperatorState, obj: ObjectState, pending: int | None = None) -> Observed:
    """Complete a base observation with what Prometheus says (one cycle's reads)."""
    spec, namespace, name, now = o.spec, o.namespace, o.name, o.now
    src = await source(ctx, spec, namespace)
    with telemetry.phase("metrics"):
        snapshot = await asyncio.to_thread(src.snapshot, spec, namespace, name, None)
    if pending:
        snapshot = snapshot.model_copy(
            update={"pending": max(snapshot.pending or 0, pending), "observed_at": snapshot.observed_at or now}
        )
    with telemetry.phase("forecast"):
        at_zero = sum(e.replicas for e in o.stable.values()) == 0
        fc = await forecast(obj, src, spec, namespace, name, now, at_zero)
    stable_h, canary_h = await version_health(src, spec, namespace, name, dict(o.status), dict(o.stable),
                                              dict(o.canaries), now)
    rates = await model_rates(src, spec, namespace, name)
    # Sub-models the servers cannot load, compared with what the status said last (operator/loadfailures.py).
    failures = await read_load_failures(src, spec, namespace, name)
    report = None if failures is None else load_failure_report(failures, o.status.get("subModelLoadFailures"))
    return replace(o, snapshot=snapshot, forecast=fc, stable_health=stable_h, canary_health=canary_h,
                   model_rates=rates, load_failures=report, trace_id=tracing.trace_id())
