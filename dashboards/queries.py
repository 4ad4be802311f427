"""PromQL shared by the dashboards, derived from the operator's own queries where one exists.

The request-rate, latency and error-rate panels show exactly what the operator scales on: they are
``elastiserve.metrics.queries.DEFAULT_QUERIES`` with the object's placeholders replaced by dashboard
variables (``$namespace``, ``$modeldeployment``) and the rate window by ``$__rate_interval``.
"""

from __future__ import annotations

from string import Template

from elastiserve.metrics.queries import DEFAULT_QUERIES

MODEL = 'namespace="$namespace",modeldeployment="$modeldeployment"'
"""Label matchers selecting the dashboard's ModelDeployment."""

MODEL_VARIANTS = MODEL + ',variant=~"$variant"'
"""... and the selected variants."""

SLO_BUCKETS = ("0.25", "0.1", "0.5", "1.0")
"""Choices of the latency SLO threshold in seconds (bucket boundaries of the server's histogram, as
prometheus_client formats them); the first is the default and matches files/rules.yaml."""

SLO_TARGET_PERCENT = 95
"""Share of requests that must be faster than the threshold (the alert rules' objective)."""


def operator_query(signal: str, *, quantile: str = "0.95") -> str:
    """The operator's default PromQL for ``signal``, for the dashboard's selected model."""
    return Template(DEFAULT_QUERIES[signal]).safe_substitute(
        namespace="$namespace",
        name="$modeldeployment",
        window="$__rate_interval",
        quantile=quantile,
    )


def ratio_percent(numerator: str, denominator: str) -> str:
    return f"100 * ({numerator}) / ({denominator})"
