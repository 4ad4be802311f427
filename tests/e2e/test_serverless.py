"""Serverless on real parts: zero → burst of first requests → served → idle → zero → one request → served.

Real control plane (kwok pods), real Prometheus, the real operator and activator processes, and one real
model-server process per Running pod (hack/podtwin.py) serving the MiniLM INT8 model. Every component
sends traces to a real Jaeger: the request that wakes the model and a cycle that scaled are read back
through Jaeger's query API.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import pytest

from support import load_hack, wait_until
from support.devstack import free_port, manifest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.model, pytest.mark.e2e]




@pytest.fixture(scope="module")
def model_dir() -> Path:
    from elastiserve.serving import paths

    d = paths.model_dir()
    for cmd in (["model", "build"], ["model", "quantize"]):
        target = d / paths.VARIANT_FILES["fp32" if cmd[1] == "build" else "int8"]
        if not target.exists():
            subprocess.run([sys.executable, "-m", "elastiserve.cli", *cmd], check=True, timeout=900)
    return d


class Timeline:
    """Polls the cluster every 50 ms and notes when things first happen."""

    def __init__(self, cluster, ns, name):
        self.cluster, self.ns, self.name = cluster, ns, name
        self.marks: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            try:
                deps = self.cluster.kubectl_json("get", "deployments", "-n", self.ns,
                                                 "-l", f"elastiserve.dev/modeldeployment={self.name}")["items"]
                if any((d["spec"].get("replicas") or 0) > 0 for d in deps):
                    self.marks.setdefault("decided", time.monotonic())
                if any((d.get("status", {}).get("readyReplicas") or 0) > 0 for d in deps):
                    self.marks.setdefault("pod_ready", time.monotonic())
            except Exception:
                pass
            self.stop.wait(0.05)

    def finish(self):
        self.stop.set()
        self.thread.join(5)
        return self.marks


def _status(cluster, ns, name):
    return cluster.kubectl_json("get", "mdep", name, "-n", ns).get("status", {})


def _events(cluster, ns, reason):
    return [e for e in cluster.kubectl_json("get", "events", "-n", ns)["items"] if e.get("reason") == reason]


async def _burst(url: str, key: str, n: int, traceparent: str | None = None) -> list[tuple[int, float]]:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["wake up"]}]}
    # The activator routes by the Service the caller reached (its Host name), never by a header of ours.
    headers = {"Host": "{1}.{0}.svc".format(*key.split("/"))} | ({"traceparent": traceparent} if traceparent else {})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:

        async def one():
            t0 = time.monotonic()
            async with session.post(f"{url}/v2/models/minilm/infer", json=body, headers=headers) as r:
                await r.read()
                return r.status, time.monotonic() - t0

        return await asyncio.gather(*(one() for _ in range(n)))


def _served_total(twins) -> float:
    total = 0.0
    for t in list(twins.twins.values()):
        try:
            with urllib.request.urlopen(f"{t.url}/metrics", timeout=2) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("elastiserve_requests_total{") and 'code="200"' in line:
                        total += float(line.rsplit(" ", 1)[1])
        except OSError:
            pass
    return total


def _by_name(spans, service, name):
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, f"{service}:{name} x{len(found)} in {sorted(f'{s.service}:{s.name}' for s in spans)}"
    return found[0]


def _request_tree_complete(spans) -> bool:
    names = {(s.service, s.name) for s in spans}
    return {("elastiserve-activator", "activator.wake"), ("elastiserve-server", "inference")} <= names


def test_zero_to_one_and_back(k8s_cluster, namespace, prometheus_factory, operator_factory, model_dir, tmp_path, jaeger):
    podtwin = load_hack("podtwin")
    from kubernetes import config as k8s_config

    twins_dir = tmp_path / "twins"
    twins_dir.mkdir()
    (twins_dir / "targets.json").write_text("[]")
    act_port = free_port()
    prom = prometheus_factory([], scrape_interval="1s")
    prom.stop()
    prom.config["scrape_configs"] = [
        {"job_name": "models", "scrape_interval": "1s",
         "file_sd_configs": [{"files": [str(twins_dir / "targets.json")], "refresh_interval": "1s"}]},
        {"job_name": "activator", "scrape_interval": "1s", "honor_labels": True,
         "static_configs": [{"targets": [f"127.0.0.1:{act_port}"]}]},
    ]
    prom.start()

    k8s_config.load_kube_config(str(k8s_cluster.kubeconfig))
    twins = podtwin.PodTwins(namespace, twins_dir, extra_env={"ELASTISERVE_INTRA_OP_THREADS": "1"})
    stop = threading.Event()
    threading.Thread(target=twins.run, args=(stop, 0.05), daemon=True).start()
    act_log = (tmp_path / "activator.log").open("w")
    activator = subprocess.Popen(
        [sys.executable, "-m", "elastiserve.cli", "activator", "--host", "127.0.0.1", "--port", str(act_port),
         "--endpoints-file", str(twins_dir / "endpoints.json"), "--timeout", "60"],
        env=dict(k8s_cluster.env) | jaeger.env(), stdout=act_log, stderr=subprocess.STDOUT,
    )
    try:
        # The operator traces its cycles; the model-server pods inherit its OTEL_* settings.
        operator_factory("--activator-address", "192.0.2.10:8080", namespace=namespace, prometheus_url=prom.url,
                         env=jaeger.env())
        k8s_cluster.apply(manifest(
            "lm",
            model={"name": "minilm", "uri": f"file://{model_dir}", "lazyLoading": {"preload": ["minilm"]}},
            variants=[{"name": "fp32", "capacityQps": 12},
                      {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 20,
                       "replicas": {"min": 0, "max": 2}}],
            replicas={"min": 0, "max": 2},
            syncPeriodSeconds=5,
            metrics={"windowSeconds": 10},
            behavior={"scaleDown": {"stabilizationWindowSeconds": 10,
                                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}},
            scaleToZero={"enabled": True, "idleSeconds": 30, "coldStartVariant": "int8"},
        ), namespace=namespace)

        # Starts at zero, routed to the activator (Service without selector + our EndpointSlice).
        wait_until(lambda: _status(k8s_cluster, namespace, "lm").get("routing") == "activator", timeout=60,
                   what="routing to the activator")
        svc = k8s_cluster.kubectl_json("get", "service", "lm", "-n", namespace)
        assert "selector" not in svc["spec"]
        eps = k8s_cluster.kubectl_json("get", "endpointslice", "lm-activator", "-n", namespace)
        assert eps["endpoints"][0]["addresses"] == ["192.0.2.10"]
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{act_port}/healthz", timeout=1).status == 200,
                   timeout=30, what="activator up")

        # 100 concurrent first requests at zero: none lost, none duplicated.
        timeline = Timeline(k8s_cluster, namespace, "lm").start()
        t0 = time.monotonic()
        results = asyncio.run(_burst(f"http://127.0.0.1:{act_port}", f"{namespace}/lm", 100))
        marks = timeline.finish()
        statuses = [s for s, _ in results]
        assert statuses.count(200) == 100, f"statuses: {sorted(set(statuses))}"
        wait_until(lambda: _served_total(twins) == 100, timeout=10, what="servers counted exactly 100")
        first = min(lat for _, lat in results)
        twin = min(twins.twins.values(), key=lambda t: t.started)
        burst_figures = {
            "first_response_s": round(first, 3),
            "decision_s": round(marks.get("decided", float("nan")) - t0, 3),
            "pod_ready_s": round(marks.get("pod_ready", float("nan")) - t0, 3),
            "server_start_to_ready_s": round((twin.ready_at or float("nan")) - twin.started, 3),
            "first_response_beyond_server_start_s": round(first - ((twin.ready_at or 0) - twin.started), 3),
        }
        print("cold start, 100 concurrent first requests:", json.dumps(burst_figures))
        assert _status(k8s_cluster, namespace, "lm")["variants"]
        wait_until(lambda: _events(k8s_cluster, namespace, "RoutedToPods"), timeout=60, what="Service back to the pods")

        # Idle → zero again, with the reason in status and an Event.
        wait_until(lambda: _status(k8s_cluster, namespace, "lm").get("phase") == "ScaledToZero", timeout=150,
                   what="scale to zero after idleSeconds")
        assert _events(k8s_cluster, namespace, "ScaledToZero")
        assert "no requests for" in _status(k8s_cluster, namespace, "lm")["lastScaleReason"]
        wait_until(lambda: not twins.twins, timeout=60, what="server processes gone")
        wait_until(lambda: _status(k8s_cluster, namespace, "lm").get("routing") == "activator", timeout=60,
                   what="routing to the activator again")

        # One request at zero: served; the cold start broken into its parts.
        timeline = Timeline(k8s_cluster, namespace, "lm").start()
        t0 = time.monotonic()
        trace_id, client_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        (status, latency), = asyncio.run(_burst(f"http://127.0.0.1:{act_port}", f"{namespace}/lm", 1,
                                               traceparent=f"00-{trace_id}-{client_span}-01"))
        marks = timeline.finish()
        assert status == 200
        twin = next(iter(twins.twins.values()))
        start_to_ready = (twin.ready_at or t0) - twin.started
        figures = {
            "total_s": round(latency, 3),
            "decision_s": round(marks.get("decided", float("nan")) - t0, 3),
            "pod_ready_s": round(marks.get("pod_ready", float("nan")) - t0, 3),
            "server_process_start_to_ready_s": round(start_to_ready, 3),
            "beyond_server_start_s": round(latency - start_to_ready, 3),
        }
        print("cold start, one request:", json.dumps(figures))

        # That request is one trace in Jaeger: held by the activator while the model woke, then served.
        spans = jaeger.wait_for(trace_id, _request_tree_complete, what="the wake-up request's trace")
        front = _by_name(spans, "elastiserve-activator", "POST /{tail}")
        hold = _by_name(spans, "elastiserve-activator", "activator.hold")
        wake = _by_name(spans, "elastiserve-activator", "activator.wake")
        forward = _by_name(spans, "elastiserve-activator", "activator.forward")
        served = _by_name(spans, "elastiserve-server", "POST /v2/models/{name}/infer")
        inference = _by_name(spans, "elastiserve-server", "inference")
        assert front.parent_id == client_span
        assert hold.parent_id == front.span_id and wake.parent_id == hold.span_id
        assert forward.parent_id == front.span_id and served.parent_id == forward.span_id
        assert inference.parent_id == served.span_id
        assert hold.tags["elastiserve.outcome"] == "ready" and wake.tags["elastiserve.ready"] is True
        assert inference.tags["elastiserve.model"] == "minilm" and inference.tags["elastiserve.variant"] == "int8"

        # A cycle that scaled: its Event names its trace, which holds the queries, decide() and the patch.
        scaled = [e for e in _events(k8s_cluster, namespace, "Scaled") if "(trace " in e.get("message", "")]
        assert scaled, "no Scaled Event carries a trace id"
        cycle_id = scaled[-1]["message"].rsplit("(trace ", 1)[1].rstrip(")")
        cycle = jaeger.wait_for(cycle_id, lambda ss: any(s.name == "apply Deployment" for s in ss),
                                what="the scaling cycle's trace")
        root = _by_name(cycle, "elastiserve-operator", "cycle")
        assert root.parent_id is None and root.tags["elastiserve.modeldeployment"] == "lm"
        decide_span = _by_name(cycle, "elastiserve-operator", "decide")
        assert decide_span.parent_id == root.span_id and decide_span.tags["elastiserve.reasons"]
        queries = [s for s in cycle if s.name.startswith("prometheus ")]
        assert queries and all(s.tags["db.query.text"] for s in queries)
        patches = [s for s in cycle if s.name == "apply Deployment"
                   and s.tags.get("elastiserve.field_manager") == "elastiserve-scaler"]
        assert patches, sorted(s.name for s in cycle)
        dump = os.environ.get("ELASTISERVE_TRACE_DUMP")  # docs/observability.md draws its figures from these
        if dump:
            Path(dump).mkdir(parents=True, exist_ok=True)
            (Path(dump) / "wake-request.json").write_text(json.dumps(jaeger.raw(trace_id)))
            (Path(dump) / "scaling-cycle.json").write_text(json.dumps(jaeger.raw(cycle_id)))

        # Turning scale-to-zero off restores the minimum.
        k8s_cluster.kubectl("patch", "mdep", "lm", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"scaleToZero": {"enabled": False}, "replicas": {"min": 1, "max": 2}}}))
        wait_until(lambda: sum(v["desired"] for v in _status(k8s_cluster, namespace, "lm")["variants"]) >= 1
                   and _status(k8s_cluster, namespace, "lm").get("routing") == "pods",
                   timeout=90, what="min replicas restored and routed to the pods")
    finally:
        stop.set()
        twins.stop_all()
        activator.terminate()
        activator.wait(10)
    log = (tmp_path / "activator.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_activator_timeout_gives_503_with_retry_after(tmp_path):
    """No replica ever comes (the model does not exist): the held request gets 503 + Retry-After."""
    port = free_port()
    (tmp_path / "e.json").write_text("{}")  # known namespace, no replica ever
    proc = subprocess.Popen([sys.executable, "-m", "elastiserve.cli", "activator", "--host", "127.0.0.1",
                             "--port", str(port), "--endpoints-file", str(tmp_path / "e.json"), "--timeout", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200,
                   timeout=30, what="activator up")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/m/infer", data=b"{}", method="POST",
                                     headers={"Host": "none.nowhere.svc"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 503 and info.value.headers["Retry-After"] == "5"
    finally:
        proc.terminate()
        proc.wait(10)
