"""The HTTP server in-process (aiohttp test client) on tiny models: protocol, errors, metrics."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest
from aiohttp.test_utils import TestClient, TestServer

from elastiserve.serving.listener import DRAINING, Drain
from elastiserve.serving.metrics import METRIC_NAMES
from elastiserve.serving.server import CACHE_HEADER, SERVER_KEY, ServerConfig, build_app


@pytest.fixture
async def make_client(store):
    clients: list[TestClient] = []

    async def make(**kw) -> TestClient:
        app_kw = {k: kw.pop(k) for k in ("clock", "loader", "sizer") if k in kw}
        kw.setdefault("models", {"alpha": None, "beta": None, "corrupt": None})
        kw.setdefault("stores", [str(store)])
        kw.setdefault("modeldeployment", "md1")
        kw.setdefault("variant_label", "fp32")
        client = TestClient(TestServer(build_app(ServerConfig(**kw), **app_kw)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()  # idempotent: tests may have closed it already


@pytest.fixture
async def client(make_client):
    c = await make_client(preload=["alpha"])
    await wait_ready(c)
    yield c
    await c.close()


async def wait_ready(c: TestClient, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        r = await c.get("/v2/health/ready")
        if r.status == 200:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("server never became ready")


def v2(texts, name="text"):
    return {"inputs": [{"name": name, "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


async def test_health_and_metadata(client):
    assert (await client.get("/v2/health/live")).status == 200
    r = await client.get("/v2/health/ready")
    assert r.status == 200 and (await r.json())["resident"] == ["alpha"]
    meta = await (await client.get("/v2/models/alpha")).json()
    assert meta["name"] == "alpha" and meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    assert meta["outputs"][0]["shape"] == [-1, 8] and meta["outputs"][0]["datatype"] == "FP32"
    meta_b = await (await client.get("/v2/models/beta")).json()  # not loaded yet: dim from the manifest
    assert meta_b["outputs"][0]["shape"] == [-1, 8] and meta_b["parameters"]["loaded"] is False
    r = await client.get("/v2/models/beta/ready")
    assert r.status == 200 and (await r.json()) == {"name": "beta", "ready": True, "loaded": False}
    server_meta = await (await client.get("/v2")).json()
    assert server_meta["name"] == "elastiserve"
    listing = await (await client.get("/v2/models")).json()
    assert [m["name"] for m in listing["models"]] == ["alpha", "beta", "corrupt"]


async def test_v2_infer_and_v1_embed(client):
    r = await client.post("/v2/models/alpha/infer", json={**v2(["the cat", "a dog", ""]), "id": "req-1"})
    assert r.status == 200 and r.headers[CACHE_HEADER] == "hit"
    body = await r.json()
    out = body["outputs"][0]
    assert body["id"] == "req-1" and body["model_name"] == "alpha"
    assert out["name"] == "embeddings" and out["datatype"] == "FP32" and out["shape"] == [3, 8]
    assert len(out["data"]) == 24
    r = await client.post("/v1/models/alpha:embed", json={"texts": ["the cat"]})
    body = await r.json()
    assert r.status == 200 and body["dim"] == 8 and len(body["embeddings"]) == 1
    # the two APIs agree
    assert body["embeddings"][0] == pytest.approx(out["data"][:8], abs=1e-6)
    # nested data with a [n, 1] shape is accepted too
    r = await client.post("/v2/models/alpha/infer", json={"inputs": [
        {"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["x"], ["y"]]}]})
    assert r.status == 200 and (await r.json())["outputs"][0]["shape"] == [2, 8]


async def test_lazy_load_on_first_request_is_a_miss(client):
    r = await client.post("/v1/models/beta:embed", json={"texts": ["hello"]})
    assert r.status == 200 and r.headers[CACHE_HEADER] == "miss"
    r = await client.post("/v1/models/beta:embed", json={"texts": ["hello"]})
    assert r.headers[CACHE_HEADER] == "hit"


async def test_unknown_model_404_lists_known_models(client):
    for path in ("/v2/models/nope/infer", "/v1/models/nope:embed"):
        r = await client.post(path, json=v2(["x"]) if "v2" in path else {"texts": ["x"]})
        body = await r.json()
        assert r.status == 404 and body["code"] == "unknown_model"
        assert body["known_models"] == ["alpha", "beta", "corrupt"] and "alpha" in body["error"]
    r = await client.get("/v2/models/nope")
    assert r.status == 404


@pytest.mark.parametrize("name", ["..", "%2e%2e", "..%2Fetc", "a%2Fb", ".secret", "x%00y"])
async def test_traversal_in_model_names_is_rejected(client, name):
    r = await client.post(f"/v2/models/{name}/infer", json=v2(["x"]))
    assert r.status in (400, 404)
    body = await r.json()
    assert body.get("code") in ("invalid_model_name", "unknown_model", "http_error")
    # and nothing was loaded from outside the store
    listing = await (await client.get("/v2/models")).json()
    assert {m["name"] for m in listing["models"]} == {"alpha", "beta", "corrupt"}


async def test_corrupt_model_fails_alone(client):
    r = await client.post("/v2/models/corrupt/infer", json=v2(["x"]))
    body = await r.json()
    assert r.status == 500 and body["code"] == "model_load_failed" and "corrupt" in body["error"]
    r = await client.get("/v2/models/corrupt/ready")
    assert r.status == 503 and "error" in await r.json()
    r = await client.post("/v2/models/alpha/infer", json=v2(["still fine"]))
    assert r.status == 200
    assert (await client.get("/v2/health/ready")).status == 200


async def test_draining_serves_closes_connections_and_reports_not_ready(store):
    """After SIGTERM (serving/listener.py: run_bounded sets the drain state) requests are still answered,
    each with ``Connection: close``, and readiness reports 503 so no new traffic is routed here."""
    app = build_app(ServerConfig(models={"alpha": None}, stores=[str(store)], preload=["alpha"]))
    drain = app.setdefault(DRAINING, Drain())
    async with TestClient(TestServer(app)) as c:
        await wait_ready(c)
        r = await c.post("/v2/models/alpha/infer", json=v2(["before"]))
        assert r.status == 200 and r.headers.get("Connection", "").lower() != "close"
        drain.on = True
        r = await c.post("/v2/models/alpha/infer", json=v2(["while draining"]))
        assert r.status == 200 and r.headers["Connection"].lower() == "close"
        r = await c.get("/v2/health/ready")
        assert r.status == 503 and (await r.json())["draining"] is True


async def test_oversized_request_413(make_client):
    c = await make_client(max_request_bytes=2048)
    try:
        await wait_ready(c)
        r = await c.post("/v2/models/alpha/infer", json=v2(["x" * 5000]))
        body = await r.json()
        assert r.status == 413 and body["code"] == "request_too_large" and body["limit_bytes"] == 2048
        # chunked upload without Content-Length is cut off as well
        async def gen():
            for _ in range(10):
                yield b"x" * 1000
        r = await c.post("/v1/models/alpha:embed", data=gen())
        assert r.status == 413
        r = await c.post("/v1/models/alpha:embed", json={"texts": ["small"]})
        assert r.status == 200
    finally:
        await c.close()


async def test_too_many_inputs_413(make_client):
    c = await make_client(max_batch=4)
    try:
        await wait_ready(c)
        r = await c.post("/v1/models/alpha:embed", json={"texts": ["a"] * 5})
        assert r.status == 413 and (await r.json())["code"] == "too_many_inputs"
    finally:
        await c.close()


@pytest.mark.parametrize("payload", [
    b"not json", b"[1, 2]", b'{"inputs": []}', b'{"inputs": [{"name": "text", "datatype": "FP32", "data": [1.0]}]}',
    b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}',
    b'{"inputs": [{"name": "text", "datatype": "BYTES", "data": [1, 2]}]}',
    b'{"inputs": [{"name": "text", "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "logits"}]}',
])
async def test_bad_requests_400(client, payload):
    r = await client.post("/v2/models/alpha/infer", data=payload, headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert (await r.json())["code"] == "bad_request"


async def test_model_larger_than_budget_is_refused(make_client, store):
    size = (store / "alpha" / "model.onnx").stat().st_size
    c = await make_client(memory_budget=size - 1)
    try:
        await wait_ready(c)
        r = await c.post("/v1/models/alpha:embed", json={"texts": ["x"]})
        body = await r.json()
        assert r.status == 507 and body["code"] == "model_larger_than_budget"
        assert body["model_bytes"] == size and body["budget_bytes"] == size - 1
        assert str(size) in body["error"]
    finally:
        await c.close()


async def test_lru_budget_through_http(make_client, store):
    size = (store / "alpha" / "model.onnx").stat().st_size
    c = await make_client(memory_budget=2 * size, models={n: None for n in ("alpha", "beta", "gamma")})
    try:
        await wait_ready(c)
        for n in ("alpha", "beta", "gamma"):
            assert (await c.post(f"/v1/models/{n}:embed", json={"texts": ["x"]})).status == 200
        listing = await (await c.get("/v2/models")).json()
        assert [m["name"] for m in listing["models"] if m["loaded"]] == ["beta", "gamma"]
        assert listing["resident_bytes"] <= 2 * size
    finally:
        await c.close()


async def test_readiness_waits_for_preload(make_client):
    gate = threading.Event()
    from elastiserve.serving.loader import ModelSource

    def slow_loader(src: ModelSource, variant: str):
        gate.wait(10)
        return src.load(variant)

    c = await make_client(preload=["alpha"], loader=slow_loader)
    try:
        r = await c.get("/v2/health/ready")
        assert r.status == 503 and (await c.get("/v2/health/live")).status == 200
        gate.set()
        await wait_ready(c)
        assert (await (await c.get("/v2/health/ready")).json())["resident"] == ["alpha"]
    finally:
        gate.set()
        await c.close()


async def test_single_flight_through_http(make_client):
    calls = []
    lock = threading.Lock()

    def counting_loader(src, variant):
        with lock:
            calls.append(src.name)
        return src.load(variant)

    c = await make_client(loader=counting_loader)
    try:
        await wait_ready(c)
        rs = await asyncio.gather(*(c.post("/v1/models/beta:embed", json={"texts": [f"t{i}"]}) for i in range(30)))
        assert [r.status for r in rs] == [200] * 30
        assert calls == ["beta"]
    finally:
        await c.close()


async def test_idle_unload_through_the_server(make_client, clock):
    c = await make_client(idle_unload_seconds=60, clock=clock, preload=["alpha"])
    await wait_ready(c)
    cache = c.server.app[SERVER_KEY].cache
    assert (await c.post("/v1/models/beta:embed", json={"texts": ["x"]})).status == 200
    clock.advance(59)
    assert cache.sweep_idle() == []
    clock.advance(2)
    assert cache.sweep_idle() == ["beta"]  # alpha is preloaded, hence pinned
    text = await (await c.get("/metrics")).text()
    assert 'elastiserve_model_unloads_total{model="beta",modeldeployment="md1",reason="idle",variant="fp32"} 1.0' in text
    assert 'elastiserve_model_loaded{model="beta",modeldeployment="md1",variant="fp32"} 0.0' in text
    r = await c.post("/v1/models/beta:embed", json={"texts": ["x"]})
    assert r.status == 200 and r.headers[CACHE_HEADER] == "miss"  # loads again on demand


def _metric_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


async def test_metrics_names_and_labels(client):
    await client.post("/v2/models/alpha/infer", json=v2(["x"]))
    await client.post("/v1/models/beta:embed", json={"texts": ["x"]})
    await client.post("/v1/models/nope:embed", json={"texts": ["x"]})
    await client.post("/v2/models/corrupt/infer", json=v2(["x"]))
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = await r.text()
    for name in METRIC_NAMES:
        assert f"# HELP {name} " in text, name
    c = 'modeldeployment="md1",variant="fp32"'
    assert f'elastiserve_requests_total{{code="200",model="alpha",{c}}} 1.0' in text
    assert f'elastiserve_requests_total{{code="404",model="_unknown",{c}}} 1.0' in text
    assert f'elastiserve_requests_total{{code="500",model="corrupt",{c}}} 1.0' in text
    assert f'elastiserve_request_duration_seconds_bucket{{le="0.005",model="alpha",{c}}}' in text
    assert f'elastiserve_request_duration_seconds_bucket{{le="10.0",model="alpha",{c}}}' in text
    assert f"elastiserve_inflight_requests{{{c}}} 0.0" in text
    assert f"elastiserve_models_loaded{{{c}}} 2.0" in text
    assert f'elastiserve_model_loaded{{model="beta",{c}}} 1.0' in text
    assert f'elastiserve_model_loaded{{model="corrupt",{c}}} 0.0' in text
    assert re.search(rf'elastiserve_model_loaded_bytes{{model="alpha",{c}}} [1-9]', text)
    md = 'modeldeployment="md1"'
    assert f'elastiserve_model_loads_total{{model="alpha",{md},result="success",variant="fp32"}} 1.0' in text
    assert f'elastiserve_model_loads_total{{model="corrupt",{md},result="error",variant="fp32"}} 1.0' in text
    assert f'elastiserve_model_cache_hits_total{{model="alpha",{c}}} 1.0' in text
    assert f'elastiserve_model_cache_misses_total{{model="beta",{c}}} 1.0' in text
    assert f'elastiserve_model_load_duration_seconds_count{{model="beta",{c}}} 1.0' in text
    # the sub-model that cannot be loaded, with a bounded cause (what the operator reports in status)
    assert _metric_lines(text, "elastiserve_model_load_failing") == [
        f'elastiserve_model_load_failing{{cause="invalid_model",model="corrupt",{c}}} 1.0']
    # health checks and metadata do not count as requests
    await client.get("/v2/health/ready")
    text2 = await (await client.get("/metrics")).text()
    assert len(_metric_lines(text2, "elastiserve_requests_total")) == len(_metric_lines(text, "elastiserve_requests_total"))


def test_load_failure_series_follow_the_latest_attempt():
    from elastiserve.serving.metrics import ServingMetrics, load_failure_cause

    m = ServingMetrics("md", "fp32")

    def failing() -> list[str]:
        return _metric_lines(m.render()[0].decode(), "elastiserve_model_load_failing")

    m.set_load_failure("enc", load_failure_cause("no_such_key"))
    m.set_load_failure("enc", load_failure_cause("endpoint_unreachable"))  # one series per model: the latest
    m.set_load_failure("dec", load_failure_cause("some new botocore thing"))
    assert failing() == ['elastiserve_model_load_failing{cause="endpoint_unreachable",model="enc",'
                         'modeldeployment="md",variant="fp32"} 1.0',
                         'elastiserve_model_load_failing{cause="other",model="dec",modeldeployment="md",'
                         'variant="fp32"} 1.0']
    m.set_load_failure("enc", None)  # loaded at last
    m.set_load_failure("dec", None)
    assert failing() == []


async def test_two_servers_have_separate_registries(make_client):
    a = await make_client(modeldeployment="one")
    b = await make_client(modeldeployment="two")
    try:
        await wait_ready(a)
        await wait_ready(b)
        await a.post("/v1/models/alpha:embed", json={"texts": ["x"]})
        ta = await (await a.get("/metrics")).text()
        tb = await (await b.get("/metrics")).text()
        assert 'modeldeployment="one"' in ta and 'modeldeployment="two"' not in ta
        # b served nothing: its counters exist (declared at zero) but count no request.
        assert 'elastiserve_requests_total{code="200",model="alpha",modeldeployment="one",variant="fp32"} 1.0' in ta
        assert 'elastiserve_requests_total{code="200",model="alpha",modeldeployment="two",variant="fp32"} 0.0' in tb
    finally:
        await a.close()
        await b.close()


async def test_micro_batching_merges_concurrent_requests(make_client):
    c = await make_client(batch_window_ms=200, max_batch=64, preload=["alpha"])
    try:
        await wait_ready(c)
        texts = [[f"cat {i}", "dog"] if i % 2 else [f"fox {i}"] for i in range(12)]
        rs = await asyncio.gather(*(c.post("/v1/models/alpha:embed", json={"texts": t}) for t in texts))
        bodies = [await r.json() for r in rs]
        assert [len(b["embeddings"]) for b in bodies] == [len(t) for t in texts]
        batcher = c.server.app[SERVER_KEY]._batchers["alpha"]
        assert batcher.batches < len(texts)  # merged into fewer ORT calls
        # each caller got its own rows: same as an unbatched call
        solo = await (await c.post("/v1/models/alpha:embed", json={"texts": texts[3]})).json()
        import numpy as np

        np.testing.assert_allclose(solo["embeddings"], bodies[3]["embeddings"], atol=1e-5)
    finally:
        await c.close()


async def test_hot_set_loads_at_start_evictable_and_skips_unknown_names(make_client, caplog):
    c = await make_client(preload=["alpha"], hot=["beta", "gone", "alpha"])
    try:
        await wait_ready(c)
        ready = await (await c.get("/v2/health/ready")).json()
        assert sorted(ready["resident"]) == ["alpha", "beta"]
        resident = c.server.app[SERVER_KEY].cache._resident
        assert resident["alpha"].pinned and not resident["beta"].pinned  # the hot set stays evictable
        assert "skipping unknown model(s) gone" in caplog.text
    finally:
        await c.close()
