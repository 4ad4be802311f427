"""Inputs and outputs of the pure decision engine (``elastiserve.scaling.decide``).

These are plain data shared by the operator, the simulator and the metrics layer. Everything is in
SI-ish units stated per field. Times are timezone-aware ``datetime`` values passed in by the caller;
nothing here reads a clock.
"""

from __future__ import annotations

import math
from datetime import datetime

from pydantic import Field, field_validator

from .base import ApiModel

SIGNALS = ("cpu", "memory", "qps", "latency", "error_rate", "inflight")
"""Signals the threshold rules read, in the order reasons list them."""


class MetricSnapshot(ApiModel):
    """The latest value of every signal for one ModelDeployment. ``None`` means unknown, never zero."""

    cpu: float | None = None
    """Average CPU utilisation of the model's pods, percent of their CPU request."""
    memory: float | None = None
    """Average memory working set, percent of the pods' memory request."""
    qps: float | None = None
    """Total requests per second to the model (all variants, plus requests held by the activator)."""
    latency: float | None = None
    """p95 (or p99, per spec) latency in milliseconds."""
    error_rate: float | None = None
    """Share of 5xx responses, percent."""
    pending: float | None = None
    """Requests waiting in the activator (scale-from-zero signal)."""
    inflight: float | None = None
    """Requests in flight: being served or queued at the model servers plus held by the activator (a gauge,
    total over the model's replicas, not per replica)."""
    observed_at: datetime | None = None
    """Timestamp of the newest sample; older than ``metrics.staleAfterSeconds`` counts as missing."""
    errors: dict[str, str] = Field(default_factory=dict)
    """Per-signal query errors (``signal -> message``), for conditions and reasons."""

    @field_validator("cpu", "memory", "qps", "latency", "error_rate", "pending", "inflight")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        # NaN/Inf from a data source become "unknown" here, once, so no rule ever sees them.
        if v is None or not math.isfinite(v) or v < 0:
            return None
        return float(v)

    def value(self, signal: str) -> float | None:
        return getattr(self, signal)


class ForecastPoint(ApiModel):
    """One step of a forecast of request rate."""

    offset_seconds: int
    """Seconds after the forecast's origin."""
    mean: float
    lower: float
    upper: float
    """Upper bound of the prediction interval at the spec's quantile."""


class Forecast(ApiModel):
    """A request-rate forecast over the horizon, with its recent error."""

    origin: datetime
    """Time of the last observation the forecast is conditioned on."""
    points: list[ForecastPoint]
    quantile: float = 0.9
    method: str = "arima"
    error: float | None = None
    """Recent sMAPE of one-horizon-ahead forecasts against realised values (0..2), None if not known yet."""
    ready: bool = True
    """False when the forecaster has no usable model (too little history, failed fit, high error)."""
    reason: str = ""
    """Why the forecast is not ready, or what model produced it."""

    def peak_upper(self) -> float:
        return max((p.upper for p in self.points), default=0.0)

    def peak_mean(self) -> float:
        return max((p.mean for p in self.points), default=0.0)


class Observation(ApiModel):
    """What the cluster looks like now: replicas per variant."""

    replicas: dict[str, int]
    """``spec.replicas`` of each variant's Deployment (what was last asked for)."""
    ready: dict[str, int] = Field(default_factory=dict)
    """Ready replicas per variant."""


class TimedValue(ApiModel):
    """A value recorded at a time (stabilization recommendations, scale events)."""

    time: datetime
    value: int


class ForecastCheck(ApiModel):
    """A forecast upper bound waiting for the request rate it was about (forecast calibration)."""

    due: datetime
    upper: float


class BlendCheck(ApiModel):
    """The two demand quantiles the SLO plan blends (empirical and forecast, req/s), waiting for the peak
    demand over the lead time they were sized for (scored with the quantile loss)."""

    left: int
    """Demand samples still to come before the peak over the lead time is known."""
    peak: float
    """Highest demand seen since the check was made (req/s)."""
    quantile: float
    empirical: float
    forecast: float


class SloState(ApiModel):
    """What the SLO policy learns online. Bounded: at most ``scaling.slo.RING`` demand samples."""

    demand: list[float] = Field(default_factory=list)
    """Request rate seen at each recent cycle (req/s, oldest first): the empirical distribution of demand
    growth over a lead time comes from it."""
    demand_time: datetime | None = None
    """Time of the newest ``demand`` sample (a long gap starts the history again)."""
    miss_level: float | None = None
    """Calibrated miss level ``alpha``: capacity is sized for quantile ``1 - alpha`` of demand (adaptive
    conformal inference on observed violations; None: ``1 - slo.attainment``)."""
    headroom_log: float = 0.0
    """Log of the calibrated headroom multiplier used once the quantile is at its maximum."""
    attainment: float | None = None
    """Exponentially weighted share of recent cycles without an SLO violation (about one day of memory)."""
    forecast_checks: list[ForecastCheck] = Field(default_factory=list)
    forecast_coverage: float | None = None
    """Exponentially weighted share of realised request rates at or below the forecast's upper bound."""
    forecast_checked: int = 0
    blend_checks: list[BlendCheck] = Field(default_factory=list)
    blend_losses: list[float] = Field(default_factory=list)
    """Exponentially weighted quantile (pinball) loss against the peak demand over the lead time (req/s)
    of the blend ``w * forecast + (1 - w) * empirical`` for each weight of ``scaling.slo.BLEND_WEIGHTS``
    (the first: the empirical quantile alone, the last: the forecast's alone)."""
    blend_checked: int = 0
    startup_seconds: dict[str, float] = Field(default_factory=dict)
    """Learned start-up (scale-up to Ready) per variant, seconds."""
    starting_since: dict[str, TimedValue] = Field(default_factory=dict)
    """Per variant with replicas starting: since when, and how many were ready then."""
    burst_since: datetime | None = None
    """When burst replicas were last started (they are kept at least one lead time)."""


class ScalerState(ApiModel):
    """Everything the engine remembers between cycles. Stored in ``.status.scaler`` so restarts and replays agree."""

    recommendations: list[TimedValue] = Field(default_factory=list)
    """Recent total recommendations (primary-equivalent replicas) for the stabilization windows."""
    scale_up_events: list[TimedValue] = Field(default_factory=list)
    """Replicas added, with time, for the rate-limit policies."""
    scale_down_events: list[TimedValue] = Field(default_factory=list)
    """Replicas removed, with time, for the rate-limit policies."""
    last_scale_time: datetime | None = None
    metrics_missing_since: datetime | None = None
    """First cycle of the current metrics outage."""
    metrics_recovered_at: datetime | None = None
    """When metrics came back after an outage: rates need a full window of new samples before they
    can be trusted to scale down (a rate over a half-empty window reads low)."""
    last_active_time: datetime | None = None
    """Last time any request was seen (for scale to zero)."""
    scaled_to_zero: bool = False
    panic_at: datetime | None = None
    """Last time the fast panic check (``scaling.panic``, between full cycles) scaled up."""
    slo: SloState | None = None
    """State of the SLO policy (``spec.slo.enabled``): demand history, calibration, learned start-ups."""


class SloSummary(ApiModel):
    """The SLO policy's figures for one decision (shown in ``status.slo`` and the reasons)."""

    quantile: float
    """Quantile of demand over the lead time the capacity is sized for."""
    headroom: float
    """Calibrated multiplier on that quantile (1 = none)."""
    lead_seconds: dict[str, float]
    """Lead time per variant: metric age + sync period + learned start-up."""
    demand_qps: float
    """Demand the capacity is sized for (req/s), primary lead time."""
    forecast_weight: float
    """Weight of the forecast against the empirical growth distribution (0..1, from its coverage)."""
    forecast_coverage: float | None = None
    attainment: float | None = None
    """Recent share of cycles without a violation."""
    panic: bool = False
    """Demand above ready capacity: act within this cycle, burst variants first."""


class Decision(ApiModel):
    """What ``decide`` returns: desired replicas per variant, why, and the next state."""

    desired: dict[str, int]
    reasons: list[str]
    state: ScalerState
    valid: bool = True
    """False when nothing could be decided (no data at all); the caller then keeps the current replicas."""
    metrics_available: bool = True
    forecast_used: bool = False
    fallback_active: bool = False
    scale_to_zero: bool = False
    """True when the decision takes the model to zero (the caller routes its Service to the activator)."""
    reactive_total: int = 0
    """Primary-equivalent replicas the reactive rules asked for."""
    forecast_total: int | None = None
    """Primary-equivalent replicas the forecast asked for (None without a usable forecast)."""
    slo: SloSummary | None = None
    """What the SLO policy measured and chose (``spec.slo.enabled``)."""
    panic: bool = False
    """True when this decision came from the fast panic check (``scaling.panic``): it only scales up."""

    @property
    def total(self) -> int:
        return sum(self.desired.values())

    def summary(self) -> str:
        return "; ".join(self.reasons)
