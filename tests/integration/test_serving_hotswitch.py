"""Hot switch of a sub-model version in a real server process (``python -m elastiserve.cli serve``) on
loopback, under a steady stream of concurrent requests: every request is answered (200), each answer
comes from exactly one complete version (its embedding matches that version's weights), the version
flips once, and a broken version is refused while the old one keeps serving.

Tiny random encoders (v1 and v2 differ in their weights) are generated here; no model download.
Figures: ``python -m pytest tests/integration/test_serving_hotswitch.py -q -s`` prints them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from support import wait_until

from elastiserve.serving.builder import build_tiny_model
from support.serving import ServerProcess
from elastiserve.serving.runtime import Embedder

HIDDEN = 32
PROBE = ["the quick brown fox", "hello world"]
CONCURRENCY = 16


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hsstore")
    build_tiny_model(root / "enc" / "v1", hidden=HIDDEN, layers=2, heads=2, seed=11)
    build_tiny_model(root / "enc" / "v2", hidden=HIDDEN, layers=2, heads=2, seed=22)
    shutil.copytree(root / "enc" / "v1", root / "enc" / "broken")
    (root / "enc" / "broken" / "model.onnx").write_bytes(b"\x00not an onnx model" * 200)
    return root


@pytest.fixture(scope="module")
def reference(store) -> dict[str, np.ndarray]:
    """What each version answers for PROBE, computed in this process."""
    out = {v: Embedder.from_dir(store / "enc" / v).embed(PROBE) for v in ("v1", "v2")}
    assert np.abs(out["v1"] - out["v2"]).max() > 0.1  # the versions differ measurably
    return out


LOAD_TOKEN = "hotswitch-token-0123456789"
AUTH = {"Authorization": f"Bearer {LOAD_TOKEN}"}


@pytest.fixture
def make_server(store, tmp_path):
    servers: list[ServerProcess] = []

    token = tmp_path / "load-token"
    token.write_text(LOAD_TOKEN)

    def make(*extra: str) -> ServerProcess:
        srv = ServerProcess(["--store", str(store), "--model", "enc=enc/v1", "--preload", "enc",
                             "--load-token-file", str(token),
                             "--idle-unload-seconds", "0", "--infer-workers", "2", "--intra-op-threads", "1", *extra],
                            tmp_path / f"server{len(servers)}.log",
                            {"ELASTISERVE_MODELDEPLOYMENT": "hs", "ELASTISERVE_VARIANT": "fp32"})
        servers.append(srv)
        srv.wait_ready()
        return srv

    yield make
    for srv in servers:
        code = srv.stop()
        assert code == 0, srv.log.read_text()[-2000:]


@dataclass
class Reply:
    sent: float
    received: float
    status: int
    version: str | None
    emb: np.ndarray | None


class Stream:
    """CONCURRENCY clients sending infer requests back to back until stopped."""

    def __init__(self, base: str):
        self.base = base
        self.replies: list[Reply] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY),
                                              timeout=aiohttp.ClientTimeout(total=30))
        body = {"inputs": [{"name": "text", "shape": [len(PROBE)], "datatype": "BYTES", "data": PROBE}]}
        url = f"{self.base}/v2/models/enc/infer"

        async def client() -> None:
            while not self._stop.is_set():
                t0 = time.monotonic()
                async with self._session.post(url, json=body) as r:
                    data = await r.json()
                t1 = time.monotonic()
                if r.status == 200:
                    out = data["outputs"][0]
                    emb = np.asarray(out["data"], np.float32).reshape(out["shape"])
                    self.replies.append(Reply(t0, t1, 200, data["model_version"], emb))
                else:
                    self.replies.append(Reply(t0, t1, r.status, None, None))

        self._tasks = [asyncio.create_task(client()) for _ in range(CONCURRENCY)]

    async def until(self, n: int, timeout: float = 30.0) -> None:
        """Let the stream run until ``n`` replies in total (polled, with a deadline)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self.replies) < n:
            assert loop.time() < end, f"only {len(self.replies)} replies within {timeout}s"
            assert not any(t.done() for t in self._tasks), [t.exception() for t in self._tasks if t.done()]
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()


def which_version(reply: Reply, reference: dict[str, np.ndarray]) -> str | None:
    for v, ref in reference.items():
        if np.allclose(reply.emb, ref, atol=1e-4):
            return v
    return None


def version_info(metrics_text: str) -> dict[str, float]:
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("elastiserve_model_version_info{") and 'model="enc"' in line:
            version = line.split('version="', 1)[1].split('"', 1)[0]
            out[version] = float(line.rsplit(" ", 1)[1])
    return out


def counter(metrics_text: str, name: str, **labels: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if xs else float("nan")


async def test_hot_switch_serves_every_request_during_the_switch(make_server, reference):
    srv = make_server()
    stream = Stream(srv.base)
    await stream.start()
    try:
        await stream.until(150)
        async with aiohttp.ClientSession() as s:
            t_call = time.monotonic()
            async with s.post(f"{srv.base}/v2/repository/models/enc/load",
                              json={"parameters": {"uri": "enc/v2"}}, headers=AUTH) as r:
                load = await r.json()
                load_status = r.status
            t_done = time.monotonic()
        n_at_switch = len(stream.replies)
        await stream.until(n_at_switch + 150)
    finally:
        await stream.stop()
    assert load_status == 200, load
    assert load["version"] == "v2" and load["previous_version"] == "v1" and load["loaded"]

    replies = stream.replies
    bad = [r for r in replies if r.status != 200]
    assert not bad, f"{len(bad)} of {len(replies)} requests failed: {sorted({r.status for r in bad})}"
    # every answer is one complete version: its embedding is that version's, and it says so
    for r in replies:
        assert which_version(r, reference) == r.version, (r.version, r.emb[0][:4])
    before = [r for r in replies if r.received < t_call]
    after = [r for r in replies if r.sent > t_done]
    during = [r for r in replies if r.received >= t_call and r.sent <= t_done]
    assert before and all(r.version == "v1" for r in before)
    assert after and all(r.version == "v2" for r in after)
    assert {r.version for r in replies} == {"v1", "v2"}
    # the version flips once: no v1 answer to a request sent after the first v2 answer arrived
    first_v2 = min(r.received for r in replies if r.version == "v2")
    assert all(r.version == "v2" for r in replies if r.sent > first_v2)

    assert srv.client.get("/v2/models/enc").json()["versions"] == ["v2"]
    def released() -> str | None:
        t = srv.metrics()
        return t if counter(t, "elastiserve_model_unloads_total", model="enc", reason="replaced") == 1 else None

    text = wait_until(released, timeout=10, interval=0.05, what="old session released")
    assert version_info(text) == {"v2": 1.0}
    assert counter(text, "elastiserve_model_switches_total", model="enc", result="success") == 1
    assert counter(text, "elastiserve_requests_total", model="enc", code="200") == len(replies)

    lat = lambda rs: [r.received - r.sent for r in rs]  # noqa: E731
    figures = {"requests": len(replies), "failed": len(bad), "switch_call_ms": round((t_done - t_call) * 1e3, 1),
               "load_in_server_ms": round(load["seconds"] * 1e3, 1), "served_during_switch": len(during),
               "latency_ms_p50_p99_outside": [round(pct(lat(before + after), q), 1) for q in (50, 99)],
               "latency_ms_p50_p99_during": [round(pct(lat(during), q), 1) for q in (50, 99)],
               "old_leases_at_swap": load["old_leases"]}
    print("\nhot switch figures:", json.dumps(figures))


async def test_broken_version_is_refused_and_v1_keeps_serving(make_server, reference):
    srv = make_server()
    stream = Stream(srv.base)
    await stream.start()
    try:
        await stream.until(100)
        async with aiohttp.ClientSession() as s:
            for uri in ("enc/broken", "enc/missing"):
                async with s.post(f"{srv.base}/v2/repository/models/enc/load",
                                  json={"parameters": {"uri": uri, "version": "v3"}}, headers=AUTH) as r:
                    body = await r.json()
                    assert r.status == 409, body
                    assert body["code"] == "switch_failed" and body["active_version"] == "v1"
                    assert body["requested_version"] == "v3" and "keeps serving" in body["error"]
            n = len(stream.replies)
        await stream.until(n + 100)
    finally:
        await stream.stop()
    assert all(r.status == 200 and r.version == "v1" for r in stream.replies)
    assert all(which_version(r, reference) == "v1" for r in stream.replies)
    meta = srv.client.get("/v2/models/enc").json()
    assert meta["versions"] == ["v1"] and meta["parameters"]["location"].endswith("enc/v1")
    text = srv.metrics()
    assert version_info(text) == {"v1": 1.0}
    assert counter(text, "elastiserve_model_switches_total", model="enc", result="error") == 2
    assert counter(text, "elastiserve_model_switches_total", model="enc", result="success") == 0
    index = srv.client.post("/v2/repository/index").json()
    assert index[0]["name"] == "enc" and index[0]["version"] == "v1" and index[0]["state"] == "READY"
    assert "keeps serving" in index[0]["reason"]


async def test_models_file_change_switches_the_model(make_server, reference, tmp_path):
    """The file trigger (a ConfigMap mounted as a file): rewriting it switches the model, under load."""
    mf = tmp_path / "models.conf"
    mf.write_text("enc=enc/v1\n")
    srv = make_server("--models-file", str(mf), "--models-file-interval", "0.2")
    stream = Stream(srv.base)
    await stream.start()
    try:
        await stream.until(100)
        tmp = tmp_path / "models.conf.new"  # atomic replace, as the kubelet does for a ConfigMap
        tmp.write_text("# bumped by the rollout\nenc=enc/v2\n")
        os.replace(tmp, mf)
        t_write = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: srv.client.get("/v2/models/enc").json()["versions"] == ["v2"],
                                timeout=15, interval=0.05, what="switch to v2 from the models file")
        n = len(stream.replies)
        await stream.until(n + 100)
    finally:
        await stream.stop()
    assert all(r.status == 200 for r in stream.replies)
    assert all(which_version(r, reference) == r.version for r in stream.replies)
    assert stream.replies[0].version == "v1" and stream.replies[-1].version == "v2"
    late = [r for r in stream.replies if r.sent > t_write + 15]
    assert all(r.version == "v2" for r in late)
    assert version_info(srv.metrics()) == {"v2": 1.0}
