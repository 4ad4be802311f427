"""Prometheus → clean values and history windows; the only package that talks to Prometheus."""

from .client import MetricSource, PrometheusSource, clean
from .errors import AmbiguousSeries, MetricsError, NoData, QueryFailed
from .queries import DEFAULT_QUERIES, render

__all__ = [
    "DEFAULT_QUERIES", "AmbiguousSeries", "MetricSource", "MetricsError", "NoData", "PrometheusSource",
    "QueryFailed", "clean", "render",
]
