"""The local control plane (hack/cluster.sh) is a real Kubernetes API server.

etcd + kube-apiserver + kube-controller-manager + kube-scheduler run as local
processes; kwok plays the kubelets of fake nodes so pods become Running/Ready.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support import wait_until
from support.cluster import LocalCluster

pytestmark = pytest.mark.cluster


def _deployment(name: str, replicas: int) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "registry.invalid/elastiserve/fake:1",
                            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
                        }
                    ]
                },
            },
        },
    }


def _pod_ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return pod.get("status", {}).get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def test_api_server_version_and_nodes(k8s_cluster: LocalCluster) -> None:
    assert k8s_cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"

    version = json.loads(k8s_cluster.kubectl("version", "-o", "json").stdout)
    server = version["serverVersion"]["gitVersion"]
    assert server.startswith("v1.") and "dirty" not in server and "master" not in server
    assert version["clientVersion"]["gitVersion"] == server

    nodes = k8s_cluster.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]
    assert len(nodes) >= 1
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready.get("Ready") == "True", node["metadata"]["name"]
        assert int(node["status"]["allocatable"]["pods"]) > 0
        assert node["status"]["allocatable"]["cpu"]


def test_deployment_pods_become_ready_then_are_garbage_collected(
    k8s_cluster: LocalCluster, namespace: str
) -> None:
    k8s_cluster.apply(_deployment("web", 2), namespace=namespace)

    def ready_pods() -> list[dict] | None:
        pods = k8s_cluster.kubectl_json("-n", namespace, "get", "pods", "-l", "app=web")["items"]
        ready = [p for p in pods if _pod_ready(p)]
        return ready if len(ready) == 2 else None

    pods = wait_until(ready_pods, timeout=120, what="2 Ready pods of Deployment web")
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("kwok-node-")  # placed by the real scheduler
        assert pod["status"]["podIP"]
        owner = pod["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "ReplicaSet" and owner["controller"] is True

    wait_until(
        lambda: k8s_cluster.kubectl_json("-n", namespace, "get", "deployment", "web")["status"].get("readyReplicas") == 2,
        timeout=60,
        what="Deployment web readyReplicas=2",
    )
    rs = k8s_cluster.kubectl_json("-n", namespace, "get", "replicasets", "-l", "app=web")["items"]
    assert len(rs) == 1
    assert rs[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"

    # background deletion: the garbage collector removes ReplicaSets, then pods
    k8s_cluster.kubectl("-n", namespace, "delete", "deployment", "web", "--cascade=background", "--wait=false")

    def all_gone() -> bool:
        left_rs = k8s_cluster.kubectl_json("-n", namespace, "get", "replicasets", "-l", "app=web")["items"]
        left_pods = k8s_cluster.kubectl_json("-n", namespace, "get", "pods", "-l", "app=web")["items"]
        return not left_rs and not left_pods

    wait_until(all_gone, timeout=120, what="ReplicaSets and pods of web to be garbage-collected")


def test_scale_a_deployment(k8s_cluster: LocalCluster, namespace: str) -> None:
    k8s_cluster.apply(_deployment("scaled", 1), namespace=namespace)
    k8s_cluster.kubectl("-n", namespace, "scale", "deployment", "scaled", "--replicas=4")
    wait_until(
        lambda: k8s_cluster.kubectl_json("-n", namespace, "get", "deployment", "scaled")["status"].get("readyReplicas") == 4,
        timeout=120,
        what="Deployment scaled readyReplicas=4",
    )
    k8s_cluster.kubectl("-n", namespace, "scale", "deployment", "scaled", "--replicas=0")
    wait_until(
        lambda: not k8s_cluster.kubectl_json("-n", namespace, "get", "pods", "-l", "app=scaled")["items"],
        timeout=120,
        what="pods of scaled to go away at replicas=0",
    )


def _api_get_with_token(k8s_cluster: LocalCluster, path: str, token: str) -> int:
    """GET ``path`` with a bearer token (no client certificate); return the HTTP status."""
    server = k8s_cluster.kubectl("config", "view", "--raw", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    ca_data = k8s_cluster.kubectl(
        "config", "view", "--raw", "-o", "jsonpath={.clusters[0].cluster.certificate-authority-data}"
    ).stdout
    ctx = ssl.create_default_context(cadata=base64.b64decode(ca_data).decode())
    req = urllib.request.Request(server + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_rbac_denies_then_allows_a_service_account(k8s_cluster: LocalCluster, namespace: str) -> None:
    k8s_cluster.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    who = f"system:serviceaccount:{namespace}:nobody"

    denied = k8s_cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, f"--as={who}", check=False)
    assert denied.returncode == 1 and denied.stdout.strip() == "no"

    # a real request authenticated with a token issued by the API server (TokenRequest)
    token = k8s_cluster.kubectl("-n", namespace, "create", "token", "nobody", "--duration=10m").stdout.strip()
    assert _api_get_with_token(k8s_cluster, f"/api/v1/namespaces/{namespace}/pods", token) == 403

    k8s_cluster.kubectl("-n", namespace, "create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods")
    k8s_cluster.kubectl(
        "-n", namespace, "create", "rolebinding", "nobody-reads", "--role=pod-reader", f"--serviceaccount={namespace}:nobody"
    )
    allowed = k8s_cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, f"--as={who}", check=False)
    assert allowed.stdout.strip() == "yes"
    assert _api_get_with_token(k8s_cluster, f"/api/v1/namespaces/{namespace}/pods", token) == 200
    # still nothing outside the Role
    assert _api_get_with_token(k8s_cluster, f"/api/v1/namespaces/{namespace}/secrets", token) == 403


def test_server_side_apply_tracks_field_managers(k8s_cluster: LocalCluster, namespace: str) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ssa", "namespace": namespace},
        "data": {"owner": "first"},
    }
    k8s_cluster.kubectl("apply", "--server-side", "--field-manager=first", "-f", "-", input=json.dumps(cm))

    cm["data"]["owner"] = "second"
    conflict = k8s_cluster.kubectl(
        "apply", "--server-side", "--field-manager=second", "-f", "-", input=json.dumps(cm), check=False
    )
    assert conflict.returncode != 0
    assert "conflict" in conflict.stderr.lower()

    k8s_cluster.kubectl(
        "apply", "--server-side", "--field-manager=second", "--force-conflicts", "-f", "-", input=json.dumps(cm)
    )
    live = k8s_cluster.kubectl_json("-n", namespace, "get", "configmap", "ssa", "--show-managed-fields")
    assert live["data"]["owner"] == "second"
    managers = {m["manager"] for m in live["metadata"]["managedFields"]}
    assert "second" in managers


def test_hpa_object_is_reconciled(k8s_cluster: LocalCluster, namespace: str) -> None:
    """The HPA controller runs: it reconciles the object (no metrics API, so it cannot scale)."""
    k8s_cluster.apply(_deployment("hpa-target", 1), namespace=namespace)
    k8s_cluster.kubectl(
        "-n", namespace, "autoscale", "deployment", "hpa-target", "--min=1", "--max=3", "--cpu-percent=50"
    )

    def conditions() -> dict[str, str] | None:
        hpa = k8s_cluster.kubectl_json("-n", namespace, "get", "hpa.v2.autoscaling", "hpa-target")
        found = {c["type"]: c["status"] for c in hpa.get("status", {}).get("conditions", [])}
        return found or None

    found = wait_until(conditions, timeout=90, what="HPA status conditions")
    assert found.get("AbleToScale") == "True"
    # metrics.k8s.io is not served by this control plane
    assert found.get("ScalingActive") == "False"


def test_namespace_deletion_completes(k8s_cluster: LocalCluster) -> None:
    name = "ns-delete-check"
    k8s_cluster.kubectl("create", "namespace", name)
    k8s_cluster.kubectl("-n", name, "create", "configmap", "x", "--from-literal=a=b")
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false")
    wait_until(
        lambda: k8s_cluster.kubectl("get", "namespace", name, check=False).returncode != 0,
        timeout=120,
        what=f"namespace {name} to be deleted by the namespace controller",
    )


def test_helm_installs_a_chart(k8s_cluster: LocalCluster, namespace: str) -> None:
    version = k8s_cluster.helm("version", "--short").stdout.strip()
    assert version.startswith("v3."), version

    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "demo"
        k8s_cluster.helm("create", str(chart))
        k8s_cluster.helm(
            "install", "demo", str(chart), "-n", namespace, "--wait", "--timeout", "3m", timeout=240
        )
    releases = json.loads(k8s_cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [r["status"] for r in releases if r["name"] == "demo"] == ["deployed"]
    deploy = k8s_cluster.kubectl_json("-n", namespace, "get", "deployment", "demo")
    assert deploy["status"].get("readyReplicas") == 1
    k8s_cluster.helm("uninstall", "demo", "-n", namespace, "--wait", timeout=180)
