"""The activator process on SIGTERM (a rollout of the chart, a node drain): requests it holds for a model at
zero are still answered once the model is up, new requests are served while kube-proxy still routes here,
readiness reports 503 so no new traffic is routed here, and the process then exits by itself."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from support import wait_until
from support.devstack import free_port

HOST = "minilm.demo.svc"


class Replica(BaseHTTPRequestHandler):
    """A model replica that answers every inference with the id it was sent."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        out = json.dumps({"id": body["id"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def call(port: int, method: str, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={"Host": HOST, "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read().decode(), (r.getheader("Connection") or "").lower()
    finally:
        conn.close()


def start(tmp_path: Path, port: int, *args: str) -> tuple[subprocess.Popen, Path]:
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text("{}")  # the model has no ready replica: requests are held
    proc = subprocess.Popen([sys.executable, "-m", "elastiserve.cli", "activator", "--endpoints-file", str(endpoints),
                             "--host", "127.0.0.1", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "activator listening" in line, line
    return proc, endpoints


def test_sigterm_answers_held_requests_serves_on_while_draining_then_exits(tmp_path):
    port = free_port()
    proc, endpoints = start(tmp_path, port, "--timeout", "30", "--drain-seconds", "3")
    replica = ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    try:
        assert call(port, "GET", "/readyz")[0] == 200
        worker, held = send_held(port, "held", pending=1)
        proc.send_signal(signal.SIGTERM)
        # draining: not ready, still alive, and a new request is still accepted (and held too)
        status, body, _ = wait_until(lambda: (r := call(port, "GET", "/readyz"))[0] == 503 and r, timeout=10,
                                     what="readiness reporting the drain")
        assert json.loads(body)["draining"] is True
        assert call(port, "GET", "/healthz")[0] == 200
        worker2, late = send_held(port, "late", pending=2)
        # the model comes up after the drain period has passed: the held requests are still answered
        wait_until(lambda: _refused(port), timeout=15, what="the listener closed after the drain")
        endpoints.write_text(json.dumps({"demo/minilm": [f"http://127.0.0.1:{replica.server_port}"]}))
        worker.join(30)
        worker2.join(30)
        assert held["r"][0] == 200 and json.loads(held["r"][1]) == {"id": "held"}
        assert late["r"][0] == 200 and json.loads(late["r"][1]) == {"id": "late"}
        assert late["r"][2] == "close"  # answered while draining: the client reconnects elsewhere
        assert proc.wait(timeout=15) == 0
    finally:
        replica.shutdown()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def send_held(port: int, rid: str, pending: int) -> tuple[threading.Thread, dict[str, tuple]]:
    """Send an inference for the model at zero from a thread; return once the activator holds ``pending``."""
    answer: dict[str, tuple] = {}
    worker = threading.Thread(target=lambda: answer.update(
        r=call(port, "POST", "/v2/models/minilm/infer", {"id": rid})))
    worker.start()
    wait_until(lambda: f'"pending": {pending}' in call(port, "GET", "/healthz")[1], timeout=10,
               what=f"request {rid} held by the activator")
    return worker, answer


def _refused(port: int) -> bool:
    try:
        call(port, "GET", "/healthz", timeout=2)
    except OSError:
        return True
    return False
