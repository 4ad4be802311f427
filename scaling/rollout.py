"""Version rollouts as a pure state machine: steps of traffic (by replica ratio), each gated on health.

``advance(spec, state, stable, canary, now)`` returns the next ``RolloutStatus``, the share of replicas
the new version gets, and reasons. ``split_versions`` turns a variant's desired replicas into stable and
canary counts so that capacity is split, never lost. The operator does the I/O.

Phases: ``Idle`` → (model.version changed) ``Progressing`` step by step → ``Promoting`` (the stable
Deployments take the new version with a rolling update while the canary keeps serving) → ``Idle``.
A failed gate goes to ``RolledBack`` (the canary is removed) and then ``Idle`` on the old version; that
version is remembered and not retried. A version asked for during a rollout is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..api.spec import ModelDeploymentSpec
from ..api.status import RolloutStatus


@dataclass(frozen=True)
class VersionHealth:
    """What Prometheus says about one version's pods over the current step (None = unknown)."""

    requests: float | None = None
    """Requests served during the step."""
    error_rate: float | None = None
    """Share of 5xx responses, percent."""
    latency: float | None = None
    """p95 latency, milliseconds."""
    ready: int = 0
    """Ready replicas."""


@dataclass(frozen=True)
class RolloutPlan:
    status: RolloutStatus
    canary_share: float
    """0 outside a rollout, steps[i] / 100 on step i, 1.0 while promoting."""
    reasons: tuple[str, ...]
    event: tuple[str, str] | None = None
    """(reason, message) for a Kubernetes Event when the phase changed."""

    @property
    def active(self) -> bool:
        return self.status.canary_version is not None


def _start(status: RolloutStatus, version: str, now: datetime) -> RolloutStatus:
    return status.model_copy(update={
        "canary_version": version, "phase": "Progressing", "step": 0, "step_started_at": now, "started_at": now,
        "queued_version": None, "message": f"rolling out {version}",
    })


def _idle(status: RolloutStatus, stable: str, message: str, failed: list[str] | None = None) -> RolloutStatus:
    return status.model_copy(update={
        "stable_version": stable, "canary_version": None, "phase": "Idle", "step": 0, "step_started_at": None,
        "started_at": None, "message": message, "failed_versions": failed if failed is not None else status.failed_versions,
    })


def advance(
    spec: ModelDeploymentSpec,
    status: RolloutStatus | None,
    stable: VersionHealth,
    canary: VersionHealth,
    now: datetime,
    *,
    stable_updated: bool = False,
) -> RolloutPlan:
    """One step of the rollout state machine. ``stable_updated``: the stable Deployments run the new version and are ready."""
    wanted = spec.model.version
    r = spec.rollout
    if status is None:
        status = RolloutStatus(stable_version=wanted, message=f"serving {wanted}")
    if status.phase == "RolledBack":
        status = _idle(status, status.stable_version, status.message)

    if status.phase == "Idle":
        if wanted == status.stable_version:
            return RolloutPlan(status, 0.0, ())
        if wanted in status.failed_versions:
            msg = f"version {wanted} was rolled back before; not retrying (set model.version to a fixed version)"
            return RolloutPlan(status.model_copy(update={"message": msg}), 0.0, (msg,))
        new = _start(status, wanted, now)
        share = r.steps[0] / 100
        return RolloutPlan(new, share, (f"rollout {status.stable_version} → {wanted}: step 1/{len(r.steps)} at {r.steps[0]}%",),
                           ("RolloutStarted", f"rolling out {wanted} over {status.stable_version}: steps {r.steps} %"))

    canary_version = status.canary_version or wanted
    queued = wanted if wanted not in (canary_version, status.stable_version) else None
    if queued and queued != status.queued_version:
        status = status.model_copy(update={"queued_version": queued})
    queue_note = (f"; {queued} queued until this rollout ends",) if queued else ()

    if status.phase == "Promoting":
        if stable_updated:
            new = _idle(status, canary_version, f"rolled out {canary_version}")
            new = new.model_copy(update={"queued_version": None})
            return RolloutPlan(new, 0.0, (f"rollout of {canary_version} complete",) + queue_note,
                               ("RolloutSucceeded", f"{canary_version} now serves all traffic"))
        return RolloutPlan(status, 1.0, (f"promoting {canary_version}: updating the stable Deployments",) + queue_note)

    # Progressing: gate the current step.
    step_started = status.step_started_at or now
    on_step = (now - step_started).total_seconds()
    since_start = (now - (status.started_at or now)).total_seconds()
    share = r.steps[status.step] / 100

    def rollback(why: str) -> RolloutPlan:
        failed = sorted(set(status.failed_versions) | {canary_version})
        new = _idle(status, status.stable_version, f"rolled back {canary_version}: {why}", failed)
        new = new.model_copy(update={"phase": "RolledBack"})
        return RolloutPlan(new, 0.0, (f"rollback {canary_version}: {why}",) + queue_note,
                           ("RolloutRolledBack", f"{canary_version} rolled back to {status.stable_version}: {why}"))

    if canary.ready == 0:
        if since_start >= r.ready_timeout_seconds:
            return rollback(f"no ready replica after {since_start:.0f} s (is the artifact in the store?)")
        return RolloutPlan(status, share, (f"waiting for {canary_version} replicas to be ready",) + queue_note)
    if canary.error_rate is not None:
        base = stable.error_rate or 0.0
        if canary.error_rate > base + r.max_error_rate_increase:
            return rollback(f"error rate {canary.error_rate:.2f}% > {base:.2f}% + {r.max_error_rate_increase:g}")
    if canary.latency is not None and stable.latency is not None and stable.latency > 0:
        if canary.latency > stable.latency * r.max_latency_ratio:
            return rollback(f"p95 {canary.latency:.0f} ms > {r.max_latency_ratio:g} × {stable.latency:.0f} ms")
    if on_step < r.step_seconds:
        return RolloutPlan(status, share, (f"step {status.step + 1}/{len(r.steps)} at {r.steps[status.step]}%: "
                                           f"{on_step:.0f}/{r.step_seconds} s",) + queue_note)
    if (canary.requests or 0) < r.min_requests:
        return RolloutPlan(status, share, (f"step {status.step + 1}: {canary.requests or 0:.0f} of {r.min_requests} "
                                           "requests on the new version; extending the step",) + queue_note)
    if status.step + 1 < len(r.steps):
        nxt = status.step + 1
        new = status.model_copy(update={"step": nxt, "step_started_at": now,
                                        "message": f"step {nxt + 1}/{len(r.steps)} at {r.steps[nxt]}%"})
        return RolloutPlan(new, r.steps[nxt] / 100, (f"gate passed → step {nxt + 1}/{len(r.steps)} at {r.steps[nxt]}%",)
                           + queue_note, ("RolloutStep", f"{canary_version} passed step {status.step + 1}; now {r.steps[nxt]}%"))
    new = status.model_copy(update={"phase": "Promoting", "message": f"promoting {canary_version}"})
    return RolloutPlan(new, 1.0, (f"all steps passed → promoting {canary_version}",) + queue_note,
                       ("RolloutPromoting", f"{canary_version} passed every step; updating the stable Deployments"))


def split_versions(desired: int, share: float, canary_ready: int | None = None) -> tuple[int, int]:
    """(stable, canary) replicas for one variant. Capacity is split, never lost: stable + canary >= desired,
    and while both versions serve, each keeps at least one replica.

    ``canary_ready``: ready canary replicas now. The stable track gives up only what the canary already
    serves, so a new version whose pods take a minute to start never leaves the model short of capacity
    (None: assume the canary is ready, as in the simulator)."""
    if desired <= 0 or share <= 0:
        return desired, 0
    if share >= 1:
        return desired, desired  # promoting: the canary carries the load while the stable Deployments update
    canary = max(1, round(desired * share))
    stable = max(1, desired - canary)
    if canary_ready is not None:
        stable = max(stable, desired - min(canary_ready, canary))
    return stable, canary
