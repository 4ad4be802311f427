"""Request traces: a request held by the activator while a real (tiny) model server starts, as one trace.

Spans are collected in memory here; tests/e2e/test_serverless.py reads the same trees back from a real
Jaeger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from elastiserve import tracing
from elastiserve.serving.activator import Activator, FileResolver
from elastiserve.serving.server import ServerConfig, build_app

KEY = "demo/alpha"
HOST = "alpha.demo.svc"  # the activator routes by the Service the caller reached
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def spans():
    """One in-memory exporter for the module (OpenTelemetry allows one global provider per process)."""
    exporter = InMemorySpanExporter()
    if not tracing.configure("test", exporter=exporter):
        pytest.fail("tracing.configure refused an explicit exporter")
    yield exporter
    exporter.clear()
    exporter.shutdown()  # later modules' spans are dropped, not kept in memory


@pytest.mark.parametrize("env, want", [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
])
def test_tracing_is_off_unless_the_environment_names_an_exporter(env, want):
    assert tracing.wanted(env) is want


def test_pods_inherit_only_the_tracing_settings():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
           "OTEL_TRACES_SAMPLER_ARG": "0.01", "OTEL_SERVICE_NAME": "elastiserve-operator", "HOME": "/root",
           "OTEL_PROPAGATORS": ""}
    assert tracing.inherited_env(env) == [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"), ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01")]


class ServerOnWake:
    """The operator and a replica starting, played in-process: on wake, start a real model server."""

    def __init__(self, store, endpoints):
        self.store, self.endpoints = store, endpoints
        self.server: TestServer | None = None

    async def wake(self, key: str, pending: int) -> None:
        self.server = TestServer(build_app(ServerConfig(models={"alpha": None}, stores=[str(self.store)])))
        await self.server.start_server()
        self.endpoints.write_text(json.dumps({key: [str(self.server.make_url("/")).rstrip("/")]}))


@contextlib.asynccontextmanager
async def activator_at_zero(store, tmp_path):
    """An activator in front of a model with no replica; the first request starts a real server."""
    endpoints = tmp_path / "endpoints.json"
    waker = ServerOnWake(store, endpoints)
    act = Activator(FileResolver(endpoints), waker, timeout=20, poll_interval=0.01)
    front = TestServer(act.app())
    await front.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield session, front.make_url("/v2/models/alpha/infer")
    finally:
        await front.close()
        if waker.server is not None:
            await waker.server.close()


async def test_a_request_that_wakes_a_model_is_one_trace(spans, store, tmp_path):
    async with activator_at_zero(store, tmp_path) as (session, url):
        spans.clear()
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["wake up"]}]}
        headers = {"Host": HOST, "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
        async with session.post(url, json=body, headers=headers) as r:
            assert r.status == 200, await r.text()

    finished = {s.name: s for s in spans.get_finished_spans()}
    assert {s.context.trace_id for s in finished.values()} == {int(TRACE_ID, 16)}, sorted(finished)
    activator = finished["POST /{tail}"]
    hold, wake = finished["activator.hold"], finished["activator.wake"]
    forward, server = finished["activator.forward"], finished["POST /v2/models/{name}/infer"]
    load, inference = finished["model.load"], finished["inference"]
    # client -> activator -> (hold -> wake) and (forward -> server -> load, inference)
    assert activator.parent.span_id == int(CLIENT_SPAN, 16) and activator.parent.is_remote
    assert hold.parent.span_id == activator.context.span_id
    assert wake.parent.span_id == hold.context.span_id
    assert forward.parent.span_id == activator.context.span_id
    assert server.parent.span_id == forward.context.span_id and server.parent.is_remote
    assert load.parent.span_id == server.context.span_id
    assert inference.parent.span_id == server.context.span_id
    # what each span says
    assert hold.attributes["elastiserve.outcome"] == "ready" and hold.attributes["elastiserve.held_seconds"] > 0
    assert wake.attributes["elastiserve.ready"] is True
    assert load.attributes["elastiserve.model"] == "alpha" and load.attributes["elastiserve.model.bytes"] > 0
    assert inference.attributes["elastiserve.batch_size"] == 1
    assert inference.attributes["elastiserve.cache"] == "miss"
    assert server.attributes["http.response.status_code"] == 200
    # the hold covers the wake, which covers the replica's start; the load precedes the inference
    assert hold.start_time <= wake.start_time and wake.end_time <= hold.end_time
    assert load.end_time <= inference.start_time


async def test_held_requests_link_to_the_wake_they_waited_for(spans, store, tmp_path):
    async with activator_at_zero(store, tmp_path) as (session, url):
        spans.clear()
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}

        async def one():
            async with session.post(url, json=body, headers={"Host": HOST}) as r:
                return r.status

        assert await asyncio.gather(*(one() for _ in range(5))) == [200] * 5
    finished = spans.get_finished_spans()
    wakes = [s for s in finished if s.name == "activator.wake"]
    holds = [s for s in finished if s.name == "activator.hold"]
    assert len(wakes) == 1 and len(holds) == 5
    starter = next(h for h in holds if wakes[0].parent.span_id == h.context.span_id)
    for h in holds:
        if h is not starter:
            assert [link.context.span_id for link in h.links] == [wakes[0].context.span_id]
    assert not starter.links


async def test_a_failed_inference_is_an_error_span(spans, store):
    server = TestServer(build_app(ServerConfig(models={"corrupt": None}, stores=[str(store)])))
    await server.start_server()
    spans.clear()
    try:
        async with aiohttp.ClientSession() as session:
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
            async with session.post(server.make_url("/v2/models/corrupt/infer"), json=body) as r:
                assert r.status == 500
    finally:
        await server.close()
    (span,) = [s for s in spans.get_finished_spans() if s.name == "POST /v2/models/{name}/infer"]
    assert span.status.status_code == tracing.StatusCode.ERROR
    assert span.events and span.events[0].name == "exception"
