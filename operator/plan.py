"""The operator's cycle without I/O: what it saw (``Observed``), what it decided (``Decided``) and every change it
will make (``Plan``). Nothing here talks to the API server, Prometheus or a clock: a plan is a value that unit
tests compare, and ``apply.apply_plan`` is the one place that carries it out.

    observe (observe.py, reads)  ->  decide_cycle (here: scaling.decide + rollout.advance)
      ->  plan_cycle (here)  ->  apply_plan (apply.py, writes, in a fixed order)

See docs/operator.md for the four steps and where to add a signal, an actuation target or a status field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ..api.decision import Decision, Forecast, MetricSnapshot, Observation, ScalerState
from ..api.spec import Actuation, ModelDeploymentSpec
from ..api.status import RolloutStatus
from ..scaling import decide, panic
from ..scaling.hotset import hot_set
from ..scaling.rollout import RolloutPlan, VersionHealth, advance, split_versions
from . import builders
from .status import decision_conditions, forecast_status, iso, merge_patch, set_condition, variant_summary

# --------------------------------------------------------------------------- what a cycle sees

LOAD_CONDITION = "SubModelsLoaded"
"""``loadfailures.CONDITION`` (that module reads Prometheus, so the pure plan does not import it)."""


def canary_key(variant: str) -> str:
    """Key of a canary Deployment's replicas in ``ObjectState.applied``."""
    return f"{variant}@canary"


def floor_key(variant: str) -> str:
    """Key of an HPA floor in ``ObjectState.applied``."""
    return f"{variant}@hpa-floor"


@dataclass(frozen=True)
class Owned:
    """One owned Deployment as the ``owned_deployments`` index sees it."""

    variant: str
    name: str
    replicas: int = 0
    ready: int = 0
    canary: bool = False
    version: str | None = None
    submodels: bool = False
    """It mounts the sub-model ConfigMap (see builders.build_deployment)."""
    rolled_out: bool = True
    """Every replica runs the newest template and is ready."""

    @classmethod
    def from_index(cls, entry: Mapping[str, Any]) -> Owned:
        return cls(**{k: entry[k] for k in cls.__dataclass_fields__ if k in entry})


@dataclass(frozen=True)
class Observed:
    """Everything one cycle reads, gathered before anything is decided (``observe.observe`` builds it)."""

    spec: ModelDeploymentSpec
    namespace: str
    name: str
    uid: str
    now: datetime
    generation: int | None = None
    status: Mapping[str, Any] = field(default_factory=dict)
    """The ModelDeployment's status as the cycle found it (persisted state: scaler, rollout, routing...)."""
    stable: Mapping[str, Owned] = field(default_factory=dict)
    """Stable Deployments by variant."""
    canaries: Mapping[str, Owned] = field(default_factory=dict)
    """Canary Deployments of a rollout by variant."""
    snapshot: MetricSnapshot = field(default_factory=MetricSnapshot)
    forecast: Forecast | None = None
    stable_health: VersionHealth = field(default_factory=VersionHealth)
    canary_health: VersionHealth = field(default_factory=VersionHealth)
    model_rates: Mapping[str, float] | None = None
    """Requests per sub-model (None: hot set off, or no rates this cycle)."""
    applied: Mapping[str, int] = field(default_factory=dict)
    """In memory: what we last sent (``ObjectState.applied``)."""
    hpa_variant: str | None = None
    hot_set: tuple[str, ...] | None = None
    """In memory: the hot set last published."""
    ready: Mapping[str, Any] | None = None
    """In memory: the Ready condition the last reconcile wrote (``ObjectState.ready``)."""
    activator: tuple[tuple[str, ...], int] | None = None
    """(addresses, port) of the activator, when the operator runs with one: its pods' addresses."""
    activator_slice: tuple[tuple[str, ...], int] | None = None
    """In memory: the (addresses, port) the model's activator EndpointSlice was last applied with."""
    activator_settle_s: float = 10.0
    """Seconds a routing change gets to reach every node's kube-proxy (``--activator-settle-seconds``)."""
    pod_env: tuple[tuple[str, str], ...] = ()
    load_failures: Any = None
    """``loadfailures.LoadFailureReport`` of this cycle (None: no sub-models, or the query failed: the status
    keeps what it said last)."""
    trace_id: str | None = None
    """The cycle's trace, quoted in the Scaled Event."""

    @property
    def routing(self) -> str | None:
        return self.status.get("routing")

    @property
    def stable_version(self) -> str | None:
        return (self.status.get("rollout") or {}).get("stableVersion")

    def rollout_status(self) -> RolloutStatus | None:
        return rollout_status(self.status)


def rollout_status(status: Mapping[str, Any]) -> RolloutStatus | None:
    return RolloutStatus.model_validate(status["rollout"]) if status.get("rollout") else None


def measuring_rollout(spec: ModelDeploymentSpec, status: Mapping[str, Any]) -> bool:
    """A rollout is on a step whose outcome depends on both versions' health (observe reads it then)."""
    rs = rollout_status(status)
    running = rs is not None and (rs.canary_version is not None or spec.model.version != rs.stable_version)
    return running and rs.phase == "Progressing"


# --------------------------------------------------------------------------- what a cycle changes


@dataclass(frozen=True)
class Apply:
    """Server-side apply of ``obj``; ``scaler``: under the scaler's field manager (it owns spec.replicas)."""

    obj: dict[str, Any]
    scaler: bool = False
    unless_changed: tuple[str, int] | None = None
    """(applied key, value): skip when ``ObjectState.applied[key]`` no longer holds this value."""

    def describe(self) -> str:
        meta = self.obj["metadata"]
        what = f"apply {self.obj['kind']} {meta['name']}"
        if self.scaler:
            what += f" replicas={self.obj['spec']['replicas']} (scaler)"
        elif self.obj["kind"] == "HorizontalPodAutoscaler":
            what += f" minReplicas={self.obj['spec']['minReplicas']}"
        elif self.obj["kind"] == "Deployment" and "replicas" in self.obj["spec"]:
            what += f" replicas={self.obj['spec']['replicas']}"
        elif self.obj["kind"] == "ConfigMap" and self.obj["metadata"]["name"].endswith("-hotset"):
            what += f" {self.obj['data']}"
        return what + (f" unless {self.unless_changed[0]} changed" if self.unless_changed else "")


@dataclass(frozen=True)
class ApplyAll:
    """Dry-run every object, then apply them: a spec the API server refuses changes nothing."""

    objs: tuple[dict[str, Any], ...]

    def describe(self) -> str:
        return "apply all (dry run first): " + ", ".join(
            f"{o['kind']} {o['metadata']['name']}" + (f" replicas={o['spec']['replicas']}" if o["kind"] == "Deployment"
                                                      and "replicas" in o["spec"] else "") for o in self.objs)


@dataclass(frozen=True)
class Delete:
    kind: str
    namespace: str
    name: str

    def describe(self) -> str:
        return f"delete {self.kind} {self.name}"


@dataclass(frozen=True)
class Remember:
    """``ObjectState.applied[key] = value`` (None: forget it)."""

    key: str
    value: int | None

    def describe(self) -> str:
        return f"remember {self.key}={self.value}" if self.value is not None else f"forget {self.key}"


@dataclass(frozen=True)
class SetHpaVariant:
    variant: str | None

    def describe(self) -> str:
        return f"hpa owns replicas of {self.variant}" if self.variant else "no HPA owns replicas"


@dataclass(frozen=True)
class SetHotSet:
    models: tuple[str, ...]

    def describe(self) -> str:
        return f"remember hot set {list(self.models)}"


@dataclass(frozen=True)
class SetActivatorSlice:
    """``ObjectState.activator_slice = (addresses, port)``: what the model's ``<name>-activator`` slice names."""

    addresses: tuple[str, ...]
    port: int

    def describe(self) -> str:
        return f"remember activator endpoints {list(self.addresses)}:{self.port}"


@dataclass(frozen=True)
class SetReady:
    """``ObjectState.ready = condition``: the Ready condition a reconcile wrote, for the cycles after it."""

    condition: Mapping[str, Any]

    def describe(self) -> str:
        return f"remember condition Ready={self.condition['status']} (generation {self.condition.get('observedGeneration')})"


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the ModelDeployment."""

    type: str  # Normal | Warning
    reason: str
    message: str

    def describe(self) -> str:
        return f"event {self.type} {self.reason}: {self.message}"


@dataclass(frozen=True)
class Log:
    level: str  # debug | info | warning
    message: str

    def describe(self) -> str:
        return f"log {self.level}: {self.message}"


Step = Apply | ApplyAll | Delete | Remember | SetHpaVariant | SetHotSet | SetActivatorSlice | SetReady | Event | Log


@dataclass(frozen=True)
class Metric:
    """One operation on an operator metric (``telemetry.<name>``)."""

    name: str
    labels: tuple[str, ...]
    value: float
    op: str = "set"  # set | inc

    def describe(self) -> str:
        return f"{self.op} {self.name}{{{','.join(self.labels)}}} {self.value:.10g}"


@dataclass(frozen=True)
class Plan:
    """Everything a cycle changes, by section, in the order ``apply_plan`` carries them out.

    ``decided``: a scaling cycle's plan (its sections pass the ``after-decide`` and ``after-actuate``
    failpoints); False for reconcile and for the drift repair that recreates deleted Deployments."""

    owned: tuple[Step, ...] = ()
    """Owned objects from the spec (reconcile, or recreating a deleted Deployment)."""
    repairs: tuple[Step, ...] = ()
    """Replicas changed behind our back, put back."""
    rollout: tuple[Step, ...] = ()
    """Canary Deployments created or removed, stable Deployments promoted."""
    replicas: tuple[Step, ...] = ()
    """Replica patches (scaler field manager) and HPA floors."""
    routing: tuple[Step, ...] = ()
    """The public Service to the activator at zero, back to the pods once one is ready."""
    hot_set: tuple[Step, ...] = ()
    status: Mapping[str, Any] = field(default_factory=dict)
    """The status patch (merge patch: None removes a field)."""
    events: tuple[Step, ...] = ()
    """Events and log lines reported after the status."""
    metrics: tuple[Metric, ...] = ()
    decided: bool = False

    SECTIONS = ("owned", "repairs", "rollout", "replicas", "routing", "hot_set", "events")

    def describe(self) -> str:
        """The plan as text, one line per change (the golden plans in tests/golden/plans)."""
        lines = []
        for section in self.SECTIONS:
            steps = getattr(self, section)
            if steps:
                lines.append(f"{section}:")
                lines += [f"  {s.describe()}" for s in steps]
        if self.status:
            lines.append("status:")
            for k, v in self.status.items():
                if k == "conditions" and v:
                    lines.append("  conditions:")
                    lines += [f"    {c['type']}={c['status']} {c['reason']}: {c['message']}" for c in v]
                else:
                    lines.append(f"  {k}: {_short(v)}")
        if self.metrics:
            lines.append("metrics:")
            lines += [f"  {m.describe()}" for m in self.metrics]
        return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------- owned objects


def plan_owned(o: Observed) -> tuple[Step, ...]:
    """Apply every owned object; new Deployments start at their minimum; variants that left the spec go.

    During a rollout the stable Deployments keep the old version (the canary path changes versions)."""
    spec, name, namespace, uid = o.spec, o.name, o.namespace, o.uid
    objs = builders.desired_objects(spec, name, namespace, uid, o.stable_version, list(o.pod_env))
    if o.routing == "activator" and o.activator is not None:
        # At zero the public Service stays pointed at the activator; a spec change must not flip it.
        objs = [builders.build_service_to_activator(spec, name, namespace, uid) if x["kind"] == "Service"
                and x["metadata"]["name"] == name else x for x in objs]
    steps: list[Step] = []
    created: list[tuple[str, int]] = []
    initial = builders.initial_replicas(spec)
    for obj in objs:
        if obj["kind"] == "Deployment":
            variant = obj["metadata"]["labels"][builders.LABEL_VARIANT]
            if variant not in o.stable:
                # Only a new Deployment gets replicas in its template; afterwards the scaler owns them.
                obj["spec"]["replicas"] = initial[variant]
                created.append((variant, initial[variant]))
                # Known before the Deployment exists: a hand edit seen while we finish creating it is
                # drift to restore (with its Event), not an unknown value to adopt silently.
                steps.append(Remember(variant, initial[variant]))
    steps.append(ApplyAll(tuple(objs)))
    for variant, replicas in created:
        steps.append(Apply(builders.build_replicas(name, namespace, variant, replicas), scaler=True,
                           unless_changed=(variant, replicas)))
    wanted = {v.name for v in spec.variants}
    for variant, entry in o.stable.items():
        if variant not in wanted:
            steps.append(Delete("Deployment", namespace, entry.name))
            steps.append(Log("info", f"deleted Deployment {entry.name}: variant {variant} left the spec"))
    if not spec.model.sub_models and any(e.submodels for e in o.stable.values()):
        steps.append(Delete("ConfigMap", namespace, builders.submodels_name(name)))  # the last sub-model was removed
    if spec.actuation == Actuation.HPA:
        steps.append(SetHpaVariant(spec.primary.name))
    else:
        steps.append(SetHpaVariant(None))
        steps.append(Delete("HorizontalPodAutoscaler", namespace, builders.deployment_name(name, spec.primary.name)))
    return tuple(steps)


def plan_reconcile(o: Observed) -> Plan:
    """The spec changed (or the operator started): apply the owned objects and report ``Ready``."""
    conds = set_condition(
        o.status.get("conditions"), "Ready", True, "Reconciled",
        f"{len(o.spec.variants)} variant Deployment(s) and Service applied", o.now, o.generation,
    )
    status: dict[str, Any] = {"conditions": conds, "observedGeneration": o.generation}
    if o.status.get("phase") in (None, "Error", "Pending"):
        status["phase"] = "Ready"
    ready = next(c for c in conds if c["type"] == "Ready")
    # Each variant's scale-event counters start at 0 here, before the first cycle: a series born at 1 has no
    # earlier sample, and increase()/rate() would never show the first scale-up of a new model.
    zeros = tuple(Metric("SCALE_EVENTS", (o.namespace, o.name, v.name, direction), 0, "inc")
                  for v in o.spec.variants for direction in ("up", "down"))
    zeros += tuple(Metric("PANIC_SCALEUPS", (o.namespace, o.name, v.name), 0, "inc") for v in o.spec.variants)
    return Plan(owned=plan_owned(o), status=status, metrics=zeros, events=(
        SetReady(ready), Log("info", f"reconciled {len(o.spec.variants)} variants (generation {o.generation})")))


def with_ready(conditions: list[dict[str, Any]] | None, ready: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    """The previous conditions, with the Ready condition of the last reconcile when the status the cycle read
    predates it (missing, or of an older generation). The cycle's status patch replaces the whole list:
    without this, a cycle that started while reconcile ran would drop Ready."""
    if ready is None:
        return conditions
    seen = next((c for c in conditions or [] if c.get("type") == "Ready"), None)
    if seen is not None and (seen.get("observedGeneration") or 0) >= (ready.get("observedGeneration") or 0):
        return conditions
    return [c for c in conditions or [] if c.get("type") != "Ready"] + [dict(ready)]


def missing_variants(o: Observed) -> list[str]:
    return [v.name for v in o.spec.variants if v.name not in o.stable]


def plan_recreate(o: Observed) -> Plan:
    """Drift: an owned Deployment was deleted. Recreate it from the spec, then decide next cycle."""
    missing = missing_variants(o)
    return Plan(owned=plan_owned(o), events=(
        Event("Warning", "DriftRepaired", f"recreated Deployment(s) for variant(s) {', '.join(missing)}"),))


# --------------------------------------------------------------------------- decide


@dataclass(frozen=True)
class Decided:
    """The cycle's decision: the scaling decision and the rollout's next step, with what they were made on."""

    decision: Decision
    rollout: RolloutPlan
    observation: Observation
    """Replicas and readiness the decision saw (a Progressing canary counts with its variant)."""
    stable: Mapping[str, Owned]
    """Stable Deployments with hand-edited replicas already put back."""
    restored: tuple[tuple[str, int, int], ...] = ()
    """(variant, theirs, ours) for replicas changed behind our back."""


def restored_replicas(o: Observed) -> tuple[tuple[str, int, int], ...]:
    """Stable variants whose replicas someone else changed: (variant, theirs, ours)."""
    out = []
    for v, e in o.stable.items():
        ours = o.applied.get(v)
        if ours is None or e.replicas == ours or v == o.hpa_variant:
            continue
        out.append((v, e.replicas, ours))
    return tuple(out)


def decide_cycle(o: Observed) -> Decided:
    """``scaling.decide`` and the rollout step, on the observation. Pure."""
    restored = restored_replicas(o)
    stable = dict(o.stable)
    for v, _theirs, ours in restored:
        stable[v] = _replace(stable[v], replicas=ours)
    status = o.rollout_status()
    stable_updated = bool(status and status.canary_version) and all(
        e.version == status.canary_version and e.rolled_out for e in stable.values()
    )
    rollout = advance(o.spec, status, o.stable_health, o.canary_health, o.now, stable_updated=stable_updated)
    counting_canary = rollout.status.phase == "Progressing"  # while promoting the canary is a temporary duplicate
    canaries = o.canaries
    obs = Observation(
        replicas={v: e.replicas + (canaries[v].replicas if counting_canary and v in canaries else 0)
                  for v, e in stable.items()},
        ready={v: e.ready + (canaries[v].ready if counting_canary and v in canaries else 0) for v, e in stable.items()},
    )
    state = ScalerState.model_validate(o.status.get("scaler") or {})
    decision = decide(o.spec, o.snapshot, o.forecast, state, o.now, obs)
    if rollout.reasons:
        decision = decision.model_copy(update={"reasons": decision.reasons + list(rollout.reasons)})
    return Decided(decision, rollout, obs, stable, restored)


def panic_check_due(spec: ModelDeploymentSpec, rollout_active: bool, since_cycle: float, since_check: float) -> bool:
    """Whether the timer runs the fast panic check now (between full cycles). Not during a rollout: its
    canary steps count replicas of both tracks, which only the full cycle handles. Pure."""
    rule = spec.metrics.rules.inflight
    period = rule.panic_period_seconds
    if not rule.enabled or period <= 0 or rollout_active:
        return False
    return since_check >= period - 0.5 and since_cycle >= period - 0.5


def decide_panic(o: Observed) -> tuple[Decision, Observation]:
    """``scaling.panic`` on an observation holding only the in-flight gauge. Pure."""
    obs = Observation(replicas={v: e.replicas for v, e in o.stable.items()},
                      ready={v: e.ready for v, e in o.stable.items()})
    state = ScalerState.model_validate(o.status.get("scaler") or {})
    return panic(o.spec, o.snapshot, state, o.now, obs), obs


def plan_panic(o: Observed, decision: Decision, obs: Observation) -> Plan:
    """The panic check's changes: replicas added (never removed), the scaler state, the last decision and a
    ``Panic`` Event; nothing when it holds (its reason goes to the debug log). Pure."""
    summary = decision.summary()
    if decision.desired == obs.replicas:
        return Plan(events=(Log("debug", f"panic check: {summary}"),), decided=True)
    up = {v: n for v, n in decision.desired.items() if n > obs.replicas.get(v, 0)}
    replicas = _plan_replicas(o, up, obs.replicas, dict(o.applied))
    status: dict[str, Any] = {
        "scaler": merge_patch(o.status.get("scaler"), decision.state.model_dump(by_alias=True, mode="json")),
        "variants": variant_rows(decision, obs),
        "desired": sum(decision.desired.values()),
        "variantSummary": variant_summary(decision.desired),
        "lastDecision": last_decision(o, decision),
        "lastScaleTime": iso(o.now),
        "lastScaleReason": summary[:1024],
        "phase": "Scaling",
    }
    events = (Event("Normal", "Panic", traced(o, summary)), Log("info", f"panic: {summary}"))
    metrics = tuple(Metric("PANIC_SCALEUPS", (o.namespace, o.name, v), 1, "inc") for v in sorted(up))
    return Plan(replicas=replicas, status=status, events=events, metrics=metrics, decided=True)


def _replace(entry: Owned, **changes: Any) -> Owned:
    return replace(entry, **changes)


# --------------------------------------------------------------------------- plan


def plan_cycle(o: Observed, d: Decided) -> Plan:
    """Every change of one scaling cycle, from what it saw and what it decided. Pure."""
    spec, decision = o.spec, d.decision
    applied = dict(o.applied)  # what apply will have sent once each step has run
    repairs = _plan_repairs(o, d)
    rollout_steps, stable_desired, canary_desired = _plan_rollout(o, d, applied)
    stable_now = {v: e.replicas for v, e in d.stable.items()}
    canary_now = {v: e.replicas for v, e in o.canaries.items()}
    route = _plan_routing(o, decision.desired, d.observation)
    if route.hold:  # zero was decided, but the Service does not point at the activator everywhere yet
        stable_desired, canary_desired = stable_now, canary_now
    replicas = _plan_replicas(o, stable_desired, stable_now, applied)
    replicas += _plan_replicas(o, canary_desired, canary_now, applied, canary=True)
    hot, hot_steps = _plan_hot_set(o)

    # ---- status
    obs = d.observation
    summary = decision.summary()
    changed = decision.desired != obs.replicas and not route.hold
    rs = d.rollout.status
    status: dict[str, Any] = {"routing": route.routed}
    if route.since is not None or o.status.get("routingSince") is not None:
        status["routingSince"] = route.since  # null once the change has settled
    if hot is not None:
        status["hotSet"] = hot
    # Merge patches keep keys they do not mention: send cleared fields, and keys a map of the state no longer
    # has, as null so they are removed (an outage's metricsMissingSince must not outlive the outage, nor a
    # variant's start-up clock its start-up: merge_patch).
    status["scaler"] = merge_patch(o.status.get("scaler"), decision.state.model_dump(by_alias=True, mode="json"))
    status["rollout"] = rs.model_dump(by_alias=True, mode="json")
    status["variants"] = variant_rows(decision, obs)
    status["replicas"] = sum(obs.replicas.values())
    status["desired"] = sum(decision.desired.values())
    status["variantSummary"] = variant_summary(decision.desired)
    status["lastDecision"] = last_decision(o, decision)
    status["forecast"] = forecast_status(o.forecast, spec.forecasting.horizon_seconds)
    status["slo"] = decision.slo.to_api() if decision.slo is not None else None
    previous = o.status.get("conditions")
    conds = decision_conditions(with_ready(previous, o.ready), decision, o.forecast, spec.forecasting.enabled,
                                o.now, o.generation)
    active = rs.phase in ("Progressing", "Promoting")
    rollout_reason = {"Progressing": "Progressing", "Promoting": "Promoting", "RolledBack": "RolledBack"}.get(
        rs.phase, "Idle")
    status["conditions"] = set_condition(conds, "Rollout", active, rollout_reason, rs.message or "no rollout",
                                         o.now, o.generation)
    events: list[Step] = []
    report = o.load_failures
    if report is not None:  # sub-models the servers cannot load: status, condition, Events on change
        status["subModelLoadFailures"] = report.entries
        status["conditions"] = set_condition(status["conditions"], LOAD_CONDITION, report.loaded, report.reason,
                                             report.message, o.now, o.generation)
        events += [Event(type_, reason, message[:1000]) for type_, reason, message in report.events]
    status["phase"] = "Scaling" if route.hold else "ScaledToZero" if sum(decision.desired.values()) == 0 else (
        "Scaling" if changed or obs.ready != obs.replicas else "Ready"
    )

    # ---- Events and logs
    if d.rollout.event:
        reason, message = d.rollout.event
        events.append(Event("Warning" if reason == "RolloutRolledBack" else "Normal", reason, message[:1000]))
    if changed:
        status["lastScaleTime"] = iso(o.now)
        status["lastScaleReason"] = summary[:1024]
        events.append(Event("Normal", "ScaledToZero" if decision.scale_to_zero else "Scaled",
                            traced(o, summary + slo_note(decision))))
        events.append(Log("info", f"scaled: {summary}"))
    elif route.hold:
        events.append(Log("info", f"{route.hold} ({summary})"))
    else:
        events.append(Log("debug", f"hold: {summary}"))
    was = next((c for c in previous or [] if c.get("type") == "MetricsAvailable"), None)
    if not decision.metrics_available and (was is None or was.get("status") != "False"):
        events.append(Event("Warning", "MetricsUnavailable", summary[:1000]))
    if decision.metrics_available and was is not None and was.get("status") == "False":
        events.append(Event("Normal", "MetricsRecovered", "metrics are back; scaling resumed"))

    return Plan(repairs=repairs, rollout=rollout_steps, replicas=replicas, routing=route.steps, hot_set=hot_steps,
                status=status, events=tuple(events), metrics=_plan_metrics(o, d), decided=True)


def variant_rows(decision: Decision, obs: Observation) -> list[dict[str, Any]]:
    """``status.variants``: per variant its replicas, what was decided and how many are Ready."""
    return [{"name": v, "replicas": obs.replicas.get(v, 0), "desired": n, "ready": obs.ready.get(v, 0)}
            for v, n in decision.desired.items()]


def last_decision(o: Observed, decision: Decision) -> dict[str, Any]:
    """``status.lastDecision``."""
    return {"time": iso(o.now), "desired": decision.desired, "reasons": decision.reasons}


def traced(o: Observed, message: str) -> str:
    """A scale Event's message, cut to fit, with the cycle's trace id: it leads from ``kubectl describe mdep``
    to the trace (see docs/observability.md)."""
    return message[:960] + (f" (trace {o.trace_id})" if o.trace_id else "")


def slo_note(decision: Decision) -> str:
    """What the SLO policy's reasons leave out and a scale decision rests on: the lead time of every variant
    and how often the forecast's upper bound covered the real rate ("" without the SLO policy)."""
    slo = decision.slo
    if slo is None:
        return ""
    lead = ", ".join(f"{v} {s:.0f} s" for v, s in slo.lead_seconds.items())
    coverage = "" if slo.forecast_coverage is None else f"; forecast coverage {slo.forecast_coverage:.2f}"
    return f" (lead {lead}{coverage})"


def _plan_repairs(o: Observed, d: Decided) -> tuple[Step, ...]:
    steps: list[Step] = []
    for variant, theirs, ours in d.restored:
        steps.append(Apply(builders.build_replicas(o.name, o.namespace, variant, ours), scaler=True))
        name = builders.deployment_name(o.name, variant)
        message = (
            f"spec.replicas of {name} was set to {theirs} outside elastiserve; restored {ours}. "
            f"Change spec.replicas.min/max of ModelDeployment {o.name} instead."
        )
        steps += [Log("warning", message), Event("Warning", "ReplicasRestored", message)]
    return tuple(steps)


def _plan_rollout(o: Observed, d: Decided, applied: dict[str, int]
                  ) -> tuple[tuple[Step, ...], dict[str, int], dict[str, int]]:
    """Create/remove canary Deployments and move the stable ones; with the (stable, canary) replicas."""
    spec, name, namespace, uid = o.spec, o.name, o.namespace, o.uid
    plan, desired, canaries = d.rollout, d.decision.desired, o.canaries
    steps: list[Step] = []
    if not plan.active:
        for variant, entry in canaries.items():
            steps.append(Delete("Deployment", namespace, entry.name))
            steps.append(Remember(canary_key(variant), None))
            applied.pop(canary_key(variant), None)
        if canaries and spec.model.sub_models:
            steps.append(Delete("ConfigMap", namespace, builders.submodels_name(name, canary=True)))
        return tuple(steps), dict(desired), {}
    version = plan.status.canary_version
    stable, canary = {}, {}
    for v in spec.variants:
        entry = canaries.get(v.name)
        ready = entry.ready if entry is not None and entry.version == version else 0
        stable[v.name], canary[v.name] = split_versions(desired[v.name], plan.canary_share, ready)
        if entry is None or entry.version != version:
            if spec.model.sub_models:  # before the pods that mount it
                steps.append(Apply(builders.build_submodels(spec, name, namespace, uid, version, canary=True)))
            obj = builders.build_deployment(spec, name, namespace, uid, v, version=version, canary=True,
                                            inherited_env=list(o.pod_env))
            obj["spec"]["replicas"] = canary[v.name]
            steps.append(Apply(obj))
        if plan.status.phase == "Promoting" and (d.stable.get(v.name) is None or d.stable[v.name].version != version):
            # Rolling update of the stable Deployment to the new version (maxUnavailable 0).
            if spec.model.sub_models:
                steps.append(Apply(builders.build_submodels(spec, name, namespace, uid, version)))
            steps.append(Apply(builders.build_deployment(spec, name, namespace, uid, v, version=version,
                                                         inherited_env=list(o.pod_env))))
            steps.append(Log("info", f"promoting {version}: stable Deployment of {v.name} updated"))
    return tuple(steps), stable, canary


def _plan_replicas(o: Observed, desired: Mapping[str, int], current: Mapping[str, int], applied: dict[str, int],
                   canary: bool = False) -> tuple[Step, ...]:
    """Replicas that differ from what the cluster has or from what we last sent (HPA mode: the HPA floor)."""
    spec, name, namespace = o.spec, o.name, o.namespace
    steps: list[Step] = []
    for variant, replicas in desired.items():
        if canary:
            key = canary_key(variant)
            if current.get(variant) != replicas or applied.get(key) != replicas:
                applied[key] = replicas
                steps.append(Remember(key, replicas))
                steps.append(Apply(builders.build_replicas(name, namespace, variant, replicas, canary=True), scaler=True))
            continue
        if spec.actuation == Actuation.HPA and variant == spec.primary.name:
            key = floor_key(variant)
            if applied.get(key) != replicas:
                steps.append(Apply(builders.build_hpa(spec, name, namespace, o.uid, replicas)))
                steps.append(Remember(key, replicas))
                applied[key] = replicas
            continue
        if current.get(variant) == replicas and applied.get(variant) == replicas:
            continue
        applied[variant] = replicas
        steps.append(Remember(variant, replicas))
        steps.append(Apply(builders.build_replicas(name, namespace, variant, replicas), scaler=True))
    return tuple(steps)


@dataclass(frozen=True)
class Routing:
    """What a cycle does to the public Service's routing (``_plan_routing``)."""

    steps: tuple[Step, ...] = ()
    routed: str = "pods"
    since: str | None = None
    """``status.routingSince``: when the routing last changed, while that change settles."""
    hold: str | None = None
    """Why the replicas stay this cycle though the decision is zero (None: they may go)."""


def _plan_routing(o: Observed, desired: Mapping[str, int], obs: Observation) -> Routing:
    """Point the public Service at the activator for zero, and back at the pods once one is ready.

    kube-proxy on every node learns of a change some time after the API server has it, so no change leaves
    the Service without a live endpoint in between (a request in that gap is refused): going to zero, the
    activator's slice is added before the selector changes to one that matches no pod
    (``builders.ACTIVATOR_SELECTOR``), and the replicas stay until the Service has pointed
    at the activator for ``activator_settle_s`` (the activator forwards to them meanwhile); waking, the
    selector comes back first and the activator's slice stays beside the pods' as long."""
    spec, name, namespace, uid = o.spec, o.name, o.namespace, o.uid
    routing, activator, settle = o.routing or "pods", o.activator, o.activator_settle_s
    since = o.status.get("routingSince")
    try:
        settled = since is None or (o.now - datetime.fromisoformat(since)).total_seconds() >= settle
    except (TypeError, ValueError):  # not a time we wrote: the change counts as settled (and is cleared)
        settled = True
    ready, running, wanted = sum(obs.ready.values()), sum(obs.replicas.values()), sum(desired.values())
    zero_ok = spec.scale_to_zero.enabled and activator is not None
    addresses, port = activator or ((), 0)
    if routing == "activator":
        if (ready > 0 and wanted > 0) or not zero_ok:
            # A replica is ready for a decision that wants replicas (or scale to zero was switched off): the
            # pods take the traffic again; the activator's slice stays until the change has settled.
            return Routing((Apply(builders.build_service(spec, name, namespace, uid)),
                            Event("Normal", "RoutedToPods", "the Service points at the pods again")),
                           "pods", iso(o.now))
        hold = None if settled or running == 0 or wanted > 0 else (
            f"the Service points at the activator since {since}: the replicas go once it has for {settle:g} s")
        # The slice names the activator's pods (a Service's cluster IP cannot be another Service's endpoint:
        # kube-proxy translates once), so it follows them when they change, and once after a restart.
        moved = addresses and port and o.activator_slice != (tuple(addresses), port)
        return Routing(_activator_slice(o, addresses, port) if moved else (), "activator",
                       None if settled else since, hold)
    # routing == "pods"
    # A model with no replica at all that now wants one (a new ModelDeployment, or a forecast's pre-warm before
    # the first cycle pointed its Service anywhere else) has no endpoint until a pod is Ready: the activator
    # holds the requests meanwhile, as at zero.
    from_nothing = wanted > 0 and running == 0 and ready == 0
    if not zero_ok or (wanted > 0 and not from_nothing):
        if since is not None and settled:
            # The pods' own slice has had time to reach every node: the activator's goes.
            return Routing((Delete("EndpointSlice", namespace, f"{name}-activator"),), "pods", None)
        return Routing((), "pods", since)
    if not addresses or not port:
        # The activator has no Ready pod yet (it starts with the operator): nothing to point at, so the
        # replicas stay; the cycles read its endpoints again every few seconds.
        hold = "the activator has no Ready pod yet: the replicas stay until it has" if running else None
        return Routing((), "pods", since, hold)
    why = ("no replica is Ready yet: the Service points at the activator, which holds the requests until one is"
           if from_nothing else "no replicas wanted: the Service points at the activator")
    return Routing(_activator_slice(o, addresses, port) + (
                    Apply(builders.build_service_to_activator(spec, name, namespace, uid)),
                    Event("Normal", "RoutedToActivator", why)),
                   "activator", iso(o.now), f"the Service now points at the activator: the replicas go once it has "
                                            f"for {settle:g} s" if running else None)


def _activator_slice(o: Observed, addresses: Sequence[str], port: int) -> tuple[Step, ...]:
    """Apply the model's ``<name>-activator`` slice naming the activator's pods, and remember what it names."""
    return (Apply(builders.build_activator_slice(o.name, o.namespace, o.uid, list(addresses), port)),
            SetActivatorSlice(tuple(addresses), port))


def _plan_hot_set(o: Observed) -> tuple[list[str] | None, tuple[Step, ...]]:
    """The busiest sub-models, for new replicas to load at start-up, published in ``<name>-hotset``.

    None when there is nothing to publish (no sub-models, hot set off, or no per-model rates this cycle:
    then the ConfigMap keeps its last list). Applied when the list changes, and once after a restart."""
    if not hot_set_enabled(o.spec) or not o.model_rates:
        return None, ()
    hot = hot_set(o.spec, dict(o.model_rates))
    steps: list[Step] = []
    if o.hot_set is None or list(o.hot_set) != hot:
        steps.append(Apply(builders.build_hotset(o.name, o.namespace, o.uid, hot)))
    steps.append(SetHotSet(tuple(hot)))
    return hot, tuple(steps)


def hot_set_enabled(spec: ModelDeploymentSpec) -> bool:
    lazy = spec.model.lazy_loading
    return bool(spec.model.sub_models) and lazy.enabled and lazy.hot_set_size > 0


def _plan_metrics(o: Observed, d: Decided) -> tuple[Metric, ...]:
    labels = (o.namespace, o.name)
    decision, obs, forecast = d.decision, d.observation, o.forecast
    out = [Metric("PROMETHEUS_ERRORS", labels + (signal,), 1, "inc") for signal in o.snapshot.errors]
    out += [
        Metric("DECISIONS", labels, 1, "inc"),
        Metric("METRICS_AVAILABLE", labels, 1 if decision.metrics_available else 0),
        Metric("LAST_DECISION", labels, o.now.timestamp()),
        Metric("SCALED_TO_ZERO", labels, 1 if sum(decision.desired.values()) == 0 else 0),
    ]
    if o.snapshot.qps is not None:
        out.append(Metric("OBSERVED_QPS", labels, o.snapshot.qps))
    bounds = {v.name: o.spec.bounds(v).max for v in o.spec.variants}
    for v, n in decision.desired.items():
        before = obs.replicas.get(v, 0)
        out += [
            Metric("DESIRED", labels + (v,), n),
            Metric("REPLICAS", labels + (v,), before),
            Metric("READY", labels + (v,), obs.ready.get(v, 0)),
            Metric("MAX_REPLICAS", labels + (v,), bounds[v]),
        ]
        if n != before:
            out.append(Metric("SCALE_EVENTS", labels + (v, "up" if n > before else "down"), 1, "inc"))
    slo = decision.slo
    if slo is not None:
        out += [Metric("SLO_LEAD_SECONDS", labels + (v,), s) for v, s in slo.lead_seconds.items()]
        out += [Metric("SLO_QUANTILE", labels, slo.quantile), Metric("SLO_HEADROOM", labels, slo.headroom)]
        if slo.forecast_coverage is not None:
            out.append(Metric("FORECAST_COVERAGE", labels, slo.forecast_coverage))
    if forecast is not None and forecast.ready:
        out += [Metric("FORECAST_QPS", labels + ("mean",), forecast.peak_mean()),
                Metric("FORECAST_QPS", labels + ("upper",), forecast.peak_upper())]
        if forecast.error is not None:
            out.append(Metric("FORECAST_ERROR", labels, forecast.error))
    return tuple(out)
