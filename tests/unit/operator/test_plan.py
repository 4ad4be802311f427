"""The cycle's plan without a cluster: what one cycle changes, from what it saw and what it decided.

Each test builds an ``Observed`` by hand (what observe would have read), runs ``decide_cycle`` and
``plan_cycle`` and checks the changes. The golden plans under tests/golden/plans read like a changelog of
one cycle (``pytest --update-golden`` rewrites them; review the diff).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from elastiserve.api import MetricSnapshot, parse_spec
from elastiserve.operator.plan import (
    Apply, ApplyAll, Delete, Event, Log, Observed, Owned, Remember, SetActivatorSlice, SetHotSet, SetHpaVariant, SetReady, decide_cycle,
    missing_variants, plan_cycle, plan_reconcile, plan_recreate,
)
from elastiserve.operator.builders import ACTIVATOR_SELECTOR
from elastiserve.operator.status import merge_patch
from elastiserve.scaling.rollout import VersionHealth

T0 = datetime(2026, 3, 2, 12, tzinfo=timezone.utc)
ACTIVATOR = (("10.244.1.7",), 8080)
"""The activator's Ready pod and its port (a Service's cluster IP cannot be another Service's endpoint)."""


def make_spec(**extra):
    raw = {
        "model": {"name": "m", "uri": "file:///m.onnx", "version": "v1"},
        "template": {"image": "img:1"},
        "variants": [{"name": "fp32", "capacityQps": 10}],
        "replicas": {"min": 1, "max": 10},
    }
    raw.update(extra)
    return parse_spec(raw)


def healthy(now=T0, **values):
    return MetricSnapshot(**({"qps": 15.0, "cpu": 50.0, "latency": 40.0} | values), observed_at=now)


def observed(spec=None, replicas=2, ready=None, **kw) -> Observed:
    spec = spec or make_spec()
    stable = kw.pop("stable", None)
    stable = stable if stable is not None else {
        v.name: Owned(v.name, f"m-{v.name}", replicas=replicas, ready=replicas if ready is None else ready)
        for v in spec.variants}
    kw.setdefault("applied", {v: e.replicas for v, e in stable.items()})
    kw.setdefault("snapshot", healthy())
    return Observed(spec=spec, namespace="ns", name="m", uid="u1", now=T0, generation=3, stable=stable, **kw)


def cycle(o: Observed):
    return plan_cycle(o, decide_cycle(o))


def kinds(steps):
    """Steps as short tuples: (verb, kind, name[, replicas]) for API changes, (event, reason) for Events."""
    out = []
    for s in steps:
        if isinstance(s, Apply):
            obj = s.obj
            extra = (obj["spec"]["replicas"],) if s.scaler else ()
            out.append(("apply", obj["kind"], obj["metadata"]["name"]) + extra)
        elif isinstance(s, Delete):
            out.append(("delete", s.kind, s.name))
        elif isinstance(s, Event):
            out.append(("event", s.reason))
    return out


def events(plan):
    return [s.reason for section in Plan_sections(plan) for s in section if isinstance(s, Event)]


def Plan_sections(plan):  # noqa: N802
    return [getattr(plan, name) for name in plan.SECTIONS]


# --------------------------------------------------------------------------- scaling and drift


def test_steady_state_changes_nothing_but_status():
    plan = cycle(observed())
    assert plan.repairs == plan.rollout == plan.replicas == plan.routing == plan.hot_set == ()
    assert plan.status["phase"] == "Ready" and plan.status["desired"] == 2 and plan.status["routing"] == "pods"
    assert events(plan) == [] and Log("debug", "hold: " + plan.status["lastDecision"]["reasons"][0]) in plan.events


def test_scale_up_patches_replicas_under_the_scaler_and_says_so(golden):
    plan = cycle(observed(snapshot=healthy(qps=55.0)))
    assert kinds(plan.replicas) == [("apply", "Deployment", "m-fp32", 6)]
    assert plan.replicas[1].scaler and plan.replicas[0] == Remember("fp32", 6)  # remembered before sent
    assert events(plan) == ["Scaled"]
    assert plan.status["lastScaleTime"] == "2026-03-02T12:00:00Z" and plan.status["phase"] == "Scaling"
    golden("plans/scale-up.txt", plan.describe())


def test_replicas_we_did_not_send_are_sent_once_under_the_scaler():
    """Holding at 2, but nothing remembered (a new operator before any status): send 2 once to own the field;
    with 2 remembered nothing is sent."""
    o = observed(applied={})
    plan = cycle(o)
    assert plan.status["desired"] == 2 and kinds(plan.replicas) == [("apply", "Deployment", "m-fp32", 2)]
    assert kinds(cycle(replace(o, applied={"fp32": 2})).replicas) == []


def test_hand_edited_replicas_are_restored_before_deciding(golden):
    """Drift: someone set replicas to 9; we applied 2. Put 2 back, warn, and decide on 2 (not 9)."""
    o = observed(stable={"fp32": Owned("fp32", "m-fp32", replicas=9, ready=9)}, applied={"fp32": 2})
    d = decide_cycle(o)
    assert d.restored == (("fp32", 9, 2),) and d.observation.replicas == {"fp32": 2}
    plan = plan_cycle(o, d)
    assert kinds(plan.repairs) == [("apply", "Deployment", "m-fp32", 2), ("event", "ReplicasRestored")]
    assert "was set to 9 outside elastiserve; restored 2" in plan.repairs[-1].message
    golden("plans/drift-replicas.txt", plan.describe())


def test_hpa_owned_replicas_are_not_restored_and_the_floor_moves_instead():
    spec = make_spec(actuation="HPA")
    o = observed(spec, stable={"fp32": Owned("fp32", "m-fp32", replicas=7, ready=7)}, applied={"fp32": 2},
                 hpa_variant="fp32", snapshot=healthy(qps=55.0))
    plan = cycle(o)
    assert plan.repairs == ()
    assert kinds(plan.replicas) == [("apply", "HorizontalPodAutoscaler", "m-fp32")]
    floor = plan.replicas[0].obj["spec"]["minReplicas"]
    assert Remember("fp32@hpa-floor", floor) in plan.replicas
    again = cycle(replace(o, applied={"fp32": 2, "fp32@hpa-floor": floor}))
    assert again.replicas == ()  # the same floor is not applied twice


def test_a_deleted_deployment_is_recreated_at_its_minimum(golden):
    o = observed(stable={})
    assert missing_variants(o) == ["fp32"]
    plan = plan_recreate(o)
    assert plan.owned[0] == Remember("fp32", 1)
    apply_all = next(s for s in plan.owned if isinstance(s, ApplyAll))
    deployment = next(x for x in apply_all.objs if x["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # the scaler takes the replicas over, unless a cycle decided otherwise in between
    assert Apply(deployment | {}, scaler=True) not in plan.owned
    assert any(isinstance(s, Apply) and s.scaler and s.unless_changed == ("fp32", 1) for s in plan.owned)
    assert events(plan) == ["DriftRepaired"] and not plan.decided and plan.status == {}
    golden("plans/drift-deleted.txt", plan.describe())


def test_reconcile_prunes_a_variant_that_left_the_spec_and_the_hpa():
    spec = make_spec()
    stable = {"fp32": Owned("fp32", "m-fp32", 2, 2), "int8": Owned("int8", "m-int8", 1, 1, submodels=True)}
    plan = plan_reconcile(observed(spec, stable=stable))
    assert ("delete", "Deployment", "m-int8") in kinds(plan.owned)
    assert ("delete", "ConfigMap", "m-submodels") in kinds(plan.owned)  # no sub-model left
    assert ("delete", "HorizontalPodAutoscaler", "m-fp32") in kinds(plan.owned)
    assert SetHpaVariant(None) in plan.owned and not any(isinstance(s, Remember) for s in plan.owned)
    assert plan.status["phase"] == "Ready" and plan.status["observedGeneration"] == 3
    hpa = plan_reconcile(observed(make_spec(actuation="HPA")))
    assert SetHpaVariant("fp32") in hpa.owned and not any(isinstance(s, Delete) for s in hpa.owned)


def test_a_cycle_that_read_the_status_before_reconcile_wrote_it_keeps_ready():
    """Reconcile and the first cycle start together on a new object; the cycle's status predates Ready.
    Its merge patch replaces the whole condition list, so it must carry the Ready reconcile wrote."""
    reconciled = plan_reconcile(observed())
    remembered = next(s for s in reconciled.events if isinstance(s, SetReady)).condition
    assert remembered["type"] == "Ready" and remembered["status"] == "True" and remembered["observedGeneration"] == 3
    conds = {c["type"]: c for c in cycle(replace(observed(), ready=remembered)).status["conditions"]}
    assert conds["Ready"] == remembered and conds["MetricsAvailable"]["status"] == "True"
    # a status that already has a Ready of this generation (or newer) is left as it is
    newer = dict(remembered, observedGeneration=4, message="from the status")
    stale = replace(observed(status={"conditions": [newer]}), ready=remembered)
    conds = {c["type"]: c for c in cycle(stale).status["conditions"]}
    assert conds["Ready"]["message"] == "from the status"
    # and without a reconcile in memory (a fresh operator), the status is the truth
    assert "Ready" not in {c["type"] for c in cycle(observed()).status["conditions"]}


# --------------------------------------------------------------------------- metrics outage


def test_an_outage_holds_warns_once_and_recovers():
    start = observed(snapshot=MetricSnapshot(errors={"prometheus": "connection refused"}))
    first = cycle(start)
    conds = {c["type"]: c for c in first.status["conditions"]}
    assert conds["MetricsAvailable"]["status"] == "False" and conds["ScalingActive"]["reason"] == "Holding"
    assert first.status["desired"] == 2 and first.replicas == ()  # holds, never scales down
    assert first.status["scaler"]["metricsMissingSince"] == "2026-03-02T12:00:00Z"
    assert events(first) == ["MetricsUnavailable"]
    assert any(m.name == "PROMETHEUS_ERRORS" and m.labels[-1] == "prometheus" for m in first.metrics)

    # a minute later, still down: no second warning; the outage clock keeps its start
    later = T0 + timedelta(seconds=60)
    second = cycle(replace(start, now=later, status=dict(first.status)))
    assert events(second) == []
    assert second.status["scaler"]["metricsMissingSince"] == "2026-03-02T12:00:00Z"
    assert {c["type"]: c for c in second.status["conditions"]}["MetricsAvailable"]["lastTransitionTime"] == \
        "2026-03-02T12:00:00Z"

    # back: MetricsRecovered, the outage's start is cleared (sent as null so the merge patch removes it)
    back = cycle(replace(start, now=later, status=dict(second.status), snapshot=healthy(later)))
    assert events(back) == ["MetricsRecovered"]
    assert back.status["scaler"]["metricsMissingSince"] is None
    assert {c["type"]: c for c in back.status["conditions"]}["MetricsAvailable"]["status"] == "True"


# --------------------------------------------------------------------------- routing


def zero_spec():
    return make_spec(replicas={"min": 0, "max": 10}, scaleToZero={"enabled": True, "idleSeconds": 30})


def test_at_zero_the_service_points_at_the_activator(golden):
    o = observed(zero_spec(), replicas=0, activator=ACTIVATOR, snapshot=healthy(qps=0.0, cpu=0.0),
                 status={"scaler": {"lastActiveTime": "2026-03-02T11:00:00Z"}})
    plan = cycle(o)
    assert plan.status["desired"] == 0
    # the activator's slice first: until kube-proxy has seen the selector change, the Service has both
    assert kinds(plan.routing) == [("apply", "EndpointSlice", "m-activator"), ("apply", "Service", "m"),
                                   ("event", "RoutedToActivator")]
    assert plan.status["routing"] == "activator" and plan.status["phase"] == "ScaledToZero"
    assert plan.status["routingSince"] == "2026-03-02T12:00:00Z"
    slice_ = plan.routing[0].obj
    assert slice_["endpoints"][0]["addresses"] == ["10.244.1.7"] and slice_["ports"][0]["port"] == 8080
    assert plan.routing[1] == SetActivatorSlice(("10.244.1.7",), 8080)
    assert plan.routing[2].obj["spec"]["selector"] == ACTIVATOR_SELECTOR  # matches no pod
    golden("plans/route-to-activator.txt", plan.describe())


def idle_at(t, status):
    return {"scaler": {"lastActiveTime": "2026-03-02T11:00:00Z"}} | status, healthy(t, qps=0.0, cpu=0.0)


def test_going_to_zero_the_replicas_stay_until_the_service_has_pointed_at_the_activator_for_a_while():
    """kube-proxy applies a routing change some time after the API server has it: the last replica serves
    (through the activator) until the change has had ``activator_settle_s`` to arrive; only then is it removed.
    A CI run refused a request sent just after the operator had said it routed to the activator."""
    status, snap = idle_at(T0, {})
    o = observed(zero_spec(), replicas=1, ready=1, activator=ACTIVATOR, activator_settle_s=10, status=status,
                 snapshot=snap)
    first = cycle(o)
    assert kinds(first.routing)[-1] == ("event", "RoutedToActivator") and first.replicas == ()
    assert first.status["phase"] == "Scaling" and first.status["desired"] == 0
    assert "ScaledToZero" not in events(first) and first.status["routingSince"] == "2026-03-02T12:00:00Z"
    assert any("replicas go once it has for 10 s" in s.message for s in first.events if isinstance(s, Log))
    status = dict(first.status)
    for after, held in ((5, True), (10, False)):
        later = T0 + timedelta(seconds=after)
        plan = cycle(replace(o, now=later, snapshot=healthy(later, qps=0.0, cpu=0.0), status=status,
                             activator_slice=ACTIVATOR))
        assert plan.routing == () and plan.status["routing"] == "activator"
        # kept while the change settles, cleared once it has
        assert plan.status["routingSince"] == ("2026-03-02T12:00:00Z" if held else None)
        if held:
            assert plan.replicas == () and plan.status["phase"] == "Scaling"
        else:
            assert kinds(plan.replicas) == [("apply", "Deployment", "m-fp32", 0)]
            assert plan.status["phase"] == "ScaledToZero" and "ScaledToZero" in events(plan)
            assert "no requests for" in plan.status["lastScaleReason"]


def test_a_model_waking_from_nothing_routes_through_the_activator_until_a_replica_is_ready():
    """A new ModelDeployment whose first decision wants a replica (here a request seen while at zero) had its
    Service select pods that were not Ready yet: requests in those seconds were refused (a local demo run
    lost 16). The activator holds them instead; the replica is started in the same cycle, not held back."""
    o = observed(zero_spec(), replicas=0, activator=ACTIVATOR, activator_settle_s=10,
                 snapshot=healthy(qps=3.0, cpu=10.0), status={"scaler": {"scaledToZero": True}})
    plan = cycle(o)
    assert plan.status["desired"] >= 1 and kinds(plan.replicas)[0][:2] == ("apply", "Deployment")
    assert kinds(plan.routing) == [("apply", "EndpointSlice", "m-activator"), ("apply", "Service", "m"),
                                   ("event", "RoutedToActivator")]
    assert plan.routing[2].obj["spec"]["selector"] == ACTIVATOR_SELECTOR
    assert "no replica is Ready yet" in plan.routing[3].message
    assert plan.status["routing"] == "activator" and plan.status["phase"] != "ScaledToZero"
    # 5 s later the pod is starting: the Service stays on the activator, and nothing holds the replicas back
    later = T0 + timedelta(seconds=5)
    def then(ready: int):
        return replace(observed(zero_spec(), replicas=1, ready=ready, activator=ACTIVATOR, activator_settle_s=10,
                                activator_slice=ACTIVATOR, status=dict(plan.status),
                                snapshot=healthy(later, qps=3.0, cpu=10.0)), now=later)

    starting = cycle(then(ready=0))
    assert starting.routing == () and starting.status["routing"] == "activator"
    assert not any("replicas go once" in s.message for s in starting.events if isinstance(s, Log))
    # Ready: back to the pods
    ready = cycle(then(ready=1))
    assert kinds(ready.routing) == [("apply", "Service", "m"), ("event", "RoutedToPods")]


def test_with_no_ready_activator_pod_the_last_replicas_stay():
    status, snap = idle_at(T0, {})
    o = observed(zero_spec(), replicas=1, ready=1, activator=((), 8080), status=status, snapshot=snap)
    plan = cycle(o)
    assert plan.replicas == () and plan.routing == () and plan.status["routing"] == "pods"
    assert plan.status["phase"] == "Scaling"
    assert any("no Ready pod" in s.message for s in plan.events if isinstance(s, Log))
    # without an activator at all (none configured) scale to zero goes on: nothing could hold the requests
    bare = cycle(replace(o, activator=None))
    assert kinds(bare.replicas) == [("apply", "Deployment", "m-fp32", 0)] and bare.status["phase"] == "ScaledToZero"


def test_without_an_activator_routing_stays_on_the_pods():
    o = observed(zero_spec(), replicas=0, snapshot=healthy(qps=0.0, cpu=0.0),
                 status={"scaler": {"lastActiveTime": "2026-03-02T11:00:00Z"}})
    plan = cycle(o)
    assert plan.routing == () and plan.status["routing"] == "pods"


def test_once_a_replica_is_ready_the_service_points_at_the_pods_again():
    """The selector comes back first; the activator's slice stays beside the pods' until the change has had
    ``activator_settle_s`` to reach kube-proxy, then goes."""
    o = observed(zero_spec(), replicas=1, ready=1, activator=ACTIVATOR, activator_slice=ACTIVATOR,
                 activator_settle_s=10, status={"routing": "activator", "routingSince": "2026-03-02T11:00:00Z"})
    plan = cycle(o)
    assert kinds(plan.routing) == [("apply", "Service", "m"), ("event", "RoutedToPods")]
    assert plan.routing[0].obj["spec"]["selector"]
    assert plan.status["routing"] == "pods" and plan.status["routingSince"] == "2026-03-02T12:00:00Z"
    status = dict(plan.status)
    for after, steps in ((5, []), (10, [("delete", "EndpointSlice", "m-activator")])):
        later = T0 + timedelta(seconds=after)
        nxt = cycle(replace(o, now=later, snapshot=healthy(later), status=status))
        assert kinds(nxt.routing) == steps and nxt.status["routing"] == "pods"
        assert nxt.status["routingSince"] == (None if steps else "2026-03-02T12:00:00Z")
    # settled and cleared: nothing more is sent, and the status no longer mentions it
    done = cycle(replace(o, now=T0 + timedelta(seconds=15), status={"routing": "pods"}))
    assert done.routing == () and "routingSince" not in done.status
    # a routingSince that is not a time (hand-edited status) counts as settled and is cleared, not a crash
    odd = cycle(replace(o, now=T0, status={"routing": "pods", "routingSince": "yesterday"}))
    assert kinds(odd.routing) == [("delete", "EndpointSlice", "m-activator")] and odd.status["routingSince"] is None
    # still waking up (replica not ready): keep routing through the activator
    waking = cycle(replace(o, stable={"fp32": Owned("fp32", "m-fp32", 1, 0)}))
    assert waking.routing == () and waking.status["routing"] == "activator"


def test_the_activator_slice_follows_the_activators_pods():
    """At zero the slice names the activator's pods; when they change (a restart, a new replica), or after the
    operator restarted (nothing remembered), the slice is applied again; otherwise nothing is sent."""
    o = observed(zero_spec(), replicas=0, activator=ACTIVATOR, activator_slice=ACTIVATOR, status={"routing": "activator"})
    assert cycle(o).routing == ()  # settled (no routingSince): nothing to send
    moved = (("10.244.1.8", "10.244.1.9"), 8080)
    for remembered in (ACTIVATOR, None):
        plan = cycle(replace(o, activator=moved, activator_slice=remembered))
        assert kinds(plan.routing) == [("apply", "EndpointSlice", "m-activator")] and plan.status["routing"] == "activator"
        assert [a for e in plan.routing[0].obj["endpoints"] for a in e["addresses"]] == ["10.244.1.8", "10.244.1.9"]
        assert plan.routing[1] == SetActivatorSlice(("10.244.1.8", "10.244.1.9"), 8080)
    # no Ready activator pod known yet: nothing to point at, the Service is left as it is
    assert cycle(replace(o, activator=((), 8080), activator_slice=None)).routing == ()
    new = observed(zero_spec(), replicas=0, snapshot=healthy(qps=0.0, cpu=0.0), activator=((), 8080),
                   status={"scaler": {"lastActiveTime": "2026-03-02T11:00:00Z"}})
    assert cycle(new).routing == () and cycle(new).status["routing"] == "pods"


def test_a_spec_change_at_zero_keeps_the_service_on_the_activator():
    o = observed(zero_spec(), replicas=0, activator=ACTIVATOR, status={"routing": "activator"})
    services = [x for x in next(s for s in plan_reconcile(o).owned if isinstance(s, ApplyAll)).objs
                if x["kind"] == "Service" and x["metadata"]["name"] == "m"]
    assert services and services[0]["spec"]["selector"] == ACTIVATOR_SELECTOR


# --------------------------------------------------------------------------- rollout


def rollout_status(phase="Progressing", step=0, started=T0 - timedelta(seconds=30)):
    return {"rollout": {"stableVersion": "v1", "canaryVersion": "v2", "phase": phase, "step": step,
                        "stepStartedAt": started.isoformat(), "startedAt": started.isoformat()}}


def busy(**values):
    return healthy(qps=25.0, latency=100.0, **values)  # 4 replicas of 10 qps at 62%, latency in band: hold


def v2_spec(**extra):
    return make_spec(model={"name": "m", "uri": "file:///m.onnx", "version": "v2"},
                     rollout={"steps": [25, 100], "stepSeconds": 60, "minRequests": 10}, **extra)


def test_a_new_version_starts_a_canary_with_its_share(golden):
    stable = {"fp32": Owned("fp32", "m-fp32", 4, 4, version="v1")}
    o = observed(v2_spec(), stable=stable, status={"rollout": {"stableVersion": "v1"}}, snapshot=busy())
    d = decide_cycle(o)
    assert d.rollout.status.phase == "Progressing" and d.rollout.canary_share == 0.25
    plan = plan_cycle(o, d)
    canary = next(s.obj for s in plan.rollout if isinstance(s, Apply) and s.obj["kind"] == "Deployment")
    assert canary["metadata"]["name"] == "m-fp32-canary" and canary["spec"]["replicas"] == 1
    # capacity is never lost: no canary replica is ready yet, so the stable track keeps all 4
    assert kinds(plan.replicas) == [("apply", "Deployment", "m-fp32-canary", 1)]
    assert events(plan) == ["RolloutStarted"]
    assert plan.status["rollout"]["canaryVersion"] == "v2"
    assert {c["type"]: c for c in plan.status["conditions"]}["Rollout"]["status"] == "True"
    golden("plans/rollout-start.txt", plan.describe())


def test_the_canary_split_follows_ready_canary_replicas():
    """On step 1 (25%) of 4 replicas with the canary ready: stable 3, canary 1; the canary counts toward the
    variant while Progressing."""
    stable = {"fp32": Owned("fp32", "m-fp32", 4, 4, version="v1")}
    canaries = {"fp32": Owned("fp32", "m-fp32-canary", 1, 1, canary=True, version="v2")}
    o = observed(v2_spec(), stable=stable, canaries=canaries, status=rollout_status(),
                 applied={"fp32": 4, "fp32@canary": 1}, canary_health=VersionHealth(requests=5, ready=1),
                 snapshot=busy())
    d = decide_cycle(o)
    assert d.observation.replicas == {"fp32": 5}
    plan = plan_cycle(o, d)
    assert plan.rollout == ()  # the canary Deployment exists at v2
    want = d.decision.desired["fp32"]
    stable_n = max(1, want - max(1, round(want * 0.25)))
    assert kinds(plan.replicas) == ([("apply", "Deployment", "m-fp32", stable_n)] if stable_n != 4 else [])


def test_a_failing_canary_is_rolled_back_and_removed():
    stable = {"fp32": Owned("fp32", "m-fp32", 4, 4, version="v1")}
    canaries = {"fp32": Owned("fp32", "m-fp32-canary", 1, 1, canary=True, version="v2")}
    o = observed(v2_spec(), stable=stable, canaries=canaries, status=rollout_status(),
                 applied={"fp32": 3, "fp32@canary": 1},
                 stable_health=VersionHealth(error_rate=0.0, ready=4),
                 canary_health=VersionHealth(requests=50, error_rate=20.0, ready=1))
    plan = cycle(o)
    assert kinds(plan.rollout) == [("delete", "Deployment", "m-fp32-canary")]
    assert Remember("fp32@canary", None) in plan.rollout
    assert [(e.type, e.reason) for e in plan.events if isinstance(e, Event) and e.reason.startswith("Rollout")] == [
        ("Warning", "RolloutRolledBack")]
    assert plan.status["rollout"]["phase"] == "RolledBack" and plan.status["rollout"]["failedVersions"] == ["v2"]


def test_promoting_updates_the_stable_deployments_then_finishes():
    stable = {"fp32": Owned("fp32", "m-fp32", 4, 4, version="v1")}
    canaries = {"fp32": Owned("fp32", "m-fp32-canary", 4, 4, canary=True, version="v2")}
    o = observed(v2_spec(), stable=stable, canaries=canaries, status=rollout_status("Promoting", step=1),
                 applied={"fp32": 4, "fp32@canary": 4}, snapshot=busy())
    d = decide_cycle(o)
    assert d.observation.replicas == {"fp32": 4}  # while promoting the canary is a temporary duplicate
    plan = plan_cycle(o, d)
    updated = [s.obj for s in plan.rollout if isinstance(s, Apply)]
    assert [x["metadata"]["name"] for x in updated] == ["m-fp32"]
    assert updated[0]["spec"]["template"]["metadata"]["labels"]["elastiserve.dev/version"] == "v2"
    # the stable Deployments run v2 and are rolled out: idle again, the canary goes
    done = replace(o, stable={"fp32": Owned("fp32", "m-fp32", 4, 4, version="v2", rolled_out=True)})
    plan = cycle(done)
    assert kinds(plan.rollout) == [("delete", "Deployment", "m-fp32-canary")]
    assert events(plan) == ["RolloutSucceeded"] and plan.status["rollout"]["stableVersion"] == "v2"


# --------------------------------------------------------------------------- hot set


def hot_spec():
    return make_spec(model={"name": "m", "uri": "file:///m.onnx", "version": "v1",
                            "subModels": [{"name": "a", "uri": "file:///a.onnx"}, {"name": "b", "uri": "file:///b.onnx"}],
                            "lazyLoading": {"enabled": True, "memoryBudget": "1Gi", "hotSetSize": 1}})


@pytest.mark.parametrize("published,rates,want_apply,want_status", [
    (None, {"a": 1.0, "b": 3.0}, True, ["b"]),
    (("b",), {"a": 1.0, "b": 3.0}, False, ["b"]),
    (("b",), {"a": 5.0, "b": 3.0}, True, ["a"]),
    (("b",), None, False, None),
], ids=["first-after-restart", "unchanged", "ranking-changed", "no-rates-keeps-last"])
def test_hot_set(published, rates, want_apply, want_status):
    plan = cycle(observed(hot_spec(), hot_set=published, model_rates=rates))
    applied = [s.obj for s in plan.hot_set if isinstance(s, Apply)]
    assert bool(applied) == want_apply
    if applied:
        assert applied[0]["metadata"]["name"] == "m-hotset"
    assert plan.status.get("hotSet") == want_status
    if want_status is not None:
        assert SetHotSet(tuple(want_status)) in plan.hot_set


# --------------------------------------------------------------------------- the plan is a value


def test_planning_twice_gives_the_same_plan_and_changes_no_input():
    o = observed(snapshot=healthy(qps=55.0), stable={"fp32": Owned("fp32", "m-fp32", 9, 9)}, applied={"fp32": 2})
    before = repr(o)
    assert cycle(o) == cycle(o)
    assert repr(o) == before


def test_the_scaled_event_names_the_trace():
    plan = cycle(observed(snapshot=healthy(qps=55.0), trace_id="4bf92f3577b34da6a3ce929d0e0e4736"))
    scaled = next(s for s in plan.events if isinstance(s, Event) and s.reason == "Scaled")
    assert scaled.message.endswith("(trace 4bf92f3577b34da6a3ce929d0e0e4736)")


# --------------------------------------------------------------------------- the SLO policy's figures


def test_slo_figures_are_exported_and_explain_the_scale_event():
    """Per-variant lead time, quantile, headroom and forecast coverage: gauges every cycle, and the lead
    times and coverage (which the reasons leave out) in the Scaled Event."""
    spec = make_spec(slo={"enabled": True}, variants=[
        {"name": "fp32", "capacityQps": 10},
        {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 20, "replicas": {"min": 0, "max": 5}}])
    previous = {"scaler": {"slo": {"forecastCoverage": 0.875, "forecastChecked": 40}}}
    o = observed(spec, snapshot=healthy(qps=55.0), status=previous)
    d = decide_cycle(o)
    slo = d.decision.slo
    assert slo is not None and slo.forecast_coverage == 0.875
    plan = plan_cycle(o, d)
    got = {(m.name, m.labels[2:]): m.value for m in plan.metrics}
    assert got[("SLO_QUANTILE", ())] == slo.quantile and 0.5 < slo.quantile < 1
    assert got[("SLO_HEADROOM", ())] == slo.headroom
    assert got[("FORECAST_COVERAGE", ())] == 0.875
    assert {v: got[("SLO_LEAD_SECONDS", (v,))] for v in ("fp32", "int8")} == slo.lead_seconds
    scaled = next(s for s in plan.events if isinstance(s, Event) and s.reason == "Scaled")
    lead = ", ".join(f"{v} {s:.0f} s" for v, s in slo.lead_seconds.items())
    assert scaled.message.endswith(f"(lead {lead}; forecast coverage 0.88)")
    # without the SLO policy: neither the gauges nor the note
    plain = cycle(observed(snapshot=healthy(qps=55.0)))
    assert not any(m.name.startswith("SLO_") or m.name == "FORECAST_COVERAGE" for m in plain.metrics)
    assert "(lead" not in next(s for s in plain.events if isinstance(s, Event)).message


def merge(stored, patch):
    """RFC 7386, as the API server applies the status patch kopf sends (application/merge-patch+json)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(stored) if isinstance(stored, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def test_a_start_up_clock_that_stopped_is_removed_from_the_stored_status():
    """A variant's start-up clock (status.scaler.slo.startingSince) stops when its pods are Ready. A merge
    patch keeps the keys it does not mention, so the stopped clock must be sent as null: otherwise the next
    cycle reads it back, takes the whole time since as another start-up and the lead time (and the
    scale-down hold) grows by a sync period every cycle, as it did live on the real node."""
    spec = make_spec(slo={"enabled": True})

    def at(seconds, ready, status):
        now = T0 + timedelta(seconds=seconds)
        return cycle(replace(observed(spec, replicas=4, ready=ready, status=status, snapshot=healthy(now)),
                             now=now))

    first = at(0, 2, {})
    stored = merge({}, first.status)
    assert set(stored["scaler"]["slo"]["startingSince"]) == {"fp32"}

    ready = at(15, 4, stored)
    assert ready.status["scaler"]["slo"]["startingSince"] == {"fp32": None}
    stored = merge(stored, ready.status)
    assert stored["scaler"]["slo"]["startingSince"] == {}
    assert stored["scaler"]["slo"]["startupSeconds"] == {"fp32": 15.0}

    # later cycles learn no new start-up: the lead stays 15 s of start-up plus the metrics' age
    for k in (2, 3, 4):
        stored = merge(stored, at(15 * k, 4, stored).status)
    assert stored["scaler"]["slo"]["startupSeconds"] == {"fp32": 15.0}
    assert stored["scaler"]["slo"]["startingSince"] == {}


def test_merge_patch_nulls_only_what_is_gone():
    assert merge_patch({"a": {"x": 1, "y": 2}, "b": [1], "c": 3}, {"a": {"x": 5}, "b": [2]}) == \
        {"a": {"x": 5, "y": None}, "b": [2], "c": None}
    assert merge_patch(None, {"a": {}}) == {"a": {}}
    assert merge_patch({"a": {"x": 1}}, {"a": None}) == {"a": None}


def test_sub_models_that_cannot_load_show_in_status_condition_and_events():
    """The load-failure report observe builds (operator/loadfailures.py) lands in status, the SubModelsLoaded
    condition and one Warning per new failure."""
    from elastiserve.operator.loadfailures import load_failure_report

    report = load_failure_report({("a", "no_such_key"): 2}, None)
    plan = cycle(observed(hot_spec(), load_failures=report))
    assert plan.status["subModelLoadFailures"] == report.entries and report.entries[0]["model"] == "a"
    cond = {c["type"]: c for c in plan.status["conditions"]}["SubModelsLoaded"]
    assert cond["status"] == "False" and cond["reason"] == "LoadFailed"
    assert [(e.type, e.reason) for e in plan.events if isinstance(e, Event)] == [("Warning", "SubModelLoadFailed")]
    # the query failed (None): status keeps what it said
    assert "subModelLoadFailures" not in cycle(observed(hot_spec())).status


# --------------------------------------------------------------------------- panic check between cycles


def inflight_spec(**rule):
    return make_spec(metrics={"rules": {"inflight": {"enabled": True, "concurrency": 2, **rule}}})


def test_panic_check_scales_up_only_and_says_so():
    from elastiserve.operator.plan import decide_panic, plan_panic

    o = observed(inflight_spec(), replicas=2, snapshot=MetricSnapshot(inflight=12.0, observed_at=T0))
    decision, obs = decide_panic(o)
    plan = plan_panic(o, decision, obs)
    # 12 in flight = 6 replicas' worth at concurrency 2; at the rule's 70 % target: 60 / 7 → 9.
    assert kinds(plan.replicas) == [("apply", "Deployment", "m-fp32", 9)]
    assert events(plan) == ["Panic"] and "in-flight 12" in plan.status["lastScaleReason"]
    assert plan.status["scaler"]["panicAt"] == "2026-03-02T12:00:00Z"
    # counted per variant grown, for elastiserve_operator_panic_scaleups_total
    assert [(m.name, m.labels, m.value, m.op) for m in plan.metrics] == [
        ("PANIC_SCALEUPS", (o.namespace, o.name, "fp32"), 1, "inc")]
    # Few requests in flight: nothing is patched, not even the status (the full cycle scales down).
    o = observed(inflight_spec(), replicas=5, snapshot=MetricSnapshot(inflight=0.5, observed_at=T0))
    plan = plan_panic(o, *decide_panic(o))
    assert plan.replicas == () and plan.status == {} and events(plan) == [] and plan.metrics == ()


@pytest.mark.parametrize(
    "rule,rollout,since_cycle,since_check,due",
    [({}, False, 6, 6, True), ({}, False, 6, 3, False), ({}, False, 3, 6, False), ({}, True, 6, 6, False),
     ({"panicPeriodSeconds": 0}, False, 6, 6, False), ({"enabled": False}, False, 6, 6, False)],
    ids=["due", "checked-recently", "cycle-just-ran", "rollout", "period-0", "rule-off"],
)
def test_panic_check_due(rule, rollout, since_cycle, since_check, due):
    from elastiserve.operator.plan import panic_check_due

    assert panic_check_due(inflight_spec(**rule), rollout, since_cycle, since_check) is due


def test_reconcile_starts_each_variants_scale_event_counters_at_zero():
    """A series born at 1 has no earlier sample: increase() would never show a new model's first scale-up."""
    from elastiserve.operator import telemetry
    from elastiserve.operator.apply import export

    o = observed()
    plan = plan_reconcile(o)
    zeros = {(m.name, m.labels, m.value, m.op) for m in plan.metrics}
    assert zeros == {("SCALE_EVENTS", (o.namespace, o.name, v.name, d), 0, "inc")
                     for v in o.spec.variants for d in ("up", "down")} | {
        ("PANIC_SCALEUPS", (o.namespace, o.name, v.name), 0, "inc") for v in o.spec.variants}
    export(plan)
    for v in o.spec.variants:
        assert telemetry.REGISTRY.get_sample_value(
            "elastiserve_operator_panic_scaleups_total",
            {"namespace": o.namespace, "modeldeployment": o.name, "variant": v.name}) is not None
        for d in ("up", "down"):
            value = telemetry.REGISTRY.get_sample_value(
                "elastiserve_operator_scale_events_total",
                {"namespace": o.namespace, "modeldeployment": o.name, "variant": v.name, "direction": d})
            assert value is not None  # the child exists (0 unless another test of this process scaled it)


def test_a_rolling_update_is_done_only_when_no_old_pod_is_left():
    """``rolled_out`` as ``kubectl rollout status`` decides it. Mid-update with surge, the ready count over both
    templates already reaches the spec (three ready of two: one old pod still serving) while one new pod
    starts: not done."""
    from elastiserve.operator.handlers import rolled_out

    mid = {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2, "readyReplicas": 3}
    assert not rolled_out(2, 3, mid)
    assert not rolled_out(2, 3, mid | {"replicas": 2, "readyReplicas": 1})  # old ones gone, a new one not ready
    assert not rolled_out(2, 4, mid | {"replicas": 2, "readyReplicas": 2})  # the controller has not seen the spec
    assert rolled_out(2, 3, mid | {"replicas": 2, "readyReplicas": 2})
    assert rolled_out(0, 1, {"observedGeneration": 1})  # scaled to zero: nothing left to update


def test_the_deployment_index_the_handlers_take_is_registered():
    """kopf passes an index to a handler by the name of the function registered with ``@kopf.index``. A helper
    once slipped in between that decorator and its function: the helper became the index, and every
    reconcile and timer failed with ``missing 1 required positional argument: 'owned_deployments'``."""
    import inspect

    import kopf

    from elastiserve.operator import handlers

    indexes = {h.fn.__name__ for h in kopf.get_default_registry()._indexing.get_all_handlers()}  # noqa: SLF001
    assert indexes == {"owned_deployments"}
    for fn in (handlers.reconcile, handlers.scale):
        assert "owned_deployments" in inspect.signature(fn).parameters, fn.__name__
