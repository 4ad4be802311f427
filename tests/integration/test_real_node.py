"""`helm install` on a real node: the operator, the activator and a model server run as real pods.

Unlike the kwok clusters of the other integration tests, the node here runs containers (containerd +
runc, CNI bridge, kubelet, kube-proxy; see hack/node.sh), from the image built out of the
repository's Dockerfile (hack/image.sh). What this proves and kwok cannot: the image starts each
process, the chart's Deployments become Ready by their real probes with in-cluster config and their
ServiceAccounts, the operator creates model-server pods that listen where their probes and Service
connect, the CPU/memory limits are cgroup limits, and nothing addressed to the pod or Service ranges
leaves the machine.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import wait_until
from support.cluster import create_namespace, run_cluster_sh
from support.real_node import (
    HPA_SYNC_PERIOD_S, NFT_TABLE, NODE_GATEWAY, NODE_MONITOR_GRACE_S, NODE_NAME, POD_CIDR, SYSTEM_NS, RealCluster,
    helm_install, serve_directory,
)

pytestmark = [pytest.mark.cluster, pytest.mark.node]

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "es"
CLUSTER_DNS_IP = "10.96.0.10"
ACTIVATOR_HOLD_S = 120
"""The activator's hold (chart ``activator.timeoutSeconds``, default 30 s) in these tests: a node NotReady for
half a minute or more keeps every replica not Ready that long (bench/real_pod.py installs with 180 s too)."""


def _http_get(url: str, timeout: float = 3) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own pods/Services
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _nft_counters() -> dict[str, int]:
    """Packets counted by each egress-guard rule, keyed by the rule's comment."""
    out = subprocess.run(["nft", "-j", "list", "table", "inet", NFT_TABLE], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    counters: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        packets = sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        counters[rule.get("comment", f"{rule['chain']}#{rule['handle']}")] = packets
    return counters


def _pod_cgroup(subsystem: str, uid: str) -> Path:
    matches = list(Path(f"/sys/fs/cgroup/{subsystem}/kubepods").glob(f"**/pod{uid}"))
    assert len(matches) == 1, f"pod cgroup pod{uid} under /sys/fs/cgroup/{subsystem}/kubepods: {matches}"
    return matches[0]


@pytest.fixture(scope="module")
def installed(real_cluster: RealCluster) -> RealCluster:
    """The chart installed from our image, pulled never: operator and activator Ready for real."""
    helm_install(real_cluster, RELEASE, {"activator.timeoutSeconds": str(ACTIVATOR_HOLD_S)}, timeout_s=240)
    return real_cluster


@pytest.fixture
def namespace_real(real_cluster: RealCluster, request: pytest.FixtureRequest):
    """A fresh namespace on the real-node cluster, deleted after the test."""
    k = real_cluster.cluster
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    create_namespace(k, name)
    try:
        yield name
    finally:
        k.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_the_node_is_real_and_ready(real_cluster: RealCluster):
    node = real_cluster.cluster.kubectl_json("get", "node", NODE_NAME)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    # the node's address is the bridge's: the kubelet never listens on the machine's uplink
    assert {a["type"]: a["address"] for a in node["status"]["addresses"]}["InternalIP"] == NODE_GATEWAY
    # system- and kube-reserved keep a share of the machine's cores for everything else
    cap, alloc = node["status"]["capacity"], node["status"]["allocatable"]
    to_milli = lambda q: int(q[:-1]) if q.endswith("m") else int(q) * 1000  # noqa: E731
    assert to_milli(alloc["cpu"]) == to_milli(cap["cpu"]) - 1000


def test_helm_install_runs_operator_and_activator_in_cluster(installed: RealCluster):
    k = installed.cluster
    pods = k.kubectl_json("-n", SYSTEM_NS, "get", "pods")["items"]
    assert {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods} >= {"operator", "activator"}
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_NAME
        statuses = pod["status"]["containerStatuses"]
        assert all(s["ready"] and "running" in s["state"] for s in statuses), pod["metadata"]["name"]
        assert all(s["image"].endswith(installed.tag) or installed.tag in s["image"] for s in statuses)
        # the operator and the activator talk to the API server with their ServiceAccounts' tokens
        assert pod["spec"]["serviceAccountName"].endswith(pod["metadata"]["labels"]["app.kubernetes.io/component"])


@pytest.fixture(scope="module")
def model_store(minilm_cli) -> Iterator[str]:
    """The built MiniLM served over HTTP on the node's bridge address (reachable by the pods only)."""
    run, model_dir = minilm_cli
    if not (model_dir / "model.onnx").exists():
        result = run("build")
        assert result.exit_code == 0, result.output
    base, stop = serve_directory(model_dir.parent)
    try:
        yield f"{base}/{model_dir.name}"
    finally:
        stop()


def test_a_modeldeployment_gets_a_ready_model_server_pod_that_serves_through_its_service(
        installed: RealCluster, model_store: str, namespace_real: str):
    k = installed.cluster
    ns = namespace_real
    k.apply({
        "apiVersion": "elastiserve.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "minilm", "namespace": ns},
        "spec": {
            # preloaded: Ready means the server fetched the model from the store and loaded it
            "model": {"name": "minilm", "uri": model_store,
                      "lazyLoading": {"memoryBudget": "512Mi", "preload": ["minilm"]}},
            "template": {
                "image": installed.image,
                "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
            },
            "replicas": {"min": 1, "max": 1},
            # The activator serves only models that scale to zero (issue 18); idle for an hour first.
            "scaleToZero": {"enabled": True, "idleSeconds": 3600},
        },
    })
    created = time.monotonic()

    def ready_pod():
        for pod in k.kubectl_json("-n", ns, "get", "pods", "-l", "elastiserve.dev/modeldeployment=minilm")["items"]:
            conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conds.get("Ready") == "True":
                return pod
        return None

    pod = wait_until(ready_pod, timeout=300, interval=1, what="a Ready model-server pod")
    print(f"\nmodel-server pod (fp32, preloaded over HTTP) Ready {time.monotonic() - created:.1f}s after the "
          "ModelDeployment was applied")
    assert pod["spec"]["nodeName"] == NODE_NAME
    # The readiness probe passed for real: the server answers on the pod IP...
    status, body = _http_get(f"http://{pod['status']['podIP']}:8080/v2/health/ready")
    assert status == 200 and json.loads(body)["ready"] is True
    # ...and through its Service from the host (kube-proxy's DNAT), with real embeddings
    svc = k.kubectl_json("-n", ns, "get", "service", "minilm")
    url = f"http://{svc['spec']['clusterIP']}:80/v1/models/minilm:embed"
    req = urllib.request.Request(url, data=json.dumps({"texts": ["a real pod", "on a real node"]}).encode(),
                                 headers={"Content-Type": "application/json"})

    def embed():
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own Service
            return json.loads(resp.read())

    out = wait_until(embed, timeout=30, interval=0.5, what=f"POST {url}")
    assert out["dim"] == 384 and len(out["embeddings"]) == 2
    # ...and through the in-cluster activator, which finds the replica with its KubernetesResolver
    # (the EndpointSlices of minilm-pods, read with its ServiceAccount) and forwards to the pod. It routes
    # by the Service the caller reached (the Host name), as a request sent to that Service at zero would.
    activator = k.kubectl_json("-n", SYSTEM_NS, "get", "service", f"{RELEASE}-elastiserve-activator")
    via = urllib.request.Request(
        f"http://{activator['spec']['clusterIP']}:80/v1/models/minilm:embed",
        data=json.dumps({"texts": ["through the activator"]}).encode(),
        headers={"Content-Type": "application/json", "Host": f"minilm.{ns}.svc"})
    with urllib.request.urlopen(via, timeout=30) as resp:  # noqa: S310 - our own Service
        assert resp.status == 200
        assert json.loads(resp.read())["dim"] == 384
    # the limits are cgroup (v1) limits: CFS quota 500m of a 100ms period, and the memory limit
    uid = pod["metadata"]["uid"]
    cpu = _pod_cgroup("cpu", uid)
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50000
    assert int((cpu / "cpu.cfs_period_us").read_text()) == 100000
    mem = _pod_cgroup("memory", uid)
    assert int((mem / "memory.limit_in_bytes").read_text()) == 2**30


def test_nothing_addressed_to_the_pod_or_service_ranges_leaves_the_machine(installed: RealCluster):
    k = installed.cluster
    # Without the guard these would take the default route (the machine's uplink).
    unused_service_ip = "10.96.254.254"
    route = subprocess.run(["ip", "route", "get", unused_service_ip], capture_output=True, text=True, check=True).stdout
    assert "dev es-cni0" not in route and "dev lo" not in route, route
    before = _nft_counters()
    # from the host: a Service IP kube-proxy does not know is rejected at once, not sent out
    with socket.socket() as s:
        s.settimeout(5)
        code = s.connect_ex((unused_service_ip, 80))
    assert code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.EACCES, errno.EPERM, errno.ENETUNREACH), code
    after_host = _nft_counters()
    key = next(c for c in after_host if "Service IP kube-proxy did not translate" in c)
    assert after_host[key] > before[key]
    # from a pod: traffic to the same address is dropped when forwarded, never routed to the uplink
    pod = next(p for p in k.kubectl_json("-n", SYSTEM_NS, "get", "pods")["items"]
               if p["metadata"]["labels"].get("app.kubernetes.io/component") == "activator")
    probe = ("import socket; s = socket.socket(); s.settimeout(2); "
             f"print(s.connect_ex(('{unused_service_ip}', 80)))")
    out = k.kubectl("-n", SYSTEM_NS, "exec", pod["metadata"]["name"], "--", "python", "-c", probe, timeout=60).stdout
    assert int(out.strip()) != 0
    after_pod = _nft_counters()
    dropped = sum(after_pod[c] - after_host.get(c, 0) for c in after_pod if "never forwarded" in c or "leaves only" in c)
    assert dropped >= 1, (after_host, after_pod)
    # and the pods' addresses live on the bridge
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(POD_CIDR)


def test_coredns_resolves_cluster_names_in_pods_and_nothing_else(installed: RealCluster):
    """Pods resolve through the kube-dns Service (CoreDNS on the bridge): Service names, fully qualified or by
    the search path; any other name gets NXDOMAIN at once (no forward plugin: no query leaves the machine)."""
    k = installed.cluster
    pod = next(p for p in k.kubectl_json("-n", SYSTEM_NS, "get", "pods")["items"]
               if p["metadata"]["labels"].get("app.kubernetes.io/component") == "activator")
    svc = k.kubectl_json("-n", SYSTEM_NS, "get", "service", f"{RELEASE}-elastiserve-activator")
    fqdn = f"{svc['metadata']['name']}.{SYSTEM_NS}.svc.cluster.local"
    names = [fqdn, svc["metadata"]["name"], "kubernetes.default", "example.com"]
    probe = (
        "import json, socket, time\n"
        "def res(n):\n"
        "    t = time.monotonic()\n"
        "    try:\n"
        "        out = sorted({a[4][0] for a in socket.getaddrinfo(n, 80, proto=socket.IPPROTO_TCP)})\n"
        "    except socket.gaierror as e:\n"
        "        out = 'error: ' + str(e)\n"
        "    return [out, time.monotonic() - t]\n"
        f"print(json.dumps({{'resolv': open('/etc/resolv.conf').read(), 'names': {{n: res(n) for n in {names!r}}}}}))\n"
    )
    out = json.loads(k.kubectl("-n", SYSTEM_NS, "exec", pod["metadata"]["name"], "--", "python", "-c", probe,
                               timeout=60).stdout)
    print(f"\nDNS from a pod: {out['names']}")
    assert f"nameserver {CLUSTER_DNS_IP}" in out["resolv"], out["resolv"]
    assert f"search {SYSTEM_NS}.svc.cluster.local svc.cluster.local cluster.local" in out["resolv"], out["resolv"]
    answers = out["names"]
    assert answers[fqdn][0] == [svc["spec"]["clusterIP"]]
    assert answers[svc["metadata"]["name"]][0] == [svc["spec"]["clusterIP"]]  # the namespace's search domain
    assert answers["kubernetes.default"][0] == ["10.96.0.1"]
    # outside the cluster domain: refused at once (with ndots:5 the search domains are tried first)
    assert str(answers["example.com"][0]).startswith("error"), answers["example.com"]
    assert answers["example.com"][1] < 2, answers["example.com"]


# ------------------------------------------------------------------ two replicas: discovery and node-level faults

PAIR = "minilm"
PAIR_NS = "real-pair"


def _ready_pods(k, ns: str, name: str) -> list[dict]:
    pods = k.kubectl_json("-n", ns, "get", "pods", "-l", f"elastiserve.dev/modeldeployment={name}")["items"]
    return [p for p in pods if p["metadata"].get("deletionTimestamp") is None
            and {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready") == "True"]


@pytest.fixture(scope="module")
def pair(installed: RealCluster, model_store: str) -> Iterator[str]:
    """A ModelDeployment with two Ready replicas on the real node (namespace yielded), served by the activator."""
    k = installed.cluster
    create_namespace(k, PAIR_NS)
    k.apply({
        "apiVersion": "elastiserve.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": PAIR, "namespace": PAIR_NS},
        "spec": {
            "model": {"name": "minilm", "uri": model_store,
                      "lazyLoading": {"memoryBudget": "512Mi", "preload": ["minilm"]}},
            "template": {"image": installed.image,
                         "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "300m", "memory": "1Gi"}}},
            "replicas": {"min": 2, "max": 2},
            "scaleToZero": {"enabled": True, "idleSeconds": 3600},
        },
    })
    try:
        wait_until(lambda: len(_ready_pods(k, PAIR_NS, PAIR)) == 2, timeout=300, interval=1,
                   what=f"two Ready replicas of {PAIR_NS}/{PAIR}")
        yield PAIR_NS
    finally:
        k.kubectl("delete", "namespace", PAIR_NS, "--wait=false", "--ignore-not-found", check=False)


class Traffic:
    """Requests sent one after another through the in-cluster activator's Service while a fault happens.

    Every outcome is kept (HTTP status, or the exception's name for a connection that failed), so a test
    can show that no request was lost."""

    def __init__(self, k, ns: str, name: str, base: str | None = None, timeout: float = 40) -> None:
        if base is None:
            activator = k.kubectl_json("-n", SYSTEM_NS, "get", "service", f"{RELEASE}-elastiserve-activator")
            base = f"http://{activator['spec']['clusterIP']}:80"
        self.url = f"{base}/v1/models/minilm:embed"
        self.host = f"{name}.{ns}.svc"
        self.timeout = timeout
        self.outcomes: list[tuple[float, int | str]] = []
        self.durations: list[float] = []
        self.gap_502: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> int | str:
        req = urllib.request.Request(self.url, data=json.dumps({"texts": ["a node-level fault"]}).encode(),
                                     headers={"Content-Type": "application/json", "Host": self.host})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - our own Service
                resp.read()
                return resp.status
        except urllib.error.HTTPError as e:
            if e.code == 502:
                self.gap_502.append(e.read().decode(errors="replace"))
            return e.code
        except (OSError, urllib.error.URLError) as e:
            return type(e).__name__

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            outcome = self._one()
            self.outcomes.append((sent, outcome))
            self.durations.append(time.monotonic() - sent)
            self._stop.wait(0.05)

    def ok_count(self) -> int:
        return sum(1 for _, o in self.outcomes if o == 200)

    def failures(self) -> list[tuple[float, int | str]]:
        return [(t, o) for t, o in self.outcomes if o != 200]

    def assert_none_lost(self, what: str, victim_ip: str) -> None:
        """No request lost: a request the activator forwarded to the dying replica (its container gone before
        its EndpointSlice says so) is retried on another Ready replica."""
        lost = self.failures()
        print(f"\n{what}: {len(self.outcomes)} requests through the activator, {len(lost)} lost: {lost[:5]}")
        assert not lost, (f"{what}: {len(lost)} of {len(self.outcomes)} requests lost while another replica was "
                          f"Ready (victim {victim_ip}): {lost[:5]}; activator answers: {self.gap_502[:5]}")

    def wait_ok(self, n: int, timeout: float = 60) -> None:
        """Wait until ``n`` more requests than now have succeeded."""
        target = self.ok_count() + n
        wait_until(lambda: self.ok_count() >= target, timeout=timeout, interval=0.2,
                   what=f"{n} more successful requests through the activator (outcomes: {self.outcomes[-5:]})")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 20)


def test_prometheus_discovers_model_servers_activator_operator_and_cadvisor(
        installed: RealCluster, pair: str, tmp_path: Path):
    """No target is registered by hand: kubernetes_sd_configs finds the pods and the kubelet."""
    from elastiserve.api import parse_spec
    from elastiserve.metrics.queries import render
    from support.prometheus import PrometheusServer

    k = installed.cluster
    if not installed.prometheus_sd or not Path(installed.prometheus_sd).exists():
        pytest.fail(f"Prometheus with kubernetes_sd_configs missing ({installed.prometheus_sd!r}): "
                    "run hack/cluster.sh build-node", pytrace=False)
    out = subprocess.run([sys.executable, str(ROOT / "hack" / "prometheus-sd.py"), "--out", str(tmp_path / "sd"),
                          "--kubeconfig", str(k.kubeconfig)], env=k.env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    config = json.loads(Path(out.stdout.strip()).read_text())
    assert all("static_configs" not in job and job["kubernetes_sd_configs"] for job in config["scrape_configs"])
    pods = {p["metadata"]["name"] for p in _ready_pods(k, pair, PAIR)}
    with Traffic(k, pair, PAIR) as traffic:
        traffic.wait_ok(10)
    with PrometheusServer(config=config, workdir=tmp_path / "prom", binary=installed.prometheus_sd) as prom:
        # the two model-server pods, found by their labels and scraped at their annotated port
        def model_targets_up() -> set[str]:
            return {t["discoveredLabels"]["__meta_kubernetes_pod_name"] for t in prom.api("targets")["activeTargets"]
                    if t["labels"]["job"] == "model-servers" and t["health"] == "up"}

        wait_until(lambda: model_targets_up() == pods, timeout=60, what=f"model-server targets {pods} up")
        targets = prom.api("targets")["activeTargets"]
        # their own series, labelled with namespace and pod by discovery
        sel = f'namespace="{pair}",modeldeployment="{PAIR}"'
        served = prom.wait_for_query(f"sum by (pod) (elastiserve_requests_total{{{sel}}})", timeout=60,
                                     predicate=lambda r: {s["metric"]["pod"] for s in r} == pods)
        assert sum(float(s["value"][1]) for s in served) >= 10
        # container CPU measured by the kubelet's cAdvisor (through the API server's node proxy)
        cpu = prom.wait_for_query(
            f'container_cpu_usage_seconds_total{{namespace="{pair}",container!="",container!="POD"}}', timeout=60,
            predicate=lambda r: {s["metric"]["pod"] for s in r} >= pods)
        assert all(float(s["value"][1]) > 0 for s in cpu if s["metric"]["pod"] in pods)
        assert {s["metric"]["node"] for s in cpu} == {NODE_NAME}
        # the operator and the activator pods; honor_labels keeps the model's namespace on their series
        prom.wait_for_query(f'elastiserve_operator_replicas{{namespace="{pair}",modeldeployment="{PAIR}"}} == 2', timeout=60)
        prom.wait_for_query(f'elastiserve_activator_requests_total{{{sel},code="200"}} >= 10', timeout=60)
        up = {t["labels"]["job"]: t["health"] for t in prom.api("targets")["activeTargets"]}
        assert up["elastiserve-operator"] == up["elastiserve-activator"] == up["cadvisor"] == "up", targets
        # and the operator's own CPU query (what scaling reads) finds the measured CPU of both replicas
        md = k.kubectl_json("-n", pair, "get", "modeldeployment", PAIR)
        query = render("cpu", parse_spec(md["spec"]), pair, PAIR)
        value = wait_until(lambda: prom.query_value(query), timeout=60, what=f"{query} returns a value")
        assert value > 0


def _cpu_millicores(quantity: str) -> float:
    """A CPU quantity of the metrics API (``12345678n``, ``5m``, ``1``) in millicores."""
    scale = {"n": 1e-6, "u": 1e-3, "m": 1.0}
    return float(quantity[:-1]) * scale[quantity[-1]] if quantity[-1] in scale else float(quantity) * 1000


def _pods_cpu_millicores(k, ns: str, check: bool = True) -> dict[str, float] | None:
    """CPU per pod of ``ns`` from the metrics API (metrics-server), in millicores; None when it did not answer."""
    out = k.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", check=check)
    if out.returncode != 0:
        return None
    return {i["metadata"]["name"]: sum(_cpu_millicores(c["usage"]["cpu"]) for c in i["containers"])
            for i in json.loads(out.stdout)["items"]}


def test_metrics_server_serves_the_model_servers_cpu_to_kubectl_top(installed: RealCluster, pair: str):
    """metrics.k8s.io through the aggregation layer: metrics-server reads the kubelet's /metrics/resource
    (verifying its serving certificate with the cluster CA) and `kubectl top` shows each model server's CPU."""
    k = installed.cluster

    def available():
        conds = k.kubectl_json("get", "apiservice", "v1beta1.metrics.k8s.io")["status"].get("conditions", [])
        return {c["type"]: c["status"] for c in conds}.get("Available") == "True"

    wait_until(available, timeout=60, what="APIService v1beta1.metrics.k8s.io Available")
    pods = {p["metadata"]["name"] for p in _ready_pods(k, pair, PAIR)}
    with Traffic(k, pair, PAIR) as traffic:
        traffic.wait_ok(20)

    def top() -> dict[str, str] | None:
        out = k.kubectl("top", "pod", "-n", pair, "--no-headers", check=False)
        rows = {ln.split()[0]: ln.split()[1] for ln in out.stdout.splitlines() if ln.strip()}
        return rows if out.returncode == 0 and pods <= set(rows) else None

    rows = wait_until(top, timeout=90, interval=2, what=f"`kubectl top pod -n {pair}` lists {pods}")
    usage = _pods_cpu_millicores(k, pair)
    print(f"\nkubectl top pod: {rows}; metrics API (millicores): {usage}")
    assert pods <= set(usage)
    assert all(usage[p] >= 0 for p in pods) and sum(usage[p] for p in pods) > 0, usage
    node = json.loads(k.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/nodes/{NODE_NAME}").stdout)
    assert _cpu_millicores(node["usage"]["cpu"]) > 0


def _plain_model_server_deployment(image: str, model_store: str, ns: str, name: str) -> dict:
    """The Deployment the operator would own for a model server (same container, probes, env), but standalone:
    no owner, its own labels, one replica, for a HorizontalPodAutoscaler to scale."""
    from elastiserve.api import parse_spec
    from elastiserve.operator.builders import build_deployment

    spec = parse_spec({
        "model": {"name": "minilm", "uri": model_store, "lazyLoading": {"memoryBudget": "512Mi", "preload": ["minilm"]}},
        "template": {"image": image,
                     "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "300m", "memory": "1Gi"}}},
        "replicas": {"min": 1, "max": 2},
    })
    body = build_deployment(spec, name, ns, "0", spec.variants[0])
    labels = {"app": name}
    body["metadata"] = {"name": name, "namespace": ns, "labels": labels}
    body["spec"]["selector"] = {"matchLabels": labels}
    body["spec"]["template"]["metadata"]["labels"] = labels
    body["spec"]["replicas"] = 1
    return body


def test_a_real_hpa_scales_a_model_server_deployment_under_load(
        installed: RealCluster, model_store: str, namespace_real: str):
    """autoscaling/v2 on CPU utilisation, computed by the real kube-controller-manager (sync period
    HPA_SYNC_PERIOD_S) from metrics-server's view of the kubelet: the baseline of issue 17's live comparison."""
    k = installed.cluster
    ns, name = namespace_real, "hpa-minilm"
    k.apply(_plain_model_server_deployment(installed.image, model_store, ns, name))
    k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
             "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    ready = lambda: [p for p in k.kubectl_json("-n", ns, "get", "pods", "-l", f"app={name}")["items"]  # noqa: E731
                     if {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready") == "True"]
    wait_until(lambda: len(ready()) == 1, timeout=300, interval=1, what=f"{ns}/{name}: one Ready model server")

    # A server just Ready still warms up: its first CPU rate in metrics-server can be past the target (73m of a
    # 100m request in one CI run), and an HPA created then scales an idle server. The HPA comes once
    # metrics-server reports the pod below a quarter of its request.
    def settled() -> list[float] | None:  # the list, not its value: an idle 0m would read as falsy
        usage = list((_pods_cpu_millicores(k, ns, check=False) or {}).values())
        return usage if len(usage) == 1 and usage[0] < 25 else None

    wait_until(settled, timeout=180, interval=2, what=f"{ns}/{name}: metrics-server reports the idle pod under 25m CPU")
    k.apply({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                 "minReplicas": 1, "maxReplicas": 2,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]},
    })
    hpa = lambda: k.kubectl_json("-n", ns, "get", "hpa", name)  # noqa: E731
    conditions = lambda h: {c["type"]: c["status"] for c in h.get("status", {}).get("conditions", [])}  # noqa: E731
    # metrics-server has a CPU rate for the pod (two scrapes after it became Ready) and the HPA uses it
    def active() -> dict | None:
        h = hpa()
        return h if conditions(h).get("ScalingActive") == "True" and h["status"].get("currentMetrics") else None

    idle = wait_until(active, timeout=120, interval=1, what=f"HPA {name} ScalingActive with a CPU metric")
    assert idle["status"]["desiredReplicas"] == 1, idle["status"]  # an idle server stays alone

    svc = k.kubectl_json("-n", ns, "get", "service", name)
    url = f"http://{svc['spec']['clusterIP']}:80/v1/models/minilm:embed"
    stop = threading.Event()
    codes: list[int | str] = []

    def load() -> None:  # closed loop, bounded by the test's deadlines below
        body = json.dumps({"texts": ["the real HPA under load " * 8] * 4}).encode()
        while not stop.is_set():
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our own Service
                    codes.append(resp.status)
            except (OSError, urllib.error.URLError) as e:
                codes.append(type(e).__name__)

    workers = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    started = time.monotonic()
    for w in workers:
        w.start()
    try:
        def at_two() -> dict | None:
            h = hpa()
            return h if h["status"].get("desiredReplicas") == 2 else None

        scaled = wait_until(at_two, timeout=180, interval=1, what=f"HPA {name} scales to 2 under load")
        reaction = time.monotonic() - started
        deploy = k.kubectl_json("-n", ns, "get", "deployment", name)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=40)
    cpu = next(m["resource"]["current"] for m in scaled["status"]["currentMetrics"] if m["type"] == "Resource")
    print(f"\nreal HPA: load -> desiredReplicas 2 in {reaction:.1f} s (sync period {HPA_SYNC_PERIOD_S} s); "
          f"CPU {cpu}; {len(codes)} requests, {sum(c == 200 for c in codes)} ok")
    assert cpu["averageUtilization"] > 50, cpu
    assert deploy["spec"]["replicas"] == 2  # the controller-manager wrote the scale, not the test
    assert scaled["status"].get("lastScaleTime")
    events = k.kubectl_json("-n", ns, "get", "events", "--field-selector",
                            f"involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={name}")["items"]
    assert any(e["reason"] == "SuccessfulRescale" and "cpu resource utilization" in e["message"] for e in events), \
        [e["message"] for e in events]
    # the Deployment controller creates the second replica on the node (its start is not this test's subject)
    wait_until(lambda: len(k.kubectl_json("-n", ns, "get", "pods", "-l", f"app={name}")["items"]) == 2, timeout=60,
               interval=0.5, what=f"{ns}/{name}: a second model-server pod")


def _converged(k, ns: str, name: str, exclude: set[str] = frozenset()) -> list[dict] | None:
    """Two Ready replicas (none of ``exclude``), and the ModelDeployment's Deployment agrees."""
    pods = _ready_pods(k, ns, name)
    if len(pods) != 2 or {p["metadata"]["name"] for p in pods} & exclude:
        return None
    deploys = k.kubectl_json("-n", ns, "get", "deployments", "-l", f"elastiserve.dev/modeldeployment={name}")["items"]
    if [d["status"].get("readyReplicas") for d in deploys] != [2]:
        return None
    return pods


def test_a_killed_model_server_container_restarts_and_no_request_is_lost(installed: RealCluster, pair: str):
    k = installed.cluster
    victim = sorted(_ready_pods(k, pair, PAIR), key=lambda p: p["metadata"]["name"])[0]
    status = victim["status"]["containerStatuses"][0]
    container_id = status["containerID"].split("://", 1)[1]
    procs = _pod_cgroup("cpu", victim["metadata"]["uid"]) / container_id / "cgroup.procs"
    pids = [int(p) for p in procs.read_text().split()]
    assert pids, f"no process in {procs}"
    with Traffic(k, pair, PAIR) as traffic:
        traffic.wait_ok(10)
        for pid in pids:  # the model server and whatever it started: the container dies at once
            os.kill(pid, signal.SIGKILL)

        def restarted():
            pod = k.kubectl_json("-n", pair, "get", "pod", victim["metadata"]["name"])
            return pod["status"]["containerStatuses"][0]["restartCount"] > status["restartCount"]

        wait_until(restarted, timeout=120, interval=0.5, what="the kubelet restarts the killed container")
        wait_until(lambda: _converged(k, pair, PAIR), timeout=300, interval=1, what="two Ready replicas again")
        traffic.wait_ok(10)
    traffic.assert_none_lost("container killed", victim["status"]["podIP"])


def test_an_evicted_pod_is_replaced_and_no_request_is_lost(installed: RealCluster, pair: str):
    k = installed.cluster
    victim_pod = sorted(_ready_pods(k, pair, PAIR), key=lambda p: p["metadata"]["name"])[0]
    victim = victim_pod["metadata"]["name"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim, "namespace": pair}}
    with Traffic(k, pair, PAIR) as traffic:
        traffic.wait_ok(10)
        # the Eviction API, as `kubectl drain` and the kubelet's node-pressure eviction use it
        k.kubectl("create", "--raw", f"/api/v1/namespaces/{pair}/pods/{victim}/eviction", "-f", "-",
                  input=json.dumps(eviction))
        wait_until(lambda: _converged(k, pair, PAIR, exclude={victim}), timeout=300, interval=1,
                   what=f"a replacement for {victim} Ready")
        traffic.wait_ok(10)
    traffic.assert_none_lost("pod evicted", victim_pod["status"]["podIP"])


def test_a_kubelet_restart_keeps_the_pods_and_no_request_is_lost(installed: RealCluster, pair: str):
    k = installed.cluster
    before = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
              for p in _ready_pods(k, pair, PAIR)}
    with Traffic(k, pair, PAIR) as traffic:
        traffic.wait_ok(10)
        run_cluster_sh("kubelet-restart", env=k.env, timeout=180)
        node_ready = lambda: {c["type"]: c["status"] for c in  # noqa: E731
                              k.kubectl_json("get", "node", NODE_NAME)["status"]["conditions"]}["Ready"] == "True"
        wait_until(node_ready, timeout=120, interval=1, what="the node Ready after the kubelet restart")
        pods = wait_until(lambda: _converged(k, pair, PAIR), timeout=120, interval=1, what="two Ready replicas")
        traffic.wait_ok(10)
    # the containers outlived their kubelet: same pods, no restart, and no request lost (nothing died)
    assert {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"] for p in pods} == before
    lost = traffic.failures()
    print(f"\nkubelet restarted: {len(traffic.outcomes)} requests through the activator, {len(lost)} lost")
    assert lost == []


KUBELET_DOWN_S = 60
"""How long the node-NotReady test keeps the kubelet stopped."""
KUBE_PROXY_SYNC_S = 5
"""From an endpoint Ready in the API to kube-proxy's rules sending new connections to it."""


def _node_ready(k) -> str:
    node = k.kubectl_json("get", "node", NODE_NAME)
    return {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]


def test_a_node_not_ready_for_a_minute_holds_requests_in_the_activator_and_converges(
        installed: RealCluster, pair: str):
    """The kubelet stopped for a minute: the controller-manager marks the node NotReady after its grace period
    (NODE_MONITOR_GRACE_S here) and every pod on it not Ready, although the containers keep running. Requests
    that reach the activator are held (no replica is Ready) and served once the node is back; requests sent
    to the activator's Service while the activator's own pod counts as not Ready find no endpoint (one node:
    there is no other activator replica) and are refused at the Service, which the test measures."""
    k = installed.cluster
    activator = next(p for p in k.kubectl_json("-n", SYSTEM_NS, "get", "pods")["items"]
                     if p["metadata"]["labels"].get("app.kubernetes.io/component") == "activator")
    port = next(pt["containerPort"] for c in activator["spec"]["containers"] for pt in c.get("ports", [])
                if pt.get("name") == "http")
    direct = Traffic(k, pair, PAIR, base=f"http://{activator['status']['podIP']}:{port}", timeout=ACTIVATOR_HOLD_S + 30)
    via_service = Traffic(k, pair, PAIR, timeout=ACTIVATOR_HOLD_S + 30)
    timeline: dict[str, float] = {}
    with direct, via_service:
        direct.wait_ok(5)
        via_service.wait_ok(5)
        t0 = timeline["kubelet stopped"] = time.monotonic()
        try:
            run_cluster_sh("kubelet-stop", env=k.env, timeout=60)
            wait_until(lambda: _node_ready(k) != "True", timeout=NODE_MONITOR_GRACE_S + 60, interval=0.5,
                       what=f"node {NODE_NAME} NotReady")
            timeline["node NotReady"] = time.monotonic()
            wait_until(lambda: not _ready_pods(k, pair, PAIR), timeout=60, interval=0.5,
                       what="the model servers marked not Ready")
            timeline["pods not Ready"] = time.monotonic()
            held_from = len(direct.outcomes)
            # The fault lasts KUBELET_DOWN_S: this wait is its duration, not a wait for state.
            time.sleep(max(0.0, KUBELET_DOWN_S - (time.monotonic() - t0)))
        finally:
            run_cluster_sh("kubelet-start", env=k.env, timeout=180)
        timeline["kubelet started"] = time.monotonic()
        wait_until(lambda: _node_ready(k) == "True", timeout=120, interval=0.5, what=f"node {NODE_NAME} Ready again")
        timeline["node Ready"] = time.monotonic()
        wait_until(lambda: _converged(k, pair, PAIR), timeout=180, interval=1, what="two Ready replicas again")
        timeline["converged"] = time.monotonic()

        def activator_ready() -> bool:
            pod = k.kubectl_json("-n", SYSTEM_NS, "get", "pod", activator["metadata"]["name"])
            return {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}.get("Ready") == "True"

        wait_until(activator_ready, timeout=120, interval=0.5, what="the activator pod Ready again")
        timeline["activator Ready"] = time.monotonic()
        direct.wait_ok(5, timeout=ACTIVATOR_HOLD_S)
        via_service.wait_ok(5, timeout=60)
    marks = ", ".join(f"{what} +{at - t0:.1f} s" for what, at in timeline.items())
    # Refusals before the fault belong to the previous test's fault (kube-proxy re-adding the activator's
    # endpoint after the kubelet restart): the Service must have answered last before the kubelet stopped.
    settled = max(t for t, o in via_service.outcomes if o == 200 and t < t0)
    early = [(t, o) for t, o in via_service.failures() if t < t0]
    before = [(round(t - t0, 1), o) for t, o in early]
    assert all(t < settled for t, _ in early), before
    refused = [(t, o) for t, o in via_service.failures() if t >= t0]
    print(f"\nnode NotReady: {marks}")
    print(f"through the activator pod: {len(direct.outcomes)} requests, {len(direct.failures())} lost, longest "
          f"{max(direct.durations):.1f} s; through its Service: {len(via_service.outcomes)} requests, longest "
          f"{max(via_service.durations):.1f} s, {len(refused)} refused at "
          f"{[f'+{t - t0:.1f} s: {o}' for t, o in refused]}; before the fault: {before}")
    # the pods were really marked not Ready for a while, and requests were held that long, then served
    assert timeline["node NotReady"] - t0 >= NODE_MONITOR_GRACE_S * 0.5
    assert max(direct.durations[held_from:]) > 5, direct.durations[held_from:]
    direct.assert_none_lost("node NotReady (activator pod)", activator["status"]["podIP"])
    # at the Service: only connections refused (never an answer with an error), and only while the activator's
    # pod counted as not Ready (until kube-proxy has its endpoint again: a few seconds after the API says Ready)
    assert all(isinstance(o, str) for _, o in refused), refused
    back = max(timeline["converged"], timeline["activator Ready"]) + KUBE_PROXY_SYNC_S
    # (the lower bound: not before the grace period could have run out; our 0.5 s poll of the node may see the
    # NotReady mark after kube-proxy has already dropped the endpoint)
    assert all(t0 + NODE_MONITOR_GRACE_S / 2 <= t <= back for t, _ in refused), \
        [(round(t - t0, 1), o) for t, o in refused]
