"""The elastiserve pieces on top of the real control plane and Prometheus: CRD, operator process, exporters.

Fixtures (registered from tests/conftest.py):

- ``crd``: the generated CRD installed and Established (session).
- ``operator_factory``: starts ``elastiserve run`` as a real subprocess against the local API server;
  at teardown it stops it and fails the test if the log holds a Python traceback.
- ``RateExporter``: a tiny exporter whose request rate a test sets, exported under the model server's
  metric names, so Prometheus, the operator's default PromQL and the decision engine see real data.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from support import wait_until

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modeldeployments.elastiserve.dev.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def crd(k8s_cluster):
    k8s_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    k8s_cluster.wait_established("modeldeployments.elastiserve.dev")
    return CRD_FILE


@dataclass
class OperatorProcess:
    proc: subprocess.Popen
    log: Path
    metrics_url: str
    liveness_url: str

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()


class OperatorFactory:
    def __init__(self, cluster, workdir: Path):
        self.cluster = cluster
        self.workdir = workdir
        self.started: list[OperatorProcess] = []

    def __call__(self, *extra: str, prometheus_url: str | None = None, namespace: str | None = None,
                 env: dict[str, str] | None = None) -> OperatorProcess:
        metrics_port, live_port = free_port(), free_port()
        log = self.workdir / f"operator-{len(self.started)}.log"
        argv = [sys.executable, "-m", "elastiserve.cli", "run", "--metrics-port", str(metrics_port),
                "--liveness", f"http://127.0.0.1:{live_port}/healthz", "--verbose"]
        argv += ["-n", namespace] if namespace else ["-A"]
        if prometheus_url:
            argv += ["--prometheus-url", prometheus_url]
        argv += list(extra)
        full_env = dict(self.cluster.env) | {"PYTHONUNBUFFERED": "1"} | (env or {})
        proc = subprocess.Popen(argv, env=full_env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.workdir)
        op = OperatorProcess(proc, log, f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{live_port}/healthz")
        self.started.append(op)

        def alive():
            if proc.poll() is not None:
                raise AssertionError(f"operator exited with {proc.returncode}:\n{op.text()[-3000:]}")
            with urllib.request.urlopen(op.liveness_url, timeout=2) as r:
                return r.status == 200

        wait_until(alive, timeout=60, interval=0.2, what="operator liveness endpoint")
        return op


@pytest.fixture
def operator_factory(k8s_cluster, crd, tmp_path) -> Iterator[OperatorFactory]:
    factory = OperatorFactory(k8s_cluster, tmp_path)
    yield factory
    for op in factory.started:
        op.stop()
    for op in factory.started:
        text = op.text()
        assert "Traceback (most recent call last)" not in text, f"operator log has a traceback:\n{text[-5000:]}"


@dataclass(eq=False)  # hashable by identity: prometheus_client keys collectors in a dict
class RateExporter:
    """Model-server metrics at a rate the test sets (integrated over real time, like a counter should be)."""

    modeldeployment: str
    variant: str = "fp32"
    rate: float = 0.0
    latency_s: float = 0.02
    _total: float = 0.0
    _last: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    hide: bool = False
    """True: export nothing (the series vanish, as when every replica is gone)."""
    models: dict[str, float] = field(default_factory=lambda: {"m": 1.0})
    """Share of the requests per (sub-)model (label ``model``); change with :meth:`set_models`."""
    _per_model: dict[str, float] = field(default_factory=dict)

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._advance()
            self.rate = rate

    def set_models(self, shares: dict[str, float]) -> None:
        with self._lock:
            self._advance()
            self.models = dict(shares)

    def _advance(self) -> None:
        now = time.monotonic()
        served = self.rate * (now - self._last)
        self._total += served
        for model, share in self.models.items():
            self._per_model[model] = self._per_model.get(model, 0.0) + served * share
        self._last = now

    def collect(self):
        if self.hide:
            return
        with self._lock:
            self._advance()
            total = self._total
            per_model = dict(self._per_model)
        c = CounterMetricFamily("elastiserve_requests", "requests", labels=["modeldeployment", "variant", "model", "code"])
        for model, count in per_model.items():
            c.add_metric([self.modeldeployment, self.variant, model, "200"], count)
        yield c
        h = HistogramMetricFamily(
            "elastiserve_request_duration_seconds", "latency", labels=["modeldeployment", "variant", "model"]
        )
        buckets = [(str(b), total if b >= self.latency_s else 0.0) for b in (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)]
        h.add_metric([self.modeldeployment, self.variant, "m"], buckets + [("+Inf", total)], sum_value=total * self.latency_s)
        yield h

    def start(self) -> "RateExporter":
        registry = CollectorRegistry()
        registry.register(self)
        self.port = free_port()
        start_http_server(self.port, addr="127.0.0.1", registry=registry)
        return self


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


def load_example(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def sa_kubeconfig(cluster, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (so RBAC is exercised for real)."""
    import json as _json

    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=24h").stdout.strip()
    admin = _json.loads(cluster.kubectl("config", "view", "--raw", "-o", "json").stdout)
    cl = admin["clusters"][0]
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cl],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cl["name"], "user": sa}}],
        "current-context": sa,
    }
    path.write_text(_json.dumps(cfg))
    return path
