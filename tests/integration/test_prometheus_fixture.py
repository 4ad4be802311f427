"""The Prometheus fixture runs a real Prometheus (Debian package) on loopback."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from support.prometheus import (
    PrometheusServer,
    free_port,
    openmetrics_gauge,
)

pytestmark = pytest.mark.prometheus


@pytest.fixture
def exporter():
    """A tiny exporter on 127.0.0.1 serving its own registry."""
    registry = CollectorRegistry()
    gauge = Gauge("elastiserve_test_queue_depth", "Requests waiting", ["model"], registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield gauge, f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_scrapes_a_local_exporter(prometheus_factory, exporter) -> None:
    gauge, target = exporter
    gauge.labels(model="minilm").set(42.5)

    prom: PrometheusServer = prometheus_factory(
        [{"targets": [target], "labels": {"team": "elastiserve"}}], scrape_interval="1s"
    )

    result = prom.wait_for_query('elastiserve_test_queue_depth{model="minilm"}', timeout=30)
    assert len(result) == 1
    series = result[0]
    assert float(series["value"][1]) == 42.5
    assert series["metric"]["team"] == "elastiserve"
    assert series["metric"]["job"] == "test"
    assert series["metric"]["instance"] == target

    # a changed value shows up on a later scrape
    gauge.labels(model="minilm").set(7)
    prom.wait_for_query(
        'elastiserve_test_queue_depth{model="minilm"}',
        timeout=30,
        predicate=lambda r: float(r[0]["value"][1]) == 7.0,
    )
    assert prom.query_value('up{job="test"}') == 1.0


def test_reload_switches_targets(prometheus_factory, exporter) -> None:
    gauge, target = exporter
    gauge.labels(model="a").set(1)
    prom = prometheus_factory([], scrape_interval="1s")
    assert prom.query("elastiserve_test_queue_depth") == []

    prom.reload(targets=[{"targets": [target], "labels": {"phase": "reloaded"}}])

    result = prom.wait_for_query("elastiserve_test_queue_depth", timeout=30)
    assert result[0]["metric"]["phase"] == "reloaded"


def test_backfilled_history_is_queryable(prometheus_factory) -> None:
    now = float(int(time.time()))
    start = now - 24 * 3600  # whole seconds: sample and query timestamps line up exactly
    step = 60.0
    # a daily-shaped gauge: value = minutes since start (easy to check exactly)
    samples = [(start + i * step, float(i)) for i in range(int(24 * 3600 / step))]
    text = openmetrics_gauge(
        "elastiserve_backfill_rps",
        samples,
        labels={"deployment": "minilm"},
        help_text="requests per second (backfilled)",
    )

    prom = prometheus_factory([], backfill=text)

    result = prom.query_range(
        'elastiserve_backfill_rps{deployment="minilm"}',
        start=start,
        end=start + 6 * 3600,
        step=600,
    )
    assert len(result) == 1
    values = result[0]["values"]
    assert len(values) == 37  # 6h at 10m steps, both ends included
    t0, v0 = values[0]
    assert abs(float(t0) - start) < 1e-3
    assert float(v0) == 0.0
    t6, v6 = values[-1]
    assert float(v6) == pytest.approx((float(t6) - start) / step, abs=1.0)

    # the newest backfilled sample is visible to an instant query "now"
    newest = prom.query_value('elastiserve_backfill_rps{deployment="minilm"}', time=samples[-1][0] + 1)
    assert newest == samples[-1][1]
    # and the whole day is there
    count = prom.query_value(
        'count_over_time(elastiserve_backfill_rps{deployment="minilm"}[25h])', time=now
    )
    assert count == len(samples)
