"""A real Jaeger (v2, built from its Go modules by ``hack/jaeger.sh``) on loopback, for trace tests.

``jaeger`` (module scope) builds the binary if the cache lacks it (a no-op when warm; under CI
``make cluster-build`` has built it), starts it with in-memory storage on free ports, and stops it by
pid afterwards. If it cannot be built or started the fixture FAILS with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import wait_until
from .devstack import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
JAEGER_SH = REPO_ROOT / "hack" / "jaeger.sh"


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    tags: dict[str, Any]
    links: list[str]


@dataclass
class Jaeger:
    otlp_url: str
    query_url: str

    def env(self, **extra: str) -> dict[str, str]:
        """OTEL_* settings that send a component's spans here, flushed every 200 ms."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_url, "OTEL_BSP_SCHEDULE_DELAY": "200", **extra}

    def raw(self, trace_id: str) -> dict:
        """Jaeger's JSON for one trace, as its query API returns it (for saving and drawing)."""
        return self._get(f"/api/traces/{trace_id}")

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.query_url}{path}", timeout=5) as r:
            return json.loads(r.read())

    def services(self) -> list[str]:
        return self._get("/api/services").get("data") or []

    def spans(self, trace_id: str) -> list[Span]:
        """Every span of one trace, through Jaeger's query API ([] while it has none)."""
        try:
            data = self._get(f"/api/traces/{trace_id}").get("data") or []
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        out = []
        for trace in data:
            services = {k: v["serviceName"] for k, v in trace.get("processes", {}).items()}
            for s in trace["spans"]:
                refs = s.get("references") or []
                parent = next((r["spanID"] for r in refs if r["refType"] == "CHILD_OF"), None)
                links = [r["spanID"] for r in refs if r["refType"] == "FOLLOWS_FROM"]
                out.append(Span(s["traceID"], s["spanID"], parent, s["operationName"], services.get(s["processID"], "?"),
                                {t["key"]: t["value"] for t in s.get("tags") or []}, links))
        return out

    def wait_for(self, trace_id: str, done: Callable[[list[Span]], bool], timeout: float = 30, what: str = "") -> list[Span]:
        """Poll until the trace's spans satisfy ``done`` (spans arrive in batches, from several processes)."""
        box: list[list[Span]] = []

        def check() -> bool:
            box[:] = [self.spans(trace_id)]
            return done(box[0])

        try:
            wait_until(check, timeout=timeout, interval=0.25, what=what or f"trace {trace_id} in Jaeger")
        except AssertionError as exc:
            got = sorted(f"{s.service}:{s.name}" for s in (box[0] if box else []))
            raise AssertionError(f"{exc}; spans so far: {got}") from None
        return box[0]


def jaeger_binary() -> Path:
    proc = subprocess.run([str(JAEGER_SH), "path"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        build = subprocess.run([str(JAEGER_SH), "build"], capture_output=True, text=True, timeout=3600)
        if build.returncode != 0:
            raise RuntimeError(f"hack/jaeger.sh build failed:\n{build.stderr[-3000:]}")
        proc = subprocess.run([str(JAEGER_SH), "path"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"Jaeger is not built: {proc.stderr.strip()}")
    return Path(proc.stdout.strip())


def start_jaeger(work: Path, otlp_host: str = "127.0.0.1") -> tuple[Jaeger, Callable[[], None]]:
    """Build (if needed) and start Jaeger on free ports; returns it and a stop function. The query API is on
    loopback; the OTLP receiver on ``otlp_host`` (the real node's bridge address for pods to send spans).
    Used by the fixture below and by the demo (hack/live.py)."""
    binary = jaeger_binary()
    otlp, query = free_port(), free_port()
    config = work / "jaeger.yaml"
    config.write_text(subprocess.run([str(JAEGER_SH), "config", str(otlp), str(query), otlp_host], check=True,
                                     capture_output=True, text=True, timeout=30).stdout)
    log = work / "jaeger.log"
    proc = subprocess.Popen([str(binary), "--config", str(config)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "GOMAXPROCS": "1"})
    j = Jaeger(f"http://{otlp_host}:{otlp}", f"http://127.0.0.1:{query}")

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jaeger exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        j.services()
        return True

    try:
        wait_until(up, timeout=60, interval=0.2, what="Jaeger query API")
    except BaseException:
        stop()
        raise
    return j, stop


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    try:
        j, stop = start_jaeger(tmp_path_factory.mktemp("jaeger"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield j
    finally:
        stop()
