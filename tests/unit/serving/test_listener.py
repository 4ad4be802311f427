"""The listener's drain on SIGTERM, in a real process: requests are still served, each answer closes its
connection, then the process exits (serving/listener.py)."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import textwrap

import pytest

from support import wait_until
from support.devstack import free_port

APP = textwrap.dedent("""
    import sys
    from aiohttp import web
    from elastiserve.serving.listener import close_when_draining, draining, run_bounded

    async def hello(request):
        return web.json_response({"draining": draining(request.app)})

    app = web.Application(middlewares=[close_when_draining])
    app.router.add_get("/", hello)
    run_bounded(app, "127.0.0.1", int(sys.argv[1]), keepalive_timeout=15, max_connections=8,
                drain_seconds=float(sys.argv[2]), on_start=lambda: print("up", flush=True))
""")


def get(port: int) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        return r.status, r.read().decode(), (r.getheader("Connection") or "").lower()
    finally:
        conn.close()


def start(port: int, drain: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", APP, str(port), str(drain)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    return proc


def test_sigterm_drains_then_exits():
    port = free_port()
    proc = start(port, drain=20)
    try:
        status, body, connection = get(port)
        assert status == 200 and connection != "close" and '"draining": false' in body
        proc.send_signal(signal.SIGTERM)
        # still served while draining, and told to close the connection
        def drained():
            answer = get(port)
            return answer if '"draining": true' in answer[1] else None

        status, body, connection = wait_until(drained, timeout=10, what="an answer while draining")
        assert (status, connection) == (200, "close")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)  # a second signal ends the drain early
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(("drain", "signum"), [
    (0, signal.SIGTERM),    # no drain: SIGTERM exits at once
    (600, signal.SIGINT),   # Ctrl-C at a terminal stops at once, whatever the drain time
], ids=["sigterm-no-drain", "sigint-never-drains"])
def test_exits_at_once_without_a_drain(drain, signum):
    port = free_port()
    proc = start(port, drain=drain)
    try:
        assert get(port)[0] == 200
        proc.send_signal(signum)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
