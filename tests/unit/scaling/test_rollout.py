"""The rollout state machine, stepped by hand with fixed times."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from elastiserve.api import parse_spec
from elastiserve.scaling.rollout import VersionHealth, advance, split_versions

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)
HEALTHY = VersionHealth(requests=500, error_rate=0.1, latency=40, ready=2)


def spec(version="v1", **rollout):
    return parse_spec({"model": {"name": "m", "uri": "file:///models/$version/m.onnx", "version": version},
                       "rollout": {"steps": [10, 50, 100], "stepSeconds": 60, "minRequests": 20, **rollout}})


def run(sp, status, canary, seconds, step=15, stable=HEALTHY, stable_updated=False):
    plans = []
    for s in range(0, seconds + 1, step):
        plan = advance(sp, status, stable, canary, T0 + timedelta(seconds=s), stable_updated=stable_updated)
        status = plan.status
        plans.append(plan)
    return plans


def test_idle_without_a_version_change():
    plan = advance(spec(), None, HEALTHY, VersionHealth(), T0)
    assert plan.status.phase == "Idle" and plan.status.stable_version == "v1" and plan.canary_share == 0


def test_a_good_rollout_walks_the_steps_then_promotes():
    status = advance(spec("v1"), None, HEALTHY, VersionHealth(), T0).status
    plans = run(spec("v2"), status, HEALTHY, 200)
    shares = [p.canary_share for p in plans]
    assert shares[0] == 0.1 and 0.5 in shares and shares[-1] == 1.0
    assert plans[-1].status.phase == "Promoting"
    events = [p.event[0] for p in plans if p.event]
    assert events == ["RolloutStarted", "RolloutStep", "RolloutStep", "RolloutPromoting"]
    done = advance(spec("v2"), plans[-1].status, HEALTHY, HEALTHY, T0 + timedelta(seconds=300), stable_updated=True)
    assert done.status.phase == "Idle" and done.status.stable_version == "v2" and done.status.canary_version is None
    assert done.event[0] == "RolloutSucceeded"


@pytest.mark.parametrize(
    "canary,why",
    [
        (VersionHealth(requests=100, error_rate=5.0, latency=40, ready=1), "error rate 5.00% > 0.10% + 1"),
        (VersionHealth(requests=100, error_rate=0.0, latency=90, ready=1), "p95 90 ms > 1.5 × 40 ms"),
    ],
    ids=["errors", "latency"],
)
def test_a_bad_version_is_rolled_back_and_not_retried(canary, why):
    status = advance(spec("v1"), None, HEALTHY, VersionHealth(), T0).status
    started = advance(spec("v2"), status, HEALTHY, VersionHealth(), T0).status
    plan = advance(spec("v2"), started, HEALTHY, canary, T0 + timedelta(seconds=15))
    assert plan.status.phase == "RolledBack" and plan.canary_share == 0
    assert why in plan.reasons[0] and plan.event[0] == "RolloutRolledBack"
    again = advance(spec("v2"), plan.status, HEALTHY, VersionHealth(), T0 + timedelta(seconds=30))
    assert again.status.phase == "Idle" and again.status.stable_version == "v1"
    assert "not retrying" in again.status.message


def test_missing_artifact_times_out_into_a_rollback():
    status = advance(spec("v1"), None, HEALTHY, VersionHealth(), T0).status
    plans = run(spec("v2", readyTimeoutSeconds=60), status, VersionHealth(ready=0), 75)
    back = [p for p in plans if p.status.phase == "RolledBack"]
    assert len(back) == 1 and "no ready replica after 60 s" in back[0].reasons[0]
    assert all(p.status.phase == "Progressing" for p in plans[: plans.index(back[0])])
    assert plans[-1].status.phase == "Idle" and plans[-1].status.stable_version == "v1"


def test_too_few_requests_extend_the_step():
    status = advance(spec("v1"), None, HEALTHY, VersionHealth(), T0).status
    plans = run(spec("v2"), status, VersionHealth(requests=3, error_rate=0, latency=40, ready=1), 120)
    assert plans[-1].status.step == 0 and "extending the step" in plans[-1].reasons[0]


def test_a_version_asked_for_during_a_rollout_is_queued():
    status = advance(spec("v1"), None, HEALTHY, VersionHealth(), T0).status
    started = advance(spec("v2"), status, HEALTHY, VersionHealth(), T0).status
    plan = advance(spec("v3"), started, HEALTHY, HEALTHY, T0 + timedelta(seconds=15))
    assert plan.status.canary_version == "v2" and plan.status.queued_version == "v3"
    assert any("v3 queued" in r for r in plan.reasons)


@pytest.mark.parametrize(
    "desired,share,want",
    [(0, 0.1, (0, 0)), (1, 0.1, (1, 1)), (10, 0.1, (9, 1)), (10, 0.5, (5, 5)), (4, 1.0, (4, 4)), (5, 0.0, (5, 0))],
    ids=["zero", "one-keeps-both", "ten-percent", "half", "promoting", "idle"],
)
def test_split_never_loses_capacity(desired, share, want):
    stable, canary = split_versions(desired, share)
    assert (stable, canary) == want
    assert stable + canary >= desired


@pytest.mark.parametrize(
    "desired,share,ready,want",
    [(10, 0.5, 0, (10, 5)), (10, 0.5, 2, (8, 5)), (10, 0.5, 5, (5, 5)), (10, 0.5, 9, (5, 5)), (2, 0.5, 0, (2, 1))],
    ids=["canary-starting", "canary-partly-ready", "canary-ready", "more-ready-than-asked", "two-replicas"],
)
def test_stable_gives_up_only_what_the_canary_already_serves(desired, share, ready, want):
    stable, canary = split_versions(desired, share, ready)
    assert (stable, canary) == want
    assert stable + min(ready, canary) >= desired
