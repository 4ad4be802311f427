"""apply_plan carries a plan out in its fixed order against a fake API (a recorder of calls), and keeps the
in-memory state (``ObjectState``) in step with what it sent."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from elastiserve.operator import apply as apply_mod
from elastiserve.operator import builders, telemetry
from elastiserve.operator.apply import apply_plan
from elastiserve.operator.plan import (
    Apply, ApplyAll, Delete, Event, Log, Metric, Plan, Remember, SetHotSet, SetHpaVariant, SetReady,
)
from elastiserve.operator.state import ObjectState, OperatorState, operator_state


class FakeKube:
    """Records what would have gone to the API server, in order."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    async def apply(self, obj, manager="elastiserve", dry_run=False):
        if obj["metadata"]["name"] == self.fail_on and not dry_run:
            raise RuntimeError("the API server said no")
        self.calls.append(("apply", obj["kind"], obj["metadata"]["name"], manager) + (("dry-run",) if dry_run else ()))

    async def apply_all(self, objs, manager="elastiserve"):
        for o in objs:
            await self.apply(o, manager, dry_run=True)
        for o in objs:
            await self.apply(o, manager)

    async def delete(self, kind, namespace, name):
        self.calls.append(("delete", kind, name))
        return True


class Logger:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level):
        return lambda message: self.lines.append((level, message))


@pytest.fixture
def posted(monkeypatch):
    events: list[Event] = []
    monkeypatch.setattr(apply_mod, "post", lambda body, event: events.append(event))
    return events


def replicas(variant, n, canary=False):
    return builders.build_replicas("m", "ns", variant, n, canary=canary)


async def test_sections_run_in_their_fixed_order_and_state_follows(posted):
    plan = Plan(
        # fields given out of order on purpose: the order is apply's, not the constructor's
        events=(Event("Normal", "Scaled", "fp32 2→3"), Log("info", "scaled")),
        hot_set=(Apply(builders.build_hotset("m", "ns", "u", ["a"])), SetHotSet(("a",))),
        replicas=(Remember("fp32", 3), Apply(replicas("fp32", 3), scaler=True)),
        rollout=(Delete("Deployment", "ns", "m-fp32-canary"), Remember("fp32@canary", None)),
        repairs=(Apply(replicas("fp32", 2), scaler=True), Event("Warning", "ReplicasRestored", "restored 2")),
        routing=(Event("Normal", "RoutedToPods", "pods again"),),
        status={"desired": 3, "phase": "Scaling"},
        metrics=(Metric("DESIRED", ("ns", "m-apply", "fp32"), 3), Metric("DECISIONS", ("ns", "m-apply"), 1, "inc")),
        decided=True,
    )
    kube, obj, logger = FakeKube(), ObjectState(applied={"fp32": 2, "fp32@canary": 1}), Logger()
    patch = SimpleNamespace(status={})
    before = telemetry.DECISIONS.labels("ns", "m-apply")._value.get()
    await apply_plan(plan, kube, obj, body={}, patch=patch, logger=logger)
    assert kube.calls == [
        ("apply", "Deployment", "m-fp32", "elastiserve-scaler"),  # repair
        ("delete", "Deployment", "m-fp32-canary"),  # rollout
        ("apply", "Deployment", "m-fp32", "elastiserve-scaler"),  # replicas
        ("apply", "ConfigMap", "m-hotset", "elastiserve"),  # hot set
    ]
    assert [e.reason for e in posted] == ["ReplicasRestored", "RoutedToPods", "Scaled"]
    assert logger.lines == [("info", "scaled")]
    assert obj.applied == {"fp32": 3} and obj.hot_set == ["a"]
    assert patch.status == {"desired": 3, "phase": "Scaling"}
    assert telemetry.DESIRED.labels("ns", "m-apply", "fp32")._value.get() == 3
    assert telemetry.DECISIONS.labels("ns", "m-apply")._value.get() == before + 1


async def test_owned_objects_dry_run_first_and_the_scaler_takes_over_unless_a_cycle_moved_on(posted):
    dep = builders.build_replicas("m", "ns", "fp32", 1)
    plan = Plan(owned=(Remember("fp32", 1), ApplyAll(({"kind": "Service", "metadata": {"name": "m"}}, dep)),
                       Apply(replicas("fp32", 1), scaler=True, unless_changed=("fp32", 1)), SetHpaVariant("fp32")),
                events=(SetReady({"type": "Ready", "status": "True", "observedGeneration": 2}),))
    kube, obj = FakeKube(), ObjectState()
    await apply_plan(plan, kube, obj, {}, SimpleNamespace(status={}), Logger())
    assert [c[-1] for c in kube.calls[:2]] == ["dry-run", "dry-run"]
    assert kube.calls[-1] == ("apply", "Deployment", "m-fp32", "elastiserve-scaler")
    assert obj.hpa_variant == "fp32" and obj.ready == {"type": "Ready", "status": "True", "observedGeneration": 2}

    # a cycle decided 4 while the Deployment was being created: its value stands
    kube, obj = FakeKube(), ObjectState()

    class Racing(FakeKube):
        async def apply_all(self, objs, manager="elastiserve"):
            obj.applied["fp32"] = 4
            await super().apply_all(objs, manager)

    kube = Racing()
    await apply_plan(plan, kube, obj, {}, SimpleNamespace(status={}), Logger())
    assert ("apply", "Deployment", "m-fp32", "elastiserve-scaler") not in kube.calls


async def test_a_failed_call_stops_the_plan_before_status_and_events(posted):
    plan = Plan(replicas=(Remember("fp32", 3), Apply(replicas("fp32", 3), scaler=True)),
                routing=(Event("Normal", "RoutedToPods", "x"),), status={"desired": 3}, decided=True)
    patch = SimpleNamespace(status={})
    with pytest.raises(RuntimeError):
        await apply_plan(plan, FakeKube(fail_on="m-fp32"), ObjectState(), {}, patch, Logger())
    assert patch.status == {} and posted == []


def test_every_plan_metric_names_an_operator_metric():
    """The metric names a plan may use are telemetry's (a typo would fail at apply time in production)."""
    from elastiserve.operator import plan as plan_mod
    import inspect
    import re

    names = set(re.findall(r'Metric\("([A-Z_]+)"', inspect.getsource(plan_mod)))
    assert names and all(hasattr(telemetry, n) for n in names), names


def test_one_operator_state_is_shared_by_every_object_memo():
    """kopf hands each object a shallow copy of the operator memo: the state must be made once, up front."""
    import copy

    from elastiserve.operator.handlers import shared_memo

    memo = shared_memo(activator=(["10.0.0.1"], 8080), pod_env=[("OTEL_X", "1")], peering=None)
    a, b = copy.copy(memo), copy.copy(memo)
    operator_state(a).of("ns", "m").applied["fp32"] = 2
    assert operator_state(b).of("ns", "m").applied == {"fp32": 2}
    assert isinstance(operator_state(memo), OperatorState) and operator_state(memo).activator == (["10.0.0.1"], 8080)
    assert memo.peering is None  # start-up settings stay readable by main.configure
