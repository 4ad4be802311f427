"""Closed loop on real parts: load on an exporter → real Prometheus → operator → Deployment replicas."""

from __future__ import annotations

import json
import time

import pytest

from support import wait_until
from support.devstack import RateExporter, manifest

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]


def _replicas(cluster, ns, name):
    d = cluster.kubectl_json("get", "deployment", name, "-n", ns)
    return d["spec"].get("replicas", 0)


def _events(cluster, ns, reason):
    return [e for e in cluster.kubectl_json("get", "events", "-n", ns)["items"] if e.get("reason") == reason]


def test_load_scales_up_then_down_after_the_window(k8s_cluster, namespace, prometheus_factory, operator_factory):
    exporter = RateExporter("load").start()
    prom = prometheus_factory([{"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"namespace": namespace}}]).start()
    op = operator_factory(namespace=namespace, prometheus_url=prom.url)
    k8s_cluster.apply(
        manifest(
            "load",
            model={"name": "m", "uri": "file:///m.onnx"},
            variants=[{"name": "fp32", "capacityQps": 10}],
            replicas={"min": 1, "max": 6},
            syncPeriodSeconds=5,
            metrics={"windowSeconds": 10, "rules": {"cpu": {"enabled": False, "scaleUpAbove": 80, "scaleDownBelow": 30}}},
            behavior={
                "scaleDown": {"stabilizationWindowSeconds": 15, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
            },
        ),
        namespace=namespace,
    )
    wait_until(lambda: _replicas(k8s_cluster, namespace, "load-fp32") == 1, timeout=60, what="initial replica")
    exporter.set_rate(2.0)  # 20 % of one replica: steady
    prom.wait_for_query(f'sum(rate(elastiserve_requests_total{{namespace="{namespace}"}}[10s])) > 1', timeout=30)

    exporter.set_rate(40.0)  # 400 % of one replica: scale up until utilisation is back inside [40 %, 90 %]
    t0 = time.monotonic()
    wait_until(lambda: _replicas(k8s_cluster, namespace, "load-fp32") >= 2, timeout=60, what="scale-up")
    reaction = time.monotonic() - t0
    # 40 qps on 5 replicas is 80 %: inside the band, so the count settles at 5 (not at the 70 % target's 6).
    wait_until(lambda: _replicas(k8s_cluster, namespace, "load-fp32") == 5, timeout=60, what="scale-up to 5")
    status = k8s_cluster.kubectl_json("get", "mdep", "load", "-n", namespace)["status"]
    assert any("qps" in r for r in status["lastDecision"]["reasons"]) or status["lastScaleReason"].startswith("qps")
    assert _events(k8s_cluster, namespace, "Scaled")
    print(f"reaction to the threshold crossing: {reaction:.1f} s (sync period 5 s, scrape 1 s, rate window 10 s)")

    exporter.set_rate(0.0)
    t1 = time.monotonic()
    wait_until(lambda: _replicas(k8s_cluster, namespace, "load-fp32") == 1, timeout=120, what="scale-down")
    held = time.monotonic() - t1
    assert held >= 15, f"scaled down after {held:.1f} s, before the 15 s stabilization window"
    status = k8s_cluster.kubectl_json("get", "mdep", "load", "-n", namespace)["status"]
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds["MetricsAvailable"] == "True" and conds["Ready"] == "True"
    assert 'elastiserve_operator_scale_events_total{direction="down"' in op.metrics()


def test_hot_set_follows_per_model_request_rates(k8s_cluster, namespace, prometheus_factory, operator_factory):
    """The busiest sub-models are published in <name>-hotset for new replicas to load at start-up."""
    exporter = RateExporter("hot").start()
    exporter.set_models({"m": 0.1, "legal": 0.5, "tax": 0.3, "medical": 0.1})
    exporter.set_rate(10.0)
    prom = prometheus_factory([{"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"namespace": namespace}}]).start()
    operator_factory(namespace=namespace, prometheus_url=prom.url)
    k8s_cluster.apply(manifest(
        "hot",
        model={"name": "m", "uri": "file:///models/m", "subModels": [
            {"name": n, "uri": f"file:///models/{n}"} for n in ("legal", "tax", "medical")],
            "lazyLoading": {"hotSetSize": 2, "preload": ["m"]}},
        variants=[{"name": "fp32", "capacityQps": 100}],
        replicas={"min": 1, "max": 2},
        syncPeriodSeconds=5,
        metrics={"windowSeconds": 10},
    ), namespace=namespace)

    def hotset():
        got = k8s_cluster.kubectl("get", "configmap", "hot-hotset", "-n", namespace, "-o", "json", check=False)
        return json.loads(got.stdout)["data"]["preload"] if got.returncode == 0 else None

    # The two busiest declared sub-models; "m" is preloaded by the spec anyway, so it is left out.
    wait_until(lambda: hotset() == "legal,tax", timeout=90, what="hot set legal,tax")
    status = k8s_cluster.kubectl_json("get", "mdep", "hot", "-n", namespace)["status"]
    assert status["hotSet"] == ["legal", "tax"]
    # Every replica reads it from the ConfigMap (optional: a first replica starts without one).
    env = k8s_cluster.kubectl_json("get", "deployment", "hot-fp32", "-n", namespace)["spec"]["template"]["spec"][
        "containers"][0]["env"]
    ref = next(e for e in env if e["name"] == "ELASTISERVE_HOTSET")["valueFrom"]["configMapKeyRef"]
    assert ref == {"name": "hot-hotset", "key": "preload", "optional": True}

    # Traffic moves: the ranking follows within a rate window and a sync or two.
    exporter.set_models({"m": 0.1, "legal": 0.05, "tax": 0.25, "medical": 0.6})
    wait_until(lambda: hotset() == "medical,tax", timeout=90, what="hot set medical,tax")
