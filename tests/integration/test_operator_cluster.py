"""The operator against the real local control plane: CRD validation, owned objects, drift, deletion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support import wait_until
from support.devstack import manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
pytestmark = pytest.mark.cluster


def _expect(path: Path) -> str:
    return next(l[len("# expect: "):] for l in path.read_text().splitlines() if l.startswith("# expect: "))


def test_valid_examples_are_accepted(k8s_cluster, crd, namespace):
    for path in sorted(EXAMPLES.glob("*.yaml")):
        result = k8s_cluster.kubectl("apply", "-n", namespace, "-f", str(path), "--dry-run=server")
        assert "created (server dry run)" in result.stdout, (path, result.stdout)


@pytest.mark.parametrize("path", sorted((EXAMPLES / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_examples_are_rejected_by_the_api_server(k8s_cluster, crd, path):
    result = k8s_cluster.kubectl("apply", "-n", "default", "-f", str(path), "--dry-run=server", check=False)
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    assert _expect(path) in result.stderr, result.stderr


def test_api_server_applies_the_model_defaults(k8s_cluster, crd, namespace):
    k8s_cluster.apply(manifest("defaults", model={"name": "m", "uri": "file:///m.onnx"}), namespace=namespace)
    got = k8s_cluster.kubectl_json("get", "mdep", "defaults", "-n", namespace)["spec"]
    from elastiserve.api import parse_spec

    assert got == parse_spec({"model": {"name": "m", "uri": "file:///m.onnx"}}).to_api()


def _deployments(cluster, ns, mdep):
    items = cluster.kubectl_json("get", "deployments", "-n", ns, "-l", f"elastiserve.dev/modeldeployment={mdep}")["items"]
    return {d["metadata"]["name"]: d for d in items}


def test_operator_creates_repairs_and_garbage_collects(k8s_cluster, crd, namespace, operator_factory):
    # Prometheus is "down" (nothing listens on port 9): the operator must still reconcile and hold.
    op = operator_factory(namespace=namespace, prometheus_url="http://127.0.0.1:9")
    spec = yaml.safe_load((EXAMPLES / "full.yaml").read_text())["spec"]
    del spec["metrics"]["prometheus"]
    k8s_cluster.apply(manifest("emb", **spec), namespace=namespace)

    deps = wait_until(lambda: len(_deployments(k8s_cluster, namespace, "emb")) == 2 and _deployments(k8s_cluster, namespace, "emb"),
                      timeout=60, what="two variant Deployments")
    assert set(deps) == {"emb-fp32", "emb-int8"}
    assert deps["emb-fp32"]["spec"]["replicas"] == 1 and deps["emb-int8"]["spec"]["replicas"] == 0
    owner = deps["emb-fp32"]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ModelDeployment" and owner["controller"] is True
    svc = k8s_cluster.kubectl_json("get", "service", "emb", "-n", namespace)
    assert svc["spec"]["selector"] == {"elastiserve.dev/modeldeployment": "emb"}

    # Pods reach Ready on kwok nodes.
    wait_until(lambda: (_deployments(k8s_cluster, namespace, "emb")["emb-fp32"].get("status", {}).get("readyReplicas") == 1),
               timeout=90, what="fp32 pod Ready")

    # Status and conditions are written.
    def ready_condition():
        st = k8s_cluster.kubectl_json("get", "mdep", "emb", "-n", namespace).get("status", {})
        return next((c for c in st.get("conditions", []) if c["type"] == "Ready" and c["status"] == "True"), None)

    wait_until(ready_condition, timeout=60, what="Ready=True condition")

    # Drift: a deleted owned Deployment comes back.
    k8s_cluster.kubectl("delete", "deployment", "emb-int8", "-n", namespace)
    wait_until(lambda: "emb-int8" in _deployments(k8s_cluster, namespace, "emb"), timeout=60, what="emb-int8 recreated")

    # Deleting the ModelDeployment garbage-collects everything it owns.
    k8s_cluster.kubectl("delete", "mdep", "emb", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_until(lambda: not _deployments(k8s_cluster, namespace, "emb"), timeout=90, what="owned Deployments collected")
    wait_until(lambda: k8s_cluster.kubectl("get", "service", "emb", "-n", namespace, check=False).returncode != 0,
               timeout=60, what="Service collected")
    assert "Traceback" not in op.text()


def test_hand_edited_replicas_are_restored_with_an_event(k8s_cluster, crd, namespace, operator_factory):
    operator_factory(namespace=namespace, prometheus_url="http://127.0.0.1:9")
    k8s_cluster.apply(manifest("hand", model={"name": "m", "uri": "file:///m.onnx"}, replicas={"min": 2, "max": 4}),
                      namespace=namespace)
    def scaler_owns_replicas():
        dep = k8s_cluster.kubectl_json("get", "deployment", "hand-fp32", "-n", namespace, "--show-managed-fields")
        managers = [m for m in dep.get("metadata", {}).get("managedFields", [])
                    if "f:replicas" in m.get("fieldsV1", {}).get("f:spec", {})]
        return dep["spec"]["replicas"] == 2 and "elastiserve-scaler" in [m["manager"] for m in managers]

    # The edit comes after the operator took spec.replicas over (an edit within the creation itself
    # may be folded into one watch event by kopf's batching, and then nothing is left to restore).
    wait_until(scaler_owns_replicas, timeout=60, what="hand-fp32 at 2, replicas owned by elastiserve-scaler")
    k8s_cluster.kubectl("scale", "deployment", "hand-fp32", "-n", namespace, "--replicas=7")
    wait_until(lambda: _deployments(k8s_cluster, namespace, "hand")["hand-fp32"]["spec"]["replicas"] == 2,
               timeout=60, what="replicas restored to 2")

    def event():
        events = k8s_cluster.kubectl_json("get", "events", "-n", namespace)["items"]
        return [e for e in events if e.get("reason") == "ReplicasRestored"]

    found = wait_until(event, timeout=30, what="ReplicasRestored event")
    assert "set to 7 outside elastiserve; restored 2" in found[0]["message"]
