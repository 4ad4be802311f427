"""The demo's load generator follows its rate curve, even one that starts at zero (no skipped day)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from support import load_hack

ROOT = Path(__file__).resolve().parents[2]


def _loadgen():
    return load_hack("loadgen")


async def test_counts_follow_a_curve_that_starts_at_zero(tmp_path):
    hits: list[float] = []

    async def infer(request):
        hits.append(asyncio.get_running_loop().time())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("/")).rstrip("/")
        (tmp_path / "e.json").write_text(json.dumps({"ns/m": [url]}))
        # Nothing for 1 s (the night), then 0.01 qps for 0.5 s (dawn), then 60 qps for 1.5 s.
        rate = lambda t: 0.0 if t < 1 else (0.01 if t < 1.5 else 60.0)  # noqa: E731
        gen = _loadgen().LoadGen("ns/m", "m", tmp_path / "e.json", None, rate, duration=3.0, seed=3)
        stats = await gen.run()
    finally:
        await server.close()
    assert stats.ok == stats.sent == len(hits)
    assert 60 <= stats.sent <= 120, stats.sent  # Poisson around 90
    assert stats.errors == {}
