"""The activator holds requests at zero, wakes the model once, and forwards each request exactly once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from elastiserve.serving.activator import Activator, FileResolver

KEY = "demo/minilm"


class Upstream:
    """A stand-in replica: echoes each request id and counts them."""

    def __init__(self):
        self.seen: list[str] = []
        app = web.Application()
        app.router.add_post("/v2/models/{name}/infer", self.infer)
        self.server = TestServer(app)

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(body["id"])
        return web.json_response({"id": body["id"], "model_name": request.match_info["name"]})


class StartOnWake:
    """Plays the operator + a replica starting: on wake, start the upstream and publish its endpoint."""

    def __init__(self, upstream: Upstream, endpoints: Path, start: bool = True):
        self.upstream, self.endpoints, self.start = upstream, endpoints, start
        self.calls: list[int] = []

    async def wake(self, key: str, pending: int) -> None:
        self.calls.append(pending)
        if self.start:
            await self.upstream.server.start_server()
            url = str(self.upstream.server.make_url("/")).rstrip("/")
            self.endpoints.write_text(json.dumps({key: [url]}))


@pytest.fixture
async def setup(tmp_path):
    upstream = Upstream()
    endpoints = tmp_path / "endpoints.json"
    waker = StartOnWake(upstream, endpoints)
    act = Activator(FileResolver(endpoints), waker, queue_size=500, timeout=10)
    server = TestServer(act.app())
    await server.start_server()
    yield act, server, upstream, waker
    await server.close()
    await upstream.server.close()


async def test_burst_at_zero_is_served_exactly_once(setup):
    act, server, upstream, waker = setup
    url = server.make_url("/v2/models/minilm/infer")
    async with aiohttp.ClientSession() as session:

        async def one(i: int):
            async with session.post(url, json={"id": f"r{i}"}, headers={"X-Elastiserve-Model": KEY}) as r:
                return r.status, (await r.json())["id"]

        results = await asyncio.gather(*(one(i) for i in range(100)))
    assert [s for s, _ in results] == [200] * 100
    assert sorted(i for _, i in results) == sorted(f"r{i}" for i in range(100))
    assert sorted(upstream.seen) == sorted(f"r{i}" for i in range(100))  # none lost, none duplicated
    assert len(waker.calls) == 1  # one wake for the whole burst
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as r:
            text = await r.text()
    assert 'elastiserve_activator_requests_total{code="200",modeldeployment="minilm",namespace="demo"} 100.0' in text
    assert "elastiserve_activator_cold_start_seconds_count" in text


async def test_timeout_gives_503_with_retry_after(tmp_path):
    endpoints = tmp_path / "endpoints.json"
    waker = StartOnWake(Upstream(), endpoints, start=False)
    act = Activator(FileResolver(endpoints), waker, timeout=0.3)
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.make_url("/v2/models/m/infer"), json={}, headers={"X-Elastiserve-Model": KEY}) as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "5"
                assert "no ready replica" in (await r.json())["error"]
            async with session.get(server.make_url("/metrics")) as r:
                assert 'elastiserve_activator_timeouts_total{modeldeployment="minilm",namespace="demo"} 1.0' in await r.text()
    finally:
        await server.close()


async def test_full_queue_is_refused(tmp_path):
    endpoints = tmp_path / "endpoints.json"
    act = Activator(FileResolver(endpoints), StartOnWake(Upstream(), endpoints, start=False), queue_size=2, timeout=1)
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:

            async def one():
                async with session.post(server.make_url("/x"), data=b"{}", headers={"X-Elastiserve-Model": KEY}) as r:
                    return r.status

            statuses = sorted(await asyncio.gather(*(one() for _ in range(5))))
        assert statuses.count(429) == 3 and statuses.count(503) == 2
    finally:
        await server.close()


@pytest.mark.parametrize(
    "headers,want",
    [
        ({"X-Elastiserve-Model": "ns/name"}, "ns/name"),
        ({"Host": "minilm.demo.svc.cluster.local"}, "demo/minilm"),
        ({"Host": "minilm.demo:80"}, "demo/minilm"),
        ({"Host": "127.0.0.1:8080"}, None),
        ({"X-Elastiserve-Model": "no-slash"}, None),
    ],
    ids=["header", "svc-host", "short-host", "ip-host", "bad-header"],
)
def test_model_key(headers, want):
    from aiohttp.test_utils import make_mocked_request

    assert Activator.model_key(make_mocked_request("GET", "/", headers=headers)) == want


async def test_request_without_model_is_a_clear_400(tmp_path):
    act = Activator(FileResolver(tmp_path / "e.json"), StartOnWake(Upstream(), tmp_path / "e.json", start=False))
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/v2/models/m"), headers={"Host": "127.0.0.1"}) as r:
                assert r.status == 400 and "X-Elastiserve-Model" in (await r.json())["error"]
    finally:
        await server.close()


async def test_request_after_a_timeout_is_served_when_a_replica_appears(tmp_path):
    """Regression: a request arriving while an expired wake was finishing used to wait on a dead event."""
    upstream = Upstream()
    endpoints = tmp_path / "endpoints.json"
    waker = StartOnWake(upstream, endpoints, start=False)
    act = Activator(FileResolver(endpoints), waker, timeout=0.5, poll_interval=0.01)
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            url = server.make_url("/v2/models/minilm/infer")
            hdr = {"X-Elastiserve-Model": KEY}
            async with session.post(url, json={"id": "early"}, headers=hdr) as r:
                assert r.status == 503
            waker.start = True  # the next wake brings a replica up
            async with session.post(url, json={"id": "late"}, headers=hdr) as r:
                assert r.status == 200 and (await r.json())["id"] == "late"
        assert len(waker.calls) == 2 and upstream.seen == ["late"]
    finally:
        await server.close()
        await upstream.server.close()
