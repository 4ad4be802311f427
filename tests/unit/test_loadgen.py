"""The load generator (``elastiserve.loadgen``, ``elastiserve load``) follows its rate curve, even one that starts
at zero (no skipped day), replays a trace file, stays bounded, and sends only to loopback
(or to ranges the caller names as the machine's own)."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from elastiserve.loadgen import CompressedDay, Constant, LoadGen, TraceCurve, loopback
from support import load_hack

ROOT = Path(__file__).resolve().parents[2]


async def model_server(hits: list[float], status: int = 200):
    async def infer(request):
        body = await request.json()
        assert body["inputs"][0]["datatype"] == "BYTES"
        hits.append(asyncio.get_running_loop().time())
        return web.json_response({}, status=status)

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    server = TestServer(app)
    await server.start_server()
    return server


async def test_counts_follow_a_curve_that_starts_at_zero(tmp_path):
    hits: list[float] = []
    server = await model_server(hits)
    try:
        url = str(server.make_url("/")).rstrip("/")
        (tmp_path / "e.json").write_text(json.dumps({"ns/m": [url]}))
        # Nothing for 1 s (the night), then 0.01 qps for 0.5 s (dawn), then 60 qps for 1.5 s.
        rate = lambda t: 0.0 if t < 1 else (0.01 if t < 1.5 else 60.0)  # noqa: E731
        gen = LoadGen("ns/m", "m", tmp_path / "e.json", None, rate, duration=3.0, seed=3)
        stats = await gen.run()
    finally:
        await server.close()
    assert stats.ok == stats.sent == len(hits)
    assert 60 <= stats.sent <= 120, stats.sent  # Poisson around 90
    assert stats.errors == {}


async def test_max_requests_bounds_the_load_and_errors_are_counted_by_status():
    hits: list[float] = []
    server = await model_server(hits, status=503)
    try:
        url = str(server.make_url("/"))
        stats = await LoadGen("ns/m", "m", [url], None, Constant(200.0), duration=5.0, max_requests=25).run()
    finally:
        await server.close()
    assert stats.sent == 25 == len(hits) and stats.ok == 0 and stats.errors == {503: 25}
    assert stats.summary(1.0)["errors"] == {"503": 25}


async def test_every_request_is_reported_with_its_send_time_latency_and_status():
    hits: list[float] = []
    server = await model_server(hits)
    seen: list[tuple[float, float, int]] = []
    try:
        url = str(server.make_url("/"))
        gen = LoadGen("ns/m", "m", [url], None, Constant(40.0), duration=1.0, seed=5,
                      on_result=lambda sent, lat, status: seen.append((sent, lat, status)))
        stats = await gen.run()
        # no endpoint and no activator: reported as status 0 at once
        empty = []
        await LoadGen("ns/m", "m", [], None, Constant(50.0), duration=0.3,
                      on_result=lambda *r: empty.append(r)).run()
    finally:
        await server.close()
    assert len(seen) == stats.sent == stats.ok == len(hits) > 0
    assert all(status == 200 and 0 <= sent <= 1.1 and lat > 0 for sent, lat, status in seen)
    assert sorted(lat for _, lat, _ in seen) == sorted(stats.latencies)
    assert empty and all(status == 0 and lat == 0.0 for _, lat, status in empty)


def test_only_loopback_is_ever_a_target():
    assert loopback("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert loopback("http://localhost:1") == "http://localhost:1"
    for url in ("http://10.0.0.1:8080", "http://example.com", "http://192.168.1.2"):
        with pytest.raises(ValueError, match="only ever sent to this machine's addresses"):
            LoadGen("ns/m", "m", [url], None, Constant(1), duration=1)


def test_the_local_clusters_ranges_are_targets_only_when_named():
    """The demo sends to a Service's cluster IP; the caller names the ranges that stay on the machine."""
    local = ("10.250.0.0/24", "10.96.0.0/16")
    assert loopback("http://10.96.3.4:80/", local) == "http://10.96.3.4:80"
    assert loopback("http://10.250.0.7:8080", local) == "http://10.250.0.7:8080"
    for url in ("http://10.97.0.1", "http://10.251.0.1", "http://example.com", "http://192.168.1.2"):
        with pytest.raises(ValueError, match="10.96.0.0/16"):
            LoadGen("ns/m", "m", [url], None, Constant(1), duration=1, local_networks=local)


@asynccontextmanager
async def _infer_server(infer):
    """A KServe v2 infer endpoint on loopback answering with ``infer``; yields its base URL."""
    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("/")).rstrip("/")
    finally:
        await server.close()


async def test_requests_to_a_service_carry_its_host_name():
    hosts: list[str] = []

    async def infer(request):
        hosts.append(request.headers["Host"])
        return web.json_response({})

    async with _infer_server(infer) as url:
        stats = await LoadGen("demo/minilm", "minilm", [url], None, Constant(200.0), duration=5.0, max_requests=5,
                              host="minilm.demo.svc").run()
    assert stats.ok == 5 and hosts == ["minilm.demo.svc"] * 5


async def test_without_keep_alive_every_request_opens_its_own_connection():
    """bench/live.py sends to a Service without keep-alive so kube-proxy picks a pod per request; by default the
    pool reuses connections."""
    peers: dict[str, list] = {"on": [], "off": []}
    mode = {"now": "on"}

    async def infer(request):
        peers[mode["now"]].append(request.transport.get_extra_info("peername"))
        return web.json_response({})

    async with _infer_server(infer) as url:
        for now, keep in (("on", True), ("off", False)):
            mode["now"] = now  # 10 qps for 1 s against an instant server: the requests do not overlap
            stats = await LoadGen("ns/m", "m", [url], None, Constant(10.0), duration=1.0, seed=4,
                                  keep_alive=keep).run()
            assert stats.ok == len(peers[now]) >= 4, (now, stats.ok)
    assert len(set(peers["off"])) == len(peers["off"])  # a new client port per request
    assert len(set(peers["on"])) < len(peers["on"])  # the pool reused a connection


def test_a_trace_is_replayed_in_its_period_and_scaled_to_its_peak(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s,requests\n0,60\n60,120\n120,0\n180,30\n")  # per 60 s bin: 1, 2, 0, 0.5 qps
    real = TraceCurve.load(trace)
    assert real.period == 240 and [real(t) for t in (0, 59, 60, 130, 200, 240)] == [1, 1, 2, 0, 0.5, 1]
    fast = TraceCurve.load(trace, period=24, peak=10)
    assert [fast(t) for t in (0, 6, 12, 18)] == [5, 10, 0, 2.5]
    with pytest.raises(ValueError, match="bad.csv: line 1"):
        (tmp_path / "bad.csv").write_text("when,requests\n0,1\n")
        TraceCurve.load(tmp_path / "bad.csv")


def test_the_compressed_day_has_a_night_and_a_peak():
    day = CompressedDay(period=600, base=6, peak=45)
    assert day(0) == 0 and day(600 * 0.2) == 0  # night: scale to zero
    assert day(600 * 0.68) == pytest.approx(45)  # the midday peak
    assert 5 < day(600 * 0.5) < 45


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "elastiserve.cli", "load", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(), err.decode()


async def test_the_load_command_replays_a_trace_and_prints_json(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s,requests\n0,0\n60,600\n")  # silence, then 10 qps
    hits: list[float] = []
    server = await model_server(hits)
    try:
        code, out, err = await run_cli("--model", "m", "--url", str(server.make_url("/")), "--trace", str(trace),
                                       "--period", "2", "--peak", "40", "--duration", "2", "--seed", "1")
    finally:
        await server.close()
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] == result["sent"] == len(hits)
    assert 20 <= result["sent"] <= 60, result  # 40 qps for the second half of 2 s: Poisson around 40
    assert result["latency_ms"]["p50"] is not None and result["errors"] == {}


@pytest.mark.parametrize("args,message", [
    (["--model", "m", "--url", "http://127.0.0.1:1"], "exactly one of --trace"),
    (["--model", "m", "--qps", "1"], "--url"),
    (["--model", "m", "--qps", "1", "--url", "http://10.1.2.3:80"], "only ever sent to this machine's addresses (127.0.0.0/8, localhost)"),
    (["--model", "m", "--qps", "1", "--url", "http://127.0.0.1:1", "--duration", "0"], "--duration must be positive"),
    (["--model", "m", "--trace", "/nonexistent.csv", "--url", "http://127.0.0.1:1"], "/nonexistent.csv"),
], ids=["no-rate", "no-target", "not-loopback", "zero-duration", "missing-trace"])
def test_the_load_command_refuses_bad_input_with_a_message(args, message):
    from typer.testing import CliRunner

    from elastiserve.cli import app

    result = CliRunner().invoke(app, ["load", *args])
    assert result.exit_code == 1 and message in result.output and result.exception.__class__ is SystemExit


def test_hack_loadgen_still_works_and_is_the_package():
    from elastiserve import loadgen

    assert load_hack("loadgen").LoadGen is loadgen.LoadGen
