"""The ModelDeployment status, written by the operator only."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .base import ApiModel
from .decision import ScalerState, SloSummary

CONDITION_TYPES = ("Ready", "MetricsAvailable", "ForecastReady", "ScalingActive", "Fallback", "Rollout",
                   "SubModelsLoaded")


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class VariantStatus(ApiModel):
    """Replicas of one variant."""

    name: str
    replicas: int = 0
    """``spec.replicas`` of the variant's Deployment."""
    desired: int = 0
    """What the last decision asked for."""
    ready: int = 0


class ForecastStatus(ApiModel):
    """The latest forecast, as shown by ``kubectl get mdep``."""

    value: float | None = None
    """Peak mean request rate over the horizon (req/s)."""
    upper: float | None = None
    """Peak upper bound at the spec's quantile (req/s)."""
    horizon_seconds: int | None = None
    error: float | None = None
    """Recent sMAPE (0..2)."""
    method: str | None = None
    time: datetime | None = None


class LastDecision(ApiModel):
    """The last decision and its reasons."""

    time: datetime
    desired: dict[str, int]
    reasons: list[str]


class RolloutStatus(ApiModel):
    """Where a version rollout stands. Persisted so a restarted operator carries on."""

    stable_version: str
    """The version serving most traffic (all of it outside a rollout)."""
    canary_version: str | None = None
    """The version being rolled out."""
    phase: Literal["Idle", "Progressing", "Promoting", "RolledBack"] = "Idle"
    step: int = 0
    """Index into spec.rollout.steps."""
    step_started_at: datetime | None = None
    started_at: datetime | None = None
    queued_version: str | None = None
    """A version asked for while another rollout ran; it starts when that one ends."""
    failed_versions: list[str] = Field(default_factory=list)
    """Versions rolled back; set model.version to one again only after fixing it (the operator will not retry)."""
    message: str = ""


class SubModelLoadFailure(ApiModel):
    """A sub-model some replicas cannot load (from the model servers' ``elastiserve_model_load_failing``)."""

    model: str
    cause: str
    """``no_credentials``, ``access_denied``, ``no_such_key``, ``endpoint_unreachable``, ``transfer_failed``,
    ``server_error``, ``checksum_mismatch``, ``disk_budget``, ``too_large``, ``invalid_model`` or ``other``."""
    pods: int = 0
    """Replicas whose latest load of it failed with this cause."""
    message: str = ""


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment."""

    observed_generation: int | None = None
    phase: Literal["Pending", "Ready", "Scaling", "Error", "ScaledToZero"] | None = None
    replicas: int | None = None
    """Replicas over all variants."""
    desired: int | None = None
    """Desired replicas over all variants."""
    variant_summary: str | None = None
    """e.g. ``fp32=3 int8=1``."""
    variants: list[VariantStatus] = Field(default_factory=list)
    last_scale_time: datetime | None = None
    last_scale_reason: str | None = None
    last_decision: LastDecision | None = None
    forecast: ForecastStatus | None = None
    routing: Literal["pods", "activator"] | None = None
    """Where the public Service sends traffic: the pods, or the activator while at zero."""
    routing_since: datetime | None = None
    """When ``routing`` last changed; cleared once the change has reached kube-proxy (docs/operator.md)."""
    hot_set: list[str] = Field(default_factory=list)
    """Sub-models new replicas preload."""
    slo: SloSummary | None = None
    """The SLO policy's last figures: chosen quantile, headroom, lead time per variant, forecast coverage."""
    scaler: ScalerState | None = None
    rollout: RolloutStatus | None = None
    sub_model_load_failures: list[SubModelLoadFailure] = Field(default_factory=list)
    """Sub-models that cannot be loaded, with the cause (also the ``SubModelsLoaded`` condition and Events)."""
    conditions: list[Condition] = Field(default_factory=list)
