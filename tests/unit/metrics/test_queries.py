"""PromQL rendering and value cleaning (the real-Prometheus tests live in tests/integration)."""

from __future__ import annotations

import math

import pytest

from elastiserve.api import parse_spec
from elastiserve.metrics import clean, render
from elastiserve.metrics.queries import cpu_cores


def spec(**extra):
    return parse_spec({"model": {"name": "m", "uri": "/m.onnx"}, **extra})


def test_default_qps_query_unions_server_and_activator():
    q = render("qps", spec(), "ns", "md")
    assert 'elastiserve_requests_total{namespace="ns",modeldeployment="md"}[60s]' in q
    assert "elastiserve_activator_requests_total" in q and q.startswith("sum(")


def test_cpu_query_divides_by_the_request():
    s = spec(template={"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}})
    q = render("cpu", s, "ns", "md")
    assert q.endswith("/ 0.5") and 'pod=~"md-(fp32)-.*"' in q


def test_override_uses_placeholders():
    s = spec(metrics={"windowSeconds": 30, "rules": {"qps": {"scaleUpAbove": 90, "scaleDownBelow": 40,
             "query": 'sum(rate(my_requests{ns="$namespace",app="$name"}[$window]))'}}})
    assert render("qps", s, "a", "b") == 'sum(rate(my_requests{ns="a",app="b"}[30s]))'


def test_latency_quantile_follows_spec():
    assert "histogram_quantile(0.99," in render("latency", spec(metrics={"latencyQuantile": "p99"}), "a", "b")


@pytest.mark.parametrize(
    "raw,want",
    [("1.5", 1.5), ("NaN", None), ("+Inf", None), ("-1", None), (None, None), ("abc", None), (0, 0.0)],
    ids=["number", "nan", "inf", "negative", "none", "garbage", "zero"],
)
def test_clean(raw, want):
    got = clean(raw)
    assert got == want and (got is None or math.isfinite(got))


@pytest.mark.parametrize("q,want", [("500m", 0.5), ("2", 2.0), (None, 1.0), ("weird", 1.0)])
def test_cpu_cores(q, want):
    assert cpu_cores(q) == want


def test_load_failures_query_counts_failing_pods_per_model_and_cause():
    from elastiserve.metrics.queries import render_load_failures

    q = render_load_failures("team-a", "emb")
    assert q == ('count by (model, cause) (elastiserve_model_load_failing{namespace="team-a",'
                 'modeldeployment="emb"} == 1)')
    # the server exports exactly this metric name (the operator reads what the server writes)
    from elastiserve.serving.metrics import METRIC_NAMES

    assert "elastiserve_model_load_failing" in METRIC_NAMES


def test_inflight_query_adds_the_activators_held_requests():
    q = render("inflight", spec(metrics={"rules": {"inflight": {"enabled": True}}}), "ns", "md")
    assert q == ('sum(elastiserve_inflight_requests{namespace="ns",modeldeployment="md"})'
                 ' + (sum(elastiserve_activator_pending_requests{namespace="ns",modeldeployment="md"}) or vector(0))')


def test_inflight_query_override():
    s = spec(metrics={"rules": {"inflight": {"enabled": True, "query": 'sum(queue_depth{app="$name"})'}}})
    assert render("inflight", s, "ns", "md") == 'sum(queue_depth{app="md"})'
