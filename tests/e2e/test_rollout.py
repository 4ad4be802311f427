"""Model version rollouts on real parts: a good version is rolled out step by step, a bad one rolled back.

Real control plane (kwok pods), real Prometheus scraping one real model-server process per Running pod
(hack/podtwin.py), the real operator. Three versions of a tiny encoder sit in a model store:
v1 and v2 are healthy (different weights, so every response tells which version served it), v3's
artifact is corrupt, so its servers answer 500 to every request (a broken release).
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

from support import load_hack, wait_until
from support.devstack import manifest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.e2e]

TEXT = "the quick brown fox"
SYNC_SECONDS = 5




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


@dataclass
class Result:
    at: float
    pod: str
    status: int
    vector: np.ndarray | None


@dataclass
class Load:
    """Steady requests, round robin over the model's ready endpoints, like a Service would spread them.
    A connection refused by a twin that is being stopped is retried on the next endpoint (a Service
    removes a terminating pod's endpoint; nothing here counts it as a served request)."""

    twins: object
    key: str
    model: str = "minilm"
    rps: float = 20.0
    results: list[Result] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _endpoints(self) -> list[tuple[str, str]]:
        data = json.loads((self.twins.endpoints_file).read_text() or "{}")
        by_url = {t.url: t.pod for t in list(self.twins.twins.values())}
        return [(u, by_url[u]) for u in data.get(self.key, []) if u in by_url]

    def _one(self, url: str) -> tuple[int, np.ndarray | None]:
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}).encode()
        req = urllib.request.Request(f"{url}/v2/models/{self.model}/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                out = json.loads(r.read())["outputs"][0]
                return r.status, np.asarray(out["data"], dtype=np.float64)
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            started = time.monotonic()
            endpoints = self._endpoints()
            for attempt in range(len(endpoints)):
                url, pod = endpoints[(i + attempt) % len(endpoints)]
                try:
                    status, vector = self._one(url)
                except OSError:
                    continue  # twin stopping: try the next endpoint
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


def _twins(k8s_cluster, namespace, prometheus_factory, tmp_path):
    """Pod twins for the namespace and a Prometheus scraping them every second."""
    podtwin = load_hack("podtwin")
    from kubernetes import config as k8s_config

    twins_dir = tmp_path / "twins"
    twins_dir.mkdir()
    (twins_dir / "targets.json").write_text("[]")
    prom = prometheus_factory([], scrape_interval="1s")
    prom.stop()
    prom.config["scrape_configs"] = [
        {"job_name": "models", "scrape_interval": "1s",
         "file_sd_configs": [{"files": [str(twins_dir / "targets.json")], "refresh_interval": "1s"}]},
    ]
    prom.start()

    k8s_config.load_kube_config(str(k8s_cluster.kubeconfig))
    twins = podtwin.PodTwins(namespace, twins_dir, extra_env={"ELASTISERVE_INTRA_OP_THREADS": "1",
                                                             "ELASTISERVE_MODELS_FILE_INTERVAL": "1"})
    stop_twins = threading.Event()
    threading.Thread(target=twins.run, args=(stop_twins, 0.1), daemon=True).start()
    return prom, twins, stop_twins


def test_good_version_rolls_out_and_a_broken_one_rolls_back(
    k8s_cluster, namespace, prometheus_factory, operator_factory, tmp_path
):
    store = tmp_path / "store"
    expected = _store(store)
    prom, twins, stop_twins = _twins(k8s_cluster, namespace, prometheus_factory, tmp_path)
    load = Load(twins, f"{namespace}/lm")
    loader = threading.Thread(target=load.run, daemon=True)
    try:
        operator_factory(namespace=namespace, prometheus_url=prom.url)
        k8s_cluster.apply(manifest(
            "lm",
            model={"name": "minilm", "uri": f"file://{store}/$version", "version": "v1"},
            variants=[{"name": "fp32", "capacityQps": 100}],
            replicas={"min": 2, "max": 2},
            syncPeriodSeconds=SYNC_SECONDS,
            metrics={"windowSeconds": 10},
            rollout={"steps": [50, 100], "stepSeconds": 10, "minRequests": 20,
                     "maxErrorRateIncrease": 5, "maxLatencyRatio": 50},
        ), namespace=namespace)
        wait_until(lambda: len(load._endpoints()) == 2, timeout=120, what="two v1 servers behind the model")
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
        wait_until(lambda: len(load._endpoints()) == 2 and all(
            t.pod.startswith("lm-fp32-") and "canary" not in t.pod for t in twins.twins.values()), timeout=90,
            what="only the two stable v2 servers left")
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
        wait_until(lambda: all("canary" not in t.pod for t in twins.twins.values()), timeout=60,
                   what="broken servers stopped")
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
        stop_twins.set()
        twins.stop_all()


def test_a_submodel_version_bump_switches_inside_the_running_pods(
    k8s_cluster, namespace, prometheus_factory, operator_factory, tmp_path
):
    """subModels[].version changes only the sub-model ConfigMap: no pod restarts, every request served."""
    from elastiserve.serving.builder import build_tiny_model
    from elastiserve.serving.runtime import Embedder

    store = tmp_path / "store"
    build_tiny_model(store / "main" / "v1", seed=1)
    expected = {}
    for version, seed in (("v1", 11), ("v2", 12)):
        build_tiny_model(store / "legal" / version, seed=seed)
        expected[version] = Embedder.from_dir(store / "legal" / version, "fp32").embed([TEXT])[0]
    prom, twins, stop_twins = _twins(k8s_cluster, namespace, prometheus_factory, tmp_path)
    load = Load(twins, f"{namespace}/sub", model="legal")
    loader = threading.Thread(target=load.run, daemon=True)
    sub_models = [{"name": "legal", "uri": f"file://{store}/legal/$version", "version": "v1"}]
    try:
        operator_factory(namespace=namespace, prometheus_url=prom.url)
        k8s_cluster.apply(manifest(
            "sub",
            model={"name": "minilm", "uri": f"file://{store}/main/$version", "version": "v1", "subModels": sub_models},
            variants=[{"name": "fp32", "capacityQps": 100}],
            replicas={"min": 2, "max": 2},
            syncPeriodSeconds=SYNC_SECONDS,
        ), namespace=namespace)
        wait_until(lambda: len(load._endpoints()) == 2, timeout=120, what="two servers behind the model")
        loader.start()
        wait_until(lambda: len([r for r in load.results if r.status == 200]) >= 20, timeout=60, what="legal v1 serving")
        assert {_version_of(r.vector, expected) for r in load.results} == {"v1"}
        pids = {name: t.proc.pid for name, t in twins.twins.items()}
        generations = {n: d["metadata"]["generation"] for n, d in _deployments(k8s_cluster, namespace, "sub").items()}

        t_bump = time.monotonic()
        sub_models[0]["version"] = "v2"
        k8s_cluster.kubectl("patch", "mdep", "sub", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"model": {"subModels": sub_models}}}))

        def switched() -> bool:
            recent = load.since(time.monotonic() - 1.0)
            return (len(load.pods_since(t_bump)) == 2 and recent
                    and all(_version_of(r.vector, expected) == "v2" for r in recent))

        wait_until(switched, timeout=90, what="both servers answering with legal v2")
        t_switched = time.monotonic()
        during = load.since(t_bump)
        assert all(r.status == 200 for r in during), sorted({r.status for r in during})
        assert {_version_of(r.vector, expected) for r in during} == {"v1", "v2"}
        # The same processes, the same Deployments: nothing was restarted.
        assert {name: t.proc.pid for name, t in twins.twins.items()} == pids
        assert {n: d["metadata"]["generation"] for n, d in _deployments(k8s_cluster, namespace, "sub").items()} == generations
        cm = k8s_cluster.kubectl_json("get", "configmap", "sub-submodels", "-n", namespace)
        assert cm["data"]["models"] == f"legal=file://{store}/legal/v2\n"
        print("sub-model hot switch:", json.dumps({
            "bump_to_all_v2_s": round(t_switched - t_bump, 1), "requests_during_switch": len(during),
            "failed": sum(r.status != 200 for r in during)}))

        # The last sub-model removed: the template changes (the pods roll) and its ConfigMap goes.
        k8s_cluster.kubectl("patch", "mdep", "sub", "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"model": {"subModels": []}}}))
        wait_until(lambda: k8s_cluster.kubectl("get", "configmap", "sub-submodels", "-n", namespace,
                                               check=False).returncode != 0, timeout=60, what="sub-model ConfigMap deleted")
        template = _deployments(k8s_cluster, namespace, "sub")["sub-fp32"]["spec"]["template"]
        assert "volumes" not in template["spec"] and "elastiserve.dev/submodels" not in template["metadata"]["annotations"]
    finally:
        load.stop.set()
        stop_twins.set()
        twins.stop_all()
