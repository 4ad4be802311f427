"""The real server as a subprocess on a free loopback port, spoken to over HTTP.

Most tests serve tiny random encoders generated here (fast, no weights needed); the one marked
``model`` serves the real MiniLM built by ``elastiserve model build``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from elastiserve.serving.builder import build_tiny_model
from support.serving import ServerProcess



@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    build_tiny_model(root / "alpha", hidden=16, layers=1, heads=2)
    for n in ("beta", "gamma"):
        shutil.copytree(root / "alpha", root / n)
    shutil.copytree(root / "alpha", root / "corrupt")
    (root / "corrupt" / "model.onnx").write_bytes(b"\x00garbage" * 100)
    (tmp_path_factory.getbasetemp() / "outside").mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    srv = ServerProcess(
        ["--store", str(store), "--model", "alpha,beta,gamma,corrupt", "--preload", "alpha",
         "--memory-budget", "100Mi", "--max-request-bytes", "4096", "--idle-unload-seconds", "0"],
        tmp_path_factory.mktemp("logs") / "server.log",
        {"ELASTISERVE_MODELDEPLOYMENT": "itest", "ELASTISERVE_VARIANT": "fp32"},
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log.read_text()[-2000:]  # SIGTERM is a clean shutdown


def infer_body(texts):
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def test_health(server):
    c = server.client
    assert c.get("/v2/health/live").json() == {"live": True}
    ready = c.get("/v2/health/ready").json()
    assert ready["ready"] and ready["resident"] == ["alpha"]


def test_infer_and_embed(server):
    c = server.client
    r = c.post("/v2/models/alpha/infer", json=infer_body(["hello there", "the cat"]))
    assert r.status_code == 200
    out = r.json()["outputs"][0]
    assert out["shape"] == [2, 16] and out["datatype"] == "FP32"
    emb = np.asarray(out["data"], np.float32).reshape(2, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)
    r = c.post("/v1/models/beta:embed", json={"texts": ["hello there"]})
    assert r.status_code == 200 and r.headers["x-elastiserve-cache"] == "miss"
    # same weights (copied model) -> same embedding, lazily loaded
    np.testing.assert_allclose(r.json()["embeddings"][0], emb[0], atol=1e-5)


def test_errors(server):
    c = server.client
    r = c.post("/v2/models/nope/infer", json=infer_body(["x"]))
    assert r.status_code == 404 and r.json()["known_models"] == ["alpha", "beta", "corrupt", "gamma"]
    r = c.post("/v1/models/alpha:embed", json={"texts": ["y" * 10000]})
    assert r.status_code == 413
    r = c.post("/v1/models/corrupt:embed", json={"texts": ["x"]})
    assert r.status_code == 500 and r.json()["code"] == "model_load_failed"
    r = c.post("/v1/models/gamma:embed", json={"texts": ["others keep serving"]})
    assert r.status_code == 200
    r = c.post("/v2/models/..%2F..%2Foutside/infer", json=infer_body(["x"]))
    assert r.status_code == 400 and r.json()["code"] == "invalid_model_name"


def test_metrics(server):
    c = server.client
    c.post("/v1/models/alpha:embed", json={"texts": ["x"]})
    text = c.get("/metrics").text
    lab = 'modeldeployment="itest",variant="fp32"'
    assert f'elastiserve_requests_total{{code="200",model="alpha",{lab}}}' in text
    assert f"elastiserve_inflight_requests{{{lab}}} 0.0" in text
    assert f'elastiserve_model_loaded{{model="alpha",{lab}}} 1.0' in text
    assert 'elastiserve_model_loads_total{model="corrupt",modeldeployment="itest",result="error",variant="fp32"}' in text
    for name in ("elastiserve_request_duration_seconds_bucket", "elastiserve_models_loaded",
                 "elastiserve_model_loaded_bytes", "elastiserve_model_cache_hits_total",
                 "elastiserve_model_cache_misses_total", "elastiserve_model_load_duration_seconds_bucket"):
        assert name + "{" in text, name


def test_model_larger_than_budget(store, tmp_path):
    srv = ServerProcess(["--store", str(store), "--model", "alpha", "--memory-budget", "1000"],
                        tmp_path / "small.log")
    try:
        srv.wait_ready()
        r = srv.client.post("/v1/models/alpha:embed", json={"texts": ["x"]})
        body = r.json()
        size = (store / "alpha" / "model.onnx").stat().st_size
        assert r.status_code == 507 and body["model_bytes"] == size and body["budget_bytes"] == 1000
        assert srv.proc.poll() is None  # refused, not crashed
    finally:
        assert srv.stop() == 0


def test_uri_outside_store_refused_at_startup(store, tmp_path):
    srv = ServerProcess(["--store", str(store), "--model", f"evil={tmp_path}"], tmp_path / "evil.log")
    try:
        code = srv.proc.wait(timeout=60)
    finally:
        srv.stop()
    assert code == 2 and "outside the model store" in srv.log.read_text()


@pytest.mark.model
def test_real_minilm_over_http(minilm_cli, tmp_path):
    """Build the real encoder (fp32 + int8) into a temp cache and serve both variants."""
    from elastiserve.serving import paths

    run, d = minilm_cli
    for command in ("build", "quantize"):
        r = run(command)
        assert r.exit_code == 0, r.output
    ref = json.loads(paths.reference_embeddings_path().read_text())
    for variant, bound in (("fp32", 0.999), ("int8", 0.99)):
        srv = ServerProcess(["--store", str(d.parent), "--variant", variant, "--preload", "minilm"],
                            tmp_path / f"{variant}.log")
        try:
            srv.wait_ready()
            r = srv.client.post("/v2/models/minilm/infer", json=infer_body(ref["sentences"]))
            assert r.status_code == 200
            out = r.json()["outputs"][0]
            got = np.asarray(out["data"]).reshape(out["shape"])
            want = np.asarray(ref["embeddings"])
            cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
            assert out["shape"] == [len(ref["sentences"]), 384] and cos.min() >= bound, (variant, cos)
        finally:
            assert srv.stop() == 0


def test_load_endpoint_is_off_by_default(server):
    r = server.client.post("/v2/repository/models/beta/load", json={"parameters": {"uri": "alpha"}},
                           headers={"Authorization": "Bearer anything-at-all-0123"})
    assert r.status_code == 403 and r.json()["code"] == "load_disabled"


def _slow_clients(port: int, n: int, body: bool) -> list:
    """``n`` connections that start a request and never finish it (headers, or a promised body)."""
    import socket

    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = b"POST /v2/models/alpha/infer HTTP/1.1\r\nHost: alpha.demo.svc\r\n"
        s.sendall(head + (b"Content-Length: 1000\r\n\r\n{" if body else b"X-Slow: 1"))
        socks.append(s)
    return socks


def _closed_by_server(s, _seen: set = set()) -> bool:
    """Whether the server closed (or answered 408 on) this connection; remembered once seen."""
    if s in _seen:
        return True
    s.setblocking(False)
    try:
        data = s.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        _seen.add(s)
        return True
    finally:
        s.setblocking(True)
    if data == b"" or data.startswith(b"HTTP/1.1 408"):
        _seen.add(s)
        return True
    return False


@pytest.mark.parametrize("listener", ["server", "activator"])
def test_slow_clients_are_cut_off_and_connections_are_capped(store, tmp_path, listener):
    import subprocess
    import sys

    from support import wait_until
    from support.serving import free_port

    limits = ["--keepalive-timeout", "1", "--read-timeout", "1", "--max-connections", "40"]
    if listener == "server":
        srv = ServerProcess(["--store", str(store), "--model", "alpha", "--idle-unload-seconds", "0", *limits],
                            tmp_path / "server.log", {"ELASTISERVE_MODELDEPLOYMENT": "slow"})
        srv.wait_ready()
        port, stop = srv.port, srv.stop
        live = lambda: srv.client.get("/v2/health/live").status_code == 200
    else:
        (tmp_path / "e.json").write_text("{}")
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "elastiserve.cli", "activator", "--host", "127.0.0.1",
                                 "--port", str(port), "--endpoints-file", str(tmp_path / "e.json"), *limits],
                                stdout=(tmp_path / "activator.log").open("w"), stderr=subprocess.STDOUT)

        def live() -> bool:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return r.status == 200

        def stop() -> int:
            proc.terminate()
            return proc.wait(10)

        wait_until(live, timeout=30, what="activator up")
    socks, extra = [], []
    try:
        socks = _slow_clients(port, 20, body=False) + _slow_clients(port, 19, body=True)
        # The 40th slot is left for the probe below; past the cap a new connection is closed at once.
        extra = _slow_clients(port, 20, body=False)
        wait_until(lambda: sum(_closed_by_server(s) for s in extra) >= 19, timeout=10,
                   what="connections past the cap closed")
        # Slow headers and slow bodies are both cut off by the server (408 or a close): none lingers.
        wait_until(lambda: all(_closed_by_server(s) for s in socks), timeout=30, what="slowloris connections closed")
        assert wait_until(live, timeout=10, what="still serving")
    finally:
        for s in socks + extra:
            s.close()
        assert stop() == 0
