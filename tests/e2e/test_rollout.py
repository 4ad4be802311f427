"""Model version rollouts on real pods: a good version is rolled out step by step, a bad one rolled back.

A real control plane with a real node (containerd, runc, kubelet; tests/support/real_node.py), the chart
installed from the project's image: the operator runs as its Deployment and creates real model-server pods
(stable and canary tracks) from the same image. Prometheus discovers the pods (kubernetes_sd) and scrapes
them every second; the rollout gate reads it. Three versions of a tiny encoder sit in a model store on the
node's bridge: v1 and v2 are healthy (different weights, so every response tells which version served it),
v3's artifact is corrupt, so its servers answer 500 to every request (a broken release).

The load is spread over the ready endpoints of the model's Service (its EndpointSlices, what kube-proxy
spreads connections over), request by request, so that each response is known to come from one pod.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from support import wait_until
from support.cluster import create_namespace
from support.devstack import manifest
from support.real_node import RealCluster, discovering_prometheus, helm_install, serve_directory

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.e2e, pytest.mark.node]

TEXT = "the quick brown fox"
SYNC_SECONDS = 5
RELEASE = "es"


@dataclass
class Stack:
    real: RealCluster
    store: Path
    """The model store's directory; ``store_url`` serves it to the pods."""
    store_url: str


@pytest.fixture(scope="module")
def stack(real_cluster: RealCluster, tmp_path_factory):
    """The model store on the node's bridge, Prometheus discovering the pods (1 s scrapes: the gate's
    windows are seconds long), and the chart installed with the operator reading that Prometheus."""
    work = tmp_path_factory.mktemp("rollout")
    store = work / "store"
    store.mkdir()
    url, stop_store = serve_directory(store)
    try:
        with discovering_prometheus(real_cluster, work) as prom:
            helm_install(real_cluster, RELEASE, {"operator.prometheusUrl": prom.url})
            yield Stack(real_cluster, store, url)
    finally:
        stop_store()


def _template(real: RealCluster) -> dict:
    """The project's image, CPU and memory limited. The operator raises a pod's memory request to the lazy-loading
    budget plus the runtime, so the specs below set a budget a tiny encoder needs (``LAZY``): four pods of the
    default 1Gi budget would not fit the node's 4Gi for pods."""
    return {"image": real.image,
            "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "500m", "memory": "512Mi"}}}


LAZY = {"memoryBudget": "128Mi"}


def _store(root: Path) -> dict[str, np.ndarray]:
    """v1, v2: healthy tiny encoders with different weights; v3: a corrupt artifact. Returns the embedding
    of TEXT under each healthy version."""
    from elastiserve.serving.builder import build_tiny_model
    from elastiserve.serving.runtime import Embedder

    expected = {}
    for version, seed in (("v1", 1), ("v2", 2)):
        build_tiny_model(root / version, seed=seed)
        expected[version] = Embedder.from_dir(root / version, "fp32").embed([TEXT])[0]
    shutil.copytree(root / "v1", root / "v3")
    (root / "v3" / "model.onnx").write_bytes(b"a release whose artifact is broken")
    assert not np.allclose(expected["v1"], expected["v2"], atol=1e-3)
    return expected


class Endpoints:
    """The ready endpoints of a Service with the pod behind each, from its EndpointSlices (refreshed every
    0.25 s in a thread), as kube-proxy sees them."""

    def __init__(self, real: RealCluster, namespace: str, service: str):
        from kubernetes import client, config

        self.api = client.DiscoveryV1Api(config.new_client_from_config(str(real.cluster.kubeconfig)))
        self.namespace, self.service = namespace, service
        self.current: list[tuple[str, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _read(self) -> list[tuple[str, str]]:
        slices = self.api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={self.service}").items
        out = []
        for s in slices:
            port = next((p.port for p in s.ports or [] if p.port), None)
            for e in s.endpoints or []:
                if port and e.conditions and e.conditions.ready and e.target_ref is not None:
                    out += [(f"http://{a}:{port}", e.target_ref.name) for a in e.addresses]
        return sorted(out)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.current = self._read()
            except Exception:  # noqa: BLE001 - an API hiccup: keep the last view, try again
                pass
            self.stop.wait(0.25)

    def pods(self) -> list[str]:
        return [pod for _, pod in self.current]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@dataclass
class Result:
    at: float
    pod: str
    status: int
    vector: np.ndarray | None


@dataclass
class Load:
    """Steady requests, round robin over the Service's ready endpoints. A connection refused by a pod that is
    being stopped is retried on the next endpoint (its endpoint is on its way out of the slice; nothing here
    counts it as a served request)."""

    endpoints: Endpoints
    model: str = "minilm"
    rps: float = 20.0
    results: list[Result] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _one(self, url: str) -> tuple[int, np.ndarray | None]:
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}).encode()
        req = urllib.request.Request(f"{url}/v2/models/{self.model}/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - a pod on this machine's bridge
                out = json.loads(r.read())["outputs"][0]
                return r.status, np.asarray(out["data"], dtype=np.float64)
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            started = time.monotonic()
            endpoints = list(self.endpoints.current)
            for attempt in range(len(endpoints)):
                url, pod = endpoints[(i + attempt) % len(endpoints)]
                try:
                    status, vector = self._one(url)
                except OSError:
                    continue  # pod stopping: try the next endpoint
                self.results.append(Result(time.monotonic(), pod, status, vector))
                break
            i += 1
            self.stop.wait(max(0.0, 1 / self.rps - (time.monotonic() - started)))

    def pods_since(self, t: float) -> set[str]:
        return {r.pod for r in self.since(t)}

    def since(self, t: float) -> list[Result]:
        return [r for r in list(self.results) if r.at >= t]


def _mdep(cluster, ns, name):
    return cluster.kubectl_json("get", "mdep", name, "-n", ns)


def _events(cluster, ns, reason):
    return [e for e in cluster.kubectl_json("get", "events", "-n", ns)["items"] if e.get("reason") == reason]


def _version_of(vector: np.ndarray | None, expected: dict[str, np.ndarray]) -> str | None:
    if vector is None:
        return None
    return next((v for v, e in expected.items() if np.allclose(vector, e, atol=1e-4)), "unknown")


def _deployments(cluster, ns, name):
    items = cluster.kubectl_json("get", "deployments", "-n", ns, "-l", f"elastiserve.dev/modeldeployment={name}")["items"]
    return {d["metadata"]["name"]: d for d in items}


def _ready_replicas(cluster, ns, name) -> int:
    """Ready replicas over both tracks (stable and canary)."""
    return sum((d.get("status", {}).get("readyReplicas") or 0) for d in _deployments(cluster, ns, name).values())


def _pods(cluster, ns, name) -> dict[str, dict]:
    """The model's pods that are not being deleted, by name."""
    items = cluster.kubectl_json("get", "pods", "-n", ns, "-l", f"elastiserve.dev/modeldeployment={name}")["items"]
    return {p["metadata"]["name"]: p for p in items if p["metadata"].get("deletionTimestamp") is None}


def _pod_version(pod: dict) -> str | None:
    """The model version a pod's server runs (the operator's ELASTISERVE_MODEL_VERSION)."""
    env = pod["spec"]["containers"][0].get("env", [])
    return next((e.get("value") for e in env if e["name"] == "ELASTISERVE_MODEL_VERSION"), None)


def _containers(pod: dict) -> tuple[str, str, int]:
    """What identifies the running server of a pod: the pod's uid, its container's id and restart count."""
    (status,) = pod["status"]["containerStatuses"]
    return pod["metadata"]["uid"], status.get("containerID", ""), status.get("restartCount", 0)


def test_good_version_rolls_out_and_a_broken_one_rolls_back(stack: Stack):
    k8s_cluster = stack.real.cluster
    namespace = create_namespace(k8s_cluster, "rollout")
    expected = _store(stack.store / "lm")
    endpoints = Endpoints(stack.real, namespace, "lm")
    load = Load(endpoints)
    loader = threading.Thread(target=load.run, daemon=True)
    try:
        k8s_cluster.apply(manifest(
            "lm",
            model={"name": "minilm", "uri": f"{stack.store_url}/lm/$version", "version": "v1", "lazyLoading": LAZY},
            template=_template(stack.real),
            variants=[{"name": "fp32", "capacityQps": 100}],
            replicas={"min": 2, "max": 2},
            syncPeriodSeconds=SYNC_SECONDS,
            metrics={"windowSeconds": 10},
            rollout={"steps": [50, 100], "stepSeconds": 10, "minRequests": 20,
                     "maxErrorRateIncrease": 5, "maxLatencyRatio": 50},
        ), namespace=namespace)
        wait_until(lambda: len(endpoints.current) == 2, timeout=180, what="two v1 pods Ready behind the model")
        loader.start()
        wait_until(lambda: len([r for r in load.results if r.status == 200]) >= 20, timeout=60, what="v1 serving")
        assert {_version_of(r.vector, expected) for r in load.results} == {"v1"}

        # ---- a good version: step by step, then promoted; every request is served meanwhile.
        t_good = time.monotonic()
        k8s_cluster.kubectl("patch", "mdep", "lm", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"model": {"version": "v2"}}}))
        lows = []

        def rolled_out():
            lows.append(_ready_replicas(k8s_cluster, namespace, "lm"))
            rollout = _mdep(k8s_cluster, namespace, "lm").get("status", {}).get("rollout") or {}
            return rollout.get("phase") == "Idle" and rollout.get("stableVersion") == "v2"

        wait_until(rolled_out, timeout=240, interval=1.0, what="v2 rolled out")
        reasons = [e["reason"] for e in sorted(
            _events(k8s_cluster, namespace, "RolloutStarted") + _events(k8s_cluster, namespace, "RolloutStep")
            + _events(k8s_cluster, namespace, "RolloutPromoting") + _events(k8s_cluster, namespace, "RolloutSucceeded"),
            key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")]
        assert set(reasons) == {"RolloutStarted", "RolloutStep", "RolloutPromoting", "RolloutSucceeded"}, reasons
        during = load.since(t_good)
        assert during and all(r.status == 200 for r in during), sorted({r.status for r in during})
        served_by = [_version_of(r.vector, expected) for r in during]
        assert "v1" in served_by and "v2" in served_by, "traffic was never split between the versions"
        assert min(lows) >= 2, f"ready replicas over both tracks dropped to {min(lows)} during the rollout"
        # The canary is gone; the stable Deployment runs v2; soon only v2 answers.
        wait_until(lambda: list(_deployments(k8s_cluster, namespace, "lm")) == ["lm-fp32"], timeout=60,
                   what="canary Deployment removed")
        # The operator declared the rollout done only once the stable Deployment had no v1 pod left (a rolling
        # update with surge counts an old pod among the ready ones until the last new one is ready).
        pods = _pods(k8s_cluster, namespace, "lm")
        assert {_pod_version(p) for p in pods.values()} == {"v2"}, {n: _pod_version(p) for n, p in pods.items()}
        wait_until(lambda: len(endpoints.current) == 2 and all(
            pod.startswith("lm-fp32-") and "canary" not in pod for pod in endpoints.pods()), timeout=120,
            what="only the two stable v2 pods behind the Service")
        t_v2 = time.monotonic()
        wait_until(lambda: len(load.since(t_v2)) >= 20, timeout=60, what="requests on v2")
        assert {_version_of(r.vector, expected) for r in load.since(t_v2)} == {"v2"}

        # ---- a broken version: its 500s trip the gate and it is rolled back automatically.
        t_bad = time.monotonic()
        k8s_cluster.kubectl("patch", "mdep", "lm", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"model": {"version": "v3"}}}))
        rolled_back = wait_until(lambda: _events(k8s_cluster, namespace, "RolloutRolledBack"), timeout=180,
                                 interval=1.0, what="RolloutRolledBack event")
        t_rolled_back = time.monotonic()
        assert "v3 rolled back to v2: error rate" in rolled_back[0]["message"]
        status = _mdep(k8s_cluster, namespace, "lm")["status"]
        assert status["rollout"]["stableVersion"] == "v2" and "v3" in status["rollout"]["failedVersions"]
        rollout_cond = next(c for c in status["conditions"] if c["type"] == "Rollout")
        assert "rolled back v3" in rollout_cond["message"]

        failures = [r for r in load.since(t_bad) if r.status != 200]
        assert failures, "the broken version never received traffic"
        assert all("canary" in r.pod for r in failures), "a stable (v2) server failed a request"
        assert {r.status for r in failures} == {500}
        first_failure = min(r.at for r in failures)
        # The gate's budget: failures only while the canary held its first step's share, and the gate saw
        # them within a few sync periods (Prometheus scrapes every second).
        detect = t_rolled_back - first_failure
        assert detect <= 6 * SYNC_SECONDS, f"rollback took {detect:.0f}s after the first failure"
        window = [r for r in load.since(first_failure) if r.at <= t_rolled_back]
        assert len(failures) <= 0.5 * len(window) + 5, (len(failures), len(window))

        # The canary is removed and every request succeeds on v2 again.
        wait_until(lambda: list(_deployments(k8s_cluster, namespace, "lm")) == ["lm-fp32"], timeout=60,
                   what="broken canary removed")
        wait_until(lambda: all("canary" not in pod for pod in endpoints.pods()) and all(
            "canary" not in pod for pod in _pods(k8s_cluster, namespace, "lm")), timeout=90,
            what="broken pods stopped")
        t_after = time.monotonic()
        wait_until(lambda: len(load.since(t_after)) >= 40, timeout=60, what="requests after the rollback")
        after = load.since(t_after)
        assert all(r.status == 200 for r in after) and {_version_of(r.vector, expected) for r in after} == {"v2"}
        # Not retried: the operator keeps v2 and says why while spec.model.version still names v3.
        wait_until(lambda: "not retrying" in (_mdep(k8s_cluster, namespace, "lm")["status"]["rollout"].get("message") or ""),
                   timeout=30, what="failed version not retried")
        print("rollout figures:", json.dumps({
            "good_rollout_s": round(t_v2 - t_good, 1),
            "requests_during_good_rollout": len(during),
            "bad_version_failures": len(failures),
            "requests_while_bad_canary_served": len(window),
            "first_failure_to_rollback_s": round(detect, 1),
            "rollback_event": rolled_back[0]["message"],
        }))
    finally:
        load.stop.set()
        endpoints.close()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_a_submodel_version_bump_switches_inside_the_running_pods(stack: Stack):
    """subModels[].version changes only the sub-model ConfigMap: no pod restarts, every request served. The
    kubelet refreshes the ConfigMap's volume in the pods (within its sync period, a minute by default) and the
    servers switch when the mounted file changes."""
    from elastiserve.serving.builder import build_tiny_model
    from elastiserve.serving.runtime import Embedder

    k8s_cluster = stack.real.cluster
    namespace = create_namespace(k8s_cluster, "submodels")
    store = stack.store / "sub"
    build_tiny_model(store / "main" / "v1", seed=1)
    expected = {}
    for version, seed in (("v1", 11), ("v2", 12)):
        build_tiny_model(store / "legal" / version, seed=seed)
        expected[version] = Embedder.from_dir(store / "legal" / version, "fp32").embed([TEXT])[0]
    endpoints = Endpoints(stack.real, namespace, "sub")
    load = Load(endpoints, model="legal")
    loader = threading.Thread(target=load.run, daemon=True)
    sub_models = [{"name": "legal", "uri": f"{stack.store_url}/sub/legal/$version", "version": "v1"}]
    try:
        k8s_cluster.apply(manifest(
            "sub",
            model={"name": "minilm", "uri": f"{stack.store_url}/sub/main/$version", "version": "v1",
                   "subModels": sub_models, "lazyLoading": LAZY},
            template=_template(stack.real),
            variants=[{"name": "fp32", "capacityQps": 100}],
            replicas={"min": 2, "max": 2},
            syncPeriodSeconds=SYNC_SECONDS,
        ), namespace=namespace)
        wait_until(lambda: len(endpoints.current) == 2, timeout=180, what="two pods Ready behind the model")
        loader.start()
        wait_until(lambda: len([r for r in load.results if r.status == 200]) >= 20, timeout=60, what="legal v1 serving")
        assert {_version_of(r.vector, expected) for r in load.results} == {"v1"}
        running = {name: _containers(pod) for name, pod in _pods(k8s_cluster, namespace, "sub").items()}
        assert len(running) == 2, running
        generations = {n: d["metadata"]["generation"] for n, d in _deployments(k8s_cluster, namespace, "sub").items()}

        t_bump = time.monotonic()
        sub_models[0]["version"] = "v2"
        k8s_cluster.kubectl("patch", "mdep", "sub", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"model": {"subModels": sub_models}}}))

        def switched() -> bool:
            recent = load.since(time.monotonic() - 1.0)
            return (len(load.pods_since(t_bump)) == 2 and recent
                    and all(_version_of(r.vector, expected) == "v2" for r in recent))

        wait_until(switched, timeout=180, what="both pods answering with legal v2")
        t_switched = time.monotonic()
        during = load.since(t_bump)
        assert all(r.status == 200 for r in during), sorted({r.status for r in during})
        assert {_version_of(r.vector, expected) for r in during} == {"v1", "v2"}
        # The same pods, the same containers, the same Deployments: nothing was restarted.
        assert {name: _containers(pod) for name, pod in _pods(k8s_cluster, namespace, "sub").items()} == running
        assert {n: d["metadata"]["generation"] for n, d in _deployments(k8s_cluster, namespace, "sub").items()} == generations
        cm = k8s_cluster.kubectl_json("get", "configmap", "sub-submodels", "-n", namespace)
        assert cm["data"]["models"] == f"legal={stack.store_url}/sub/legal/v2\n"
        print("sub-model hot switch:", json.dumps({
            "bump_to_all_v2_s": round(t_switched - t_bump, 1), "requests_during_switch": len(during),
            "failed": sum(r.status != 200 for r in during)}))

        # The last sub-model removed: the template changes (the pods roll) and its ConfigMap goes.
        k8s_cluster.kubectl("patch", "mdep", "sub", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"model": {"subModels": []}}}))
        wait_until(lambda: k8s_cluster.kubectl("get", "configmap", "sub-submodels", "-n", namespace,
                                               check=False).returncode != 0, timeout=60, what="sub-model ConfigMap deleted")
        template = _deployments(k8s_cluster, namespace, "sub")["sub-fp32"]["spec"]["template"]
        volumes = {v["name"] for v in template["spec"].get("volumes", [])}
        assert "submodels" not in volumes and "elastiserve.dev/submodels" not in template["metadata"]["annotations"]
    finally:
        load.stop.set()
        endpoints.close()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
