"""The operator's own Prometheus metrics (scraped from ``--metrics-port``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import tracing

REGISTRY = CollectorRegistry()
_L = ("namespace", "modeldeployment")

DECISIONS = Counter("elastiserve_operator_decisions_total", "Scaling decisions made.", _L, registry=REGISTRY)
SCALE_EVENTS = Counter(
    "elastiserve_operator_scale_events_total", "Replica changes applied.", _L + ("variant", "direction"), registry=REGISTRY
)
PANIC_SCALEUPS = Counter(
    "elastiserve_operator_panic_scaleups_total",
    "Scale-ups made by the fast panic check between cycles (metrics.rules.inflight), per variant grown.",
    _L + ("variant",),
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "elastiserve_operator_reconcile_duration_seconds",
    "Time of one scaling cycle (metrics, forecast, decision, actuation).",
    ("phase",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
PROMETHEUS_ERRORS = Counter(
    "elastiserve_operator_prometheus_errors_total", "Failed Prometheus queries.", _L + ("signal",), registry=REGISTRY
)
FORECAST_ERROR = Gauge(
    "elastiserve_operator_forecast_error", "Recent sMAPE of the request-rate forecast (0..2).", _L, registry=REGISTRY
)
FORECAST_QPS = Gauge(
    "elastiserve_operator_forecast_qps",
    "Peak forecast request rate over the horizon (bound: mean, upper).",
    _L + ("bound",),
    registry=REGISTRY,
)
DESIRED = Gauge("elastiserve_operator_desired_replicas", "Replicas the last decision asked for.", _L + ("variant",), registry=REGISTRY)
REPLICAS = Gauge("elastiserve_operator_replicas", "spec.replicas of the variant's Deployment.", _L + ("variant",), registry=REGISTRY)
READY = Gauge("elastiserve_operator_ready_replicas", "Ready replicas of the variant.", _L + ("variant",), registry=REGISTRY)
METRICS_AVAILABLE = Gauge(
    "elastiserve_operator_metrics_available", "1 when the last cycle could read its metrics.", _L, registry=REGISTRY
)
OBSERVED_QPS = Gauge("elastiserve_operator_observed_qps", "Request rate the last decision saw.", _L, registry=REGISTRY)
LAST_DECISION = Gauge(
    "elastiserve_operator_last_decision_timestamp_seconds", "When the last decision was made.", _L, registry=REGISTRY
)
SCALED_TO_ZERO = Gauge("elastiserve_operator_scaled_to_zero", "1 while the model is at zero.", _L, registry=REGISTRY)
SLO_LEAD_SECONDS = Gauge(
    "elastiserve_operator_slo_lead_seconds",
    "Lead time the SLO policy sizes the variant for: metric age + sync period + learned start-up (spec.slo).",
    _L + ("variant",),
    registry=REGISTRY,
)
SLO_QUANTILE = Gauge(
    "elastiserve_operator_slo_quantile",
    "Quantile of demand over the lead time the SLO policy sizes capacity for (0..1, calibrated online).",
    _L,
    registry=REGISTRY,
)
SLO_HEADROOM = Gauge(
    "elastiserve_operator_slo_headroom",
    "Calibrated multiplier on that quantile (1 = none).",
    _L,
    registry=REGISTRY,
)
FORECAST_COVERAGE = Gauge(
    "elastiserve_operator_forecast_coverage",
    "Share of realised request rates at or below the forecast's upper bound (exponentially weighted, 0..1).",
    _L,
    registry=REGISTRY,
)
MAX_REPLICAS = Gauge(
    "elastiserve_operator_max_replicas", "Upper replica bound of the variant.", _L + ("variant",), registry=REGISTRY
)


TRACER = tracing.tracer("elastiserve.operator")


@contextmanager
def phase(name: str, **attributes: Any) -> Iterator[Any]:
    """One phase of a cycle (``metrics``, ``forecast``, ``decide``...): timed in ``RECONCILE_SECONDS`` under
    ``phase=name`` and traced as a span of that name, a child of the cycle's span. Yields the span."""
    with RECONCILE_SECONDS.labels(name).time(), TRACER.start_as_current_span(name, attributes=attributes) as span:
        yield span
