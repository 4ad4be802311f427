"""The activator holds requests at zero, wakes the model once, and forwards each request exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from prometheus_client import generate_latest

from elastiserve.serving.activator import Activator, FileResolver

KEY = "demo/minilm"
HOST = {"Host": "minilm.demo.svc"}
"""What a caller of the model's Service sends: the activator routes by it."""


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
            async with session.post(url, json={"id": f"r{i}"}, headers=HOST) as r:
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


async def test_a_forwarded_response_closes_the_connection_so_the_client_reconnects_through_the_service(setup):
    """A kept-alive connection opened while the Service pointed at the activator would keep every later request
    on the activator after the Service points at the pods again (kube-proxy picks the backend per connection)."""
    act, server, upstream, waker = setup
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            async with session.post(server.make_url("/v2/models/minilm/infer"), json={"id": f"k{i}"}, headers=HOST) as r:
                assert r.status == 200 and r.headers.get("Connection", "").lower() == "close"
                await r.read()
    assert sorted(upstream.seen) == ["k0", "k1", "k2"]


async def test_timeout_gives_503_with_retry_after(tmp_path):
    endpoints = tmp_path / "endpoints.json"
    waker = StartOnWake(Upstream(), endpoints, start=False)
    act = Activator(FileResolver(endpoints), waker, timeout=0.3)
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.make_url("/v2/models/m/infer"), json={}, headers=HOST) as r:
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
                async with session.post(server.make_url("/x"), data=b"{}", headers=HOST) as r:
                    return r.status

            statuses = sorted(await asyncio.gather(*(one() for _ in range(5))))
        assert statuses.count(429) == 3 and statuses.count(503) == 2
    finally:
        await server.close()


@pytest.mark.parametrize(
    "headers,want",
    [
        ({"Host": "minilm.demo.svc.cluster.local"}, "demo/minilm"),
        ({"Host": "minilm.demo.svc:80"}, "demo/minilm"),
        ({"Host": "minilm.demo"}, "demo/minilm"),
        ({"Host": "127.0.0.1:8080"}, None),
        ({"Host": "minilm.demo.example.com"}, None),
        ({"Host": "Minilm.demo.svc"}, None),
        ({"X-Elastiserve-Model": "other/secret", "Host": "127.0.0.1"}, None),
    ],
    ids=["svc-fqdn", "svc-port", "short-host", "ip-host", "not-a-service", "not-a-label", "header-ignored"],
)
def test_model_key_is_the_service_the_caller_reached(headers, want):
    from aiohttp.test_utils import make_mocked_request

    assert Activator.model_key(make_mocked_request("GET", "/", headers=headers)) == want


async def test_request_without_model_is_a_clear_400(tmp_path):
    act = Activator(FileResolver(tmp_path / "e.json"), StartOnWake(Upstream(), tmp_path / "e.json", start=False))
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/v2/models/m"),
                                   headers={"Host": "127.0.0.1", "X-Elastiserve-Model": KEY}) as r:
                assert r.status == 400 and "Service" in (await r.json())["error"]
    finally:
        await server.close()


class Refuse:
    def __init__(self, known: set[str]):
        self.known, self.asked = known, []

    async def refuse(self, key: str) -> str | None:
        self.asked.append(key)
        return None if key in self.known else f"no ModelDeployment {key}"


async def test_only_configured_namespaces_and_known_models_are_served(tmp_path):
    endpoints = tmp_path / "e.json"
    upstream = Upstream()
    await upstream.server.start_server()
    url = str(upstream.server.make_url("/")).rstrip("/")
    endpoints.write_text(json.dumps({KEY: [url], "other/minilm": [url], "demo/ghost": [url]}))
    waker = StartOnWake(upstream, endpoints, start=False)
    admission = Refuse({KEY})
    act = Activator(FileResolver(endpoints), waker, timeout=1, namespaces=["demo"], admission=admission)
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            post = lambda host: session.post(server.make_url("/v2/models/minilm/infer"), json={"id": host},
                                             headers={"Host": host})
            async with post("minilm.other.svc") as r:
                assert r.status == 404 and "namespace other" in (await r.json())["error"]
            async with post("ghost.demo.svc") as r:
                assert r.status == 404 and "no ModelDeployment demo/ghost" in (await r.json())["error"]
            async with post("minilm.demo.svc") as r:
                assert r.status == 200
        assert upstream.seen == ["minilm.demo.svc"] and waker.calls == []
        assert admission.asked == ["demo/ghost", KEY]  # the other namespace is refused before any lookup
        assert 'namespace="other"' not in generate_latest(act.registry).decode()  # no series for refused keys
    finally:
        await server.close()
        await upstream.server.close()


async def test_held_bytes_are_bounded_with_503_and_retry_after(tmp_path):
    endpoints = tmp_path / "e.json"
    act = Activator(FileResolver(endpoints), StartOnWake(Upstream(), endpoints, start=False), timeout=5,
                    max_body_bytes=1 << 20, max_held_bytes=3 << 20)
    server = TestServer(act.app())
    await server.start_server()
    body = b"x" * (1 << 20)
    try:
        async with aiohttp.ClientSession() as session:
            held = [asyncio.ensure_future(session.post(server.make_url("/x"), data=body, headers=HOST))
                    for _ in range(3)]
            deadline = asyncio.get_running_loop().time() + 5
            while act.held_bytes < 3 << 20:  # three bodies held (the model never wakes)
                assert asyncio.get_running_loop().time() < deadline, act.held_bytes
                await asyncio.sleep(0.01)
            async with session.post(server.make_url("/x"), data=body, headers=HOST) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "2"
            assert act.held_bytes == 3 << 20  # the fourth body was refused, not read
            for h in held:
                (await h).release()
        assert act.held_bytes == 0
        metrics = generate_latest(act.registry).decode()
        assert 'elastiserve_activator_refused_total{reason="held_bytes"} 1.0' in metrics
    finally:
        await server.close()


async def test_idle_models_are_forgotten_with_their_series(tmp_path):
    now = [0.0]
    endpoints = tmp_path / "e.json"
    upstream = Upstream()
    await upstream.server.start_server()
    url = str(upstream.server.make_url("/")).rstrip("/")
    keys = [f"m{i}.demo.svc" for i in range(50)]
    endpoints.write_text(json.dumps({f"demo/m{i}": [url] for i in range(50)}))
    act = Activator(FileResolver(endpoints), StartOnWake(upstream, endpoints, start=False), forget_seconds=600,
                    clock=lambda: now[0])
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            for host in keys:
                async with session.post(server.make_url("/v2/models/m/infer"), json={"id": host},
                                        headers={"Host": host}) as r:
                    assert r.status == 200
        size_before = len(generate_latest(act.registry))
        assert len(act.models) == 50 and 'modeldeployment="m49"' in generate_latest(act.registry).decode()
        now[0] = 599.0
        assert act.forget_idle() == []
        now[0] = 600.0
        assert len(act.forget_idle()) == 50 and act.models == {}
        text = generate_latest(act.registry).decode()
        assert 'modeldeployment="m' not in text and len(text) < size_before / 5
    finally:
        await server.close()
        await upstream.server.close()


@pytest.fixture
async def cold(tmp_path):
    """An activator with a 0.5 s hold in front of a model whose wakes start nothing (until ``waker.start``)."""
    upstream = Upstream()
    endpoints = tmp_path / "endpoints.json"
    waker = StartOnWake(upstream, endpoints, start=False)
    act = Activator(FileResolver(endpoints), waker, timeout=0.5, poll_interval=0.01)
    server = TestServer(act.app())
    await server.start_server()
    yield act, server.make_url("/v2/models/minilm/infer"), upstream, waker
    await server.close()
    await upstream.server.close()


async def test_request_after_a_timeout_is_served_when_a_replica_appears(cold):
    """Regression: a request arriving while an expired wake was finishing used to wait on a dead event."""
    act, url, upstream, waker = cold
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"id": "early"}, headers=HOST) as r:
            assert r.status == 503
        waker.start = True  # the next wake brings a replica up
        # The expired wake keeps its 0.5 s deadline; the new one gets time to start a server even on a
        # loaded machine (with 0.5 s it sometimes gave up first, and a third wake was needed).
        act.timeout = 10.0
        async with session.post(url, json={"id": "late"}, headers=HOST) as r:
            assert r.status == 200 and (await r.json())["id"] == "late"
    assert len(waker.calls) == 2 and upstream.seen == ["late"]


async def test_a_request_that_has_timed_out_starts_no_wake(cold):
    """A busy moment (the event loop blocked across the deadlines of a held request and of its wake) used to
    let the expiring request start a second wake on its way out; the next request then waited for that one
    to give up (the third wake seen in a loaded run of the test above)."""
    _, url, _, waker = cold
    async with aiohttp.ClientSession() as session:
        asyncio.get_running_loop().call_later(0.4, time.sleep, 0.4)  # blocks the loop over both deadlines
        async with session.post(url, json={"id": "x"}, headers=HOST) as r:
            assert r.status == 503
    assert len(waker.calls) == 1


def _closed_port_url() -> str:
    """A loopback URL nothing listens on (bound, then closed: connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_a_replica_that_refuses_connections_is_skipped(tmp_path):
    """A killed or evicted replica still listed as an endpoint costs no request while another is Ready."""
    upstream = Upstream()
    await upstream.server.start_server()
    endpoints = tmp_path / "endpoints.json"
    alive = str(upstream.server.make_url("/")).rstrip("/")
    endpoints.write_text(json.dumps({KEY: [_closed_port_url(), alive]}))
    act = Activator(FileResolver(endpoints), StartOnWake(upstream, endpoints, start=False), timeout=10)
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            url = server.make_url("/v2/models/minilm/infer")
            codes = []
            for i in range(6):
                async with session.post(url, json={"id": str(i)}, headers=HOST) as r:
                    codes.append(r.status)
        assert codes == [200] * 6
        assert upstream.seen == [str(i) for i in range(6)]  # each exactly once
    finally:
        await server.close()
        await upstream.server.close()


async def test_all_replicas_refusing_is_a_502_naming_one(tmp_path):
    endpoints = tmp_path / "endpoints.json"
    dead = [_closed_port_url(), _closed_port_url()]
    endpoints.write_text(json.dumps({KEY: dead}))
    act = Activator(FileResolver(endpoints), StartOnWake(Upstream(), endpoints, start=False), timeout=10)
    server = TestServer(act.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.make_url("/v2/models/minilm/infer"), json={"id": "x"}, headers=HOST) as r:
                assert r.status == 502 and r.headers["Retry-After"] == "1"
                error = (await r.json())["error"]
        assert any(d in error for d in dead) and KEY in error
    finally:
        await server.close()
