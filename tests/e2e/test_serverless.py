"""Serverless on real pods: zero → burst of first requests → served → idle → zero → one request → served.

A real control plane with a real node (containerd, runc, kubelet; tests/support/real_node.py), the chart
installed from the project's image: the operator and the activator run as its Deployments, and the
operator's model-server pods serve the MiniLM INT8 model they download from a model store on the node's
bridge. Requests go to the model's Service, as a client in the cluster sends them (by its name); while
the model is at zero the Service points at the in-cluster activator. Prometheus discovers the pods
(kubernetes_sd). Every component sends traces to a real Jaeger: the request that wakes the model and a
cycle that scaled are read back through Jaeger's query API.
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

from elastiserve.operator.builders import ACTIVATOR_SELECTOR
from support import wait_until
from support.cluster import create_namespace
from support.devstack import free_port, manifest
from support.jaeger import start_jaeger
from support.real_node import (
    NODE_GATEWAY, SYSTEM_NS, RealCluster, discovering_prometheus, helm_install, serve_directory,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.model, pytest.mark.e2e, pytest.mark.node]

RELEASE = "es"
ACTIVATOR_HOLD_S = 120
"""The activator's hold: longer than a real pod's cold start on a busy 2-core machine (docs/local-cluster.md)."""


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from elastiserve.serving import paths

    d = paths.model_dir()
    for cmd in (["model", "build"], ["model", "quantize"]):
        target = d / paths.VARIANT_FILES["fp32" if cmd[1] == "build" else "int8"]
        if not target.exists():
            subprocess.run([sys.executable, "-m", "elastiserve.cli", *cmd], check=True, timeout=900)
    return d


@pytest.fixture(scope="module")
def stack(real_cluster: RealCluster, model_dir: Path, tmp_path_factory):
    """Jaeger (OTLP on the node's bridge, for the pods), Prometheus discovering the pods, the model store,
    and the chart installed with tracing on."""
    work = tmp_path_factory.mktemp("serverless")
    jaeger, stop_jaeger = start_jaeger(work, otlp_host=NODE_GATEWAY)
    store, stop_store = serve_directory(model_dir.parent)
    try:
        with discovering_prometheus(real_cluster, work) as prom:
            helm_install(real_cluster, RELEASE, {
                "operator.prometheusUrl": prom.url, "activator.timeoutSeconds": str(ACTIVATOR_HOLD_S),
                "tracing.enabled": "true", "tracing.endpoint": jaeger.otlp_url, "tracing.samplingRatio": "1"})
            yield real_cluster, jaeger, prom, f"{store}/{model_dir.name}"
    finally:
        stop_store()
        stop_jaeger()


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


def _pods(cluster, ns, name) -> list[dict]:
    return [p for p in cluster.kubectl_json("get", "pods", "-n", ns, "-l",
                                            f"elastiserve.dev/modeldeployment={name}")["items"]
            if p["metadata"].get("deletionTimestamp") is None]


async def _burst(url: str, key: str, n: int, traceparent: str | None = None) -> list[tuple[int, float]]:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["wake up"]}]}
    # A client in the cluster reaches the model's Service by its name: the activator routes by that Host name,
    # never by a header of ours.
    headers = {"Host": "{1}.{0}.svc".format(*key.split("/"))} | ({"traceparent": traceparent} if traceparent else {})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ACTIVATOR_HOLD_S + 30)) as session:

        async def one():
            t0 = time.monotonic()
            async with session.post(f"{url}/v2/models/minilm/infer", json=body, headers=headers) as r:
                await r.read()
                return r.status, time.monotonic() - t0

        return await asyncio.gather(*(one() for _ in range(n)))


def _activator_behind(url: str) -> bool:
    """The Service's address answers with the activator's health (kube-proxy has programmed its endpoint).
    A new Service, or a new endpoint of one, is reachable only once kube-proxy has synced it (by default at
    most a second after it saw the change); until then a connection to it is refused."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return r.status == 200 and "held_bytes" in json.loads(r.read())
    except (OSError, ValueError):
        return False


def _served_total(cluster, ns, name) -> float:
    """Requests the model-server pods answered 200, from their own /metrics (scraped at the pod IPs)."""
    total = 0.0
    for pod in _pods(cluster, ns, name):
        ip = pod["status"].get("podIP")
        port = pod["metadata"].get("annotations", {}).get("prometheus.io/port")
        if not ip or not port:
            continue
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=2) as r:  # noqa: S310 - our pod
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
    """Every span of the wake-up request has arrived (the pods export in batches, every 5 s by default)."""
    names = {(s.service, s.name) for s in spans}
    return {("elastiserve-activator", "POST /{tail}"), ("elastiserve-activator", "activator.hold"),
            ("elastiserve-activator", "activator.wake"), ("elastiserve-activator", "activator.forward"),
            ("elastiserve-server", "POST /v2/models/{name}/infer"), ("elastiserve-server", "inference")} <= names


def _assert_kubelet_panels(prom, namespace: str, name: str, start: float) -> dict[str, int]:
    """The dashboards' panels that read the kubelet's cAdvisor (CPU and memory per pod) return data for these
    real pods: their own queries, with Grafana's variables, over the test's time range. The kwok-based
    dashboards test (tests/integration/test_dashboards.py) checks every other panel. Returns the number of
    pods each panel drew."""
    from support import dashboards as dashboards_support

    dashboards = dashboards_support.load()
    step = 2.0
    drawn: dict[str, int] = {}
    for d in dashboards.DASHBOARDS:
        for panel in d.panels:
            for target in (t for t in panel.targets if dashboards_support.reads_kubelet(t.expr)):

                def evaluated():
                    end = time.time()
                    # $__rate_interval for the chart's 15 s scrape interval: the kubelet's cAdvisor refreshes
                    # its figures every 10-15 s (housekeeping), so a window of a few seconds holds one sample.
                    values = {"namespace": namespace, "modeldeployment": name, "variant": ["fp32", "int8"],
                              "slo_latency": "0.2"} | dashboards.spec.builtins(
                        range_seconds=end - start, step_seconds=step, scrape_seconds=15)
                    expr = dashboards.spec.expand(target.expr, values)
                    series, finite = dashboards_support.evaluate(prom, panel, expr, start, end, step)
                    return (series, expr) if series and finite else None

                series, expr = wait_until(evaluated, timeout=60, what=f"{d.uid}/{panel.title}: data from the kubelet")
                pods = {s["metric"].get("pod", "") for s in series}
                assert pods and all(p.startswith(f"{name}-") for p in pods), (expr, pods)
                drawn[f"{d.uid}/{panel.title}"] = len(pods)
    assert drawn, "no dashboard panel reads the kubelet's cAdvisor"
    return drawn


def test_zero_to_one_and_back(stack, tmp_path):
    real, jaeger, prom, store = stack
    started = time.time()
    k8s_cluster = real.cluster
    namespace = create_namespace(k8s_cluster, "serverless")
    k8s_cluster.apply(manifest(
        "lm",
        model={"name": "minilm", "uri": store, "lazyLoading": {"memoryBudget": "512Mi", "preload": ["minilm"]}},
        template={"image": real.image,
                  "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m", "memory": "1Gi"}}},
        variants=[{"name": "fp32", "capacityQps": 12},
                  {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 12,
                   "replicas": {"min": 0, "max": 2}}],
        replicas={"min": 0, "max": 2},
        syncPeriodSeconds=5,
        metrics={"windowSeconds": 10},
        behavior={"scaleDown": {"stabilizationWindowSeconds": 10,
                                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}},
        scaleToZero={"enabled": True, "idleSeconds": 30, "coldStartVariant": "int8"},
    ), namespace=namespace)

    # Starts at zero, routed to the activator (Service selecting no pod + our EndpointSlice of its pods).
    wait_until(lambda: _status(k8s_cluster, namespace, "lm").get("routing") == "activator", timeout=90,
               what="routing to the activator")
    svc = k8s_cluster.kubectl_json("get", "service", "lm", "-n", namespace)
    assert svc["spec"]["selector"] == ACTIVATOR_SELECTOR  # a label no pod carries: it selects none
    # The chart gives the operator the activator's Service (--activator-service); the slice names that Service's
    # Ready pods (kube-proxy translates a Service address once, so another Service's cluster IP would not do).
    activator_ips = sorted(p["status"]["podIP"] for p in k8s_cluster.kubectl_json(
        "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=activator")["items"])
    eps = k8s_cluster.kubectl_json("get", "endpointslice", "lm-activator", "-n", namespace)
    assert sorted(a for e in eps["endpoints"] for a in e["addresses"]) == activator_ips
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    # The status says where the API objects point; the first request waits until the node's kube-proxy agrees.
    wait_until(lambda: _activator_behind(url), timeout=30, what="the Service's address reaching the activator")

    # 100 concurrent first requests at zero: none lost, none duplicated.
    timeline = Timeline(k8s_cluster, namespace, "lm").start()
    t0 = time.monotonic()
    results = asyncio.run(_burst(url, f"{namespace}/lm", 100))
    marks = timeline.finish()
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 100, f"statuses: {sorted(set(statuses))}"
    wait_until(lambda: _served_total(k8s_cluster, namespace, "lm") == 100, timeout=30,
               what="the pods counted exactly 100")
    burst_figures = {
        "first_response_s": round(min(lat for _, lat in results), 3),
        "last_response_s": round(max(lat for _, lat in results), 3),
        "decision_s": round(marks.get("decided", float("nan")) - t0, 3),
        "pod_ready_s": round(marks.get("pod_ready", float("nan")) - t0, 3),
    }
    print("cold start on a real pod, 100 concurrent first requests:", json.dumps(burst_figures))
    assert _status(k8s_cluster, namespace, "lm")["variants"]
    wait_until(lambda: _events(k8s_cluster, namespace, "RoutedToPods"), timeout=60, what="Service back to the pods")
    # the activator's own count of what it held and forwarded, scraped from its pod by discovery
    prom.wait_for_query(f'sum(elastiserve_activator_requests_total{{namespace="{namespace}",modeldeployment="lm",'
                        f'code="200"}}) >= 100', timeout=60)

    # Idle → zero again, with the reason in status and an Event.
    wait_until(lambda: _status(k8s_cluster, namespace, "lm").get("phase") == "ScaledToZero", timeout=150,
               what="scale to zero after idleSeconds")
    assert _events(k8s_cluster, namespace, "ScaledToZero")
    # The Service pointed at the activator before the replicas were removed (docs/operator.md): the status
    # already says so, and the newest RoutedToActivator precedes the newest ScaledToZero (same-message Events
    # are aggregated: lastTimestamp is the newest occurrence, one-second resolution; the gap is >= 10 s).
    assert _status(k8s_cluster, namespace, "lm")["routing"] == "activator"
    newest = {reason: max(e.get("lastTimestamp") or e.get("eventTime") or "" for e in _events(k8s_cluster, namespace, reason))
              for reason in ("RoutedToActivator", "ScaledToZero")}
    assert newest["RoutedToActivator"] < newest["ScaledToZero"], newest
    assert "no requests for" in _status(k8s_cluster, namespace, "lm")["lastScaleReason"]
    wait_until(lambda: not _pods(k8s_cluster, namespace, "lm"), timeout=90, what="model-server pods gone")
    wait_until(lambda: _status(k8s_cluster, namespace, "lm").get("routing") == "activator", timeout=60,
               what="routing to the activator again")
    # Only the activator behind the Service: no other slice names an address. (Without a selector the
    # controllers had left theirs naming the replicas just removed, and a request went to one.)
    def addresses():
        return {s["metadata"]["name"]: sorted(a for e in s.get("endpoints") or [] for a in e["addresses"])
                for s in k8s_cluster.kubectl_json("get", "endpointslices", "-n", namespace, "-l",
                                                  "kubernetes.io/service-name=lm")["items"]}

    try:
        wait_until(lambda: [n for n, a in addresses().items() if a] == ["lm-activator"], timeout=30,
                   what="the activator's slice is the only one with addresses")
    except AssertionError:
        raise AssertionError(f"the Service's EndpointSlices and their addresses: {addresses()}") from None
    assert addresses()["lm-activator"] == activator_ips

    # One request at zero: served; the cold start broken into its parts.
    timeline = Timeline(k8s_cluster, namespace, "lm").start()
    t0 = time.monotonic()
    trace_id, client_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    (status, latency), = asyncio.run(_burst(url, f"{namespace}/lm", 1, traceparent=f"00-{trace_id}-{client_span}-01"))
    marks = timeline.finish()
    assert status == 200
    figures = {
        "total_s": round(latency, 3),
        "decision_s": round(marks.get("decided", float("nan")) - t0, 3),
        "pod_ready_s": round(marks.get("pod_ready", float("nan")) - t0, 3),
    }
    print("cold start on a real pod, one request:", json.dumps(figures))

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
    # nothing crashed: the activator's log has no traceback
    log = k8s_cluster.kubectl("logs", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=activator",
                              "--tail=-1").stdout
    assert "Traceback" not in log, log[-3000:]
    # The dashboards' CPU and memory panels draw what the kubelet measured in these pods.
    print("dashboard panels from the kubelet (pods drawn):", json.dumps(_assert_kubelet_panels(
        prom, namespace, "lm", started)))


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
