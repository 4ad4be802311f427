"""The operator does its whole job under the chart's ServiceAccount: least privilege, verified by use."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from support import wait_until
from support.devstack import manifest, sa_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cluster


def test_operator_reconciles_and_scales_with_only_the_chart_rbac(k8s_cluster, crd, namespace, operator_factory, tmp_path):
    release = f"rbac-{uuid.uuid4().hex[:6]}"
    k8s_cluster.helm("install", release, str(ROOT / "charts" / "elastiserve"), "-n", namespace,
                     "--set", "crds.install=false", "--wait", "--timeout", "3m")
    try:
        sa = f"{release}-elastiserve-operator"
        kc = sa_kubeconfig(k8s_cluster, namespace, sa, tmp_path / "operator.kubeconfig")
        op = operator_factory(namespace=namespace, prometheus_url="http://127.0.0.1:9",
                              env={"KUBECONFIG": str(kc)})
        k8s_cluster.apply(manifest("rbac", model={"name": "m", "uri": "file:///m.onnx"},
                                   variants=[{"name": "fp32"}, {"name": "int8", "precision": "int8", "role": "burst"}],
                                   replicas={"min": 2, "max": 4}), namespace=namespace)

        def names():
            items = k8s_cluster.kubectl_json("get", "deployments", "-n", namespace,
                                             "-l", "elastiserve.dev/modeldeployment=rbac")["items"]
            return {d["metadata"]["name"] for d in items}

        # Both variants' Deployments (applied one after the other: poll for the pair, not the first one).
        wait_until(lambda: names() == {"rbac-fp32", "rbac-int8"}, timeout=60,
                   what="owned Deployments created under the chart's ServiceAccount")
        wait_until(lambda: (k8s_cluster.kubectl_json("get", "mdep", "rbac", "-n", namespace).get("status") or {})
                   .get("lastDecision"), timeout=60, what="status written under the chart's ServiceAccount")
        events = k8s_cluster.kubectl_json("get", "events", "-n", namespace)["items"]
        assert any(e.get("reason") == "MetricsUnavailable" for e in events), "Events need create permission"
        # The same identity cannot do what it has no business doing.
        who = f"--as=system:serviceaccount:{namespace}:{sa}"
        for verb, resource in (("delete", "namespaces"), ("create", "pods"), ("update", "clusterroles"), ("list", "nodes")):
            assert k8s_cluster.kubectl("auth", "can-i", verb, resource, who, "-n", namespace, check=False).stdout.strip() == "no"
        log = op.text()
        assert "Forbidden" not in log and " 403" not in log, log[-3000:]
    finally:
        k8s_cluster.helm("uninstall", release, "-n", namespace, "--wait", check=False)
