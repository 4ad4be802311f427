"""The Helm chart on the real local control plane: install, RBAC as the ServiceAccounts, upgrade, uninstall.

kwok plays the kubelets, so the pods are scheduled and reported Running/Ready without the image being
pulled or run: these tests cover what the API server decides (schema, RBAC, ownership, hooks,
garbage), not the processes. ``--take-ownership`` lets the release adopt a ModelDeployment CRD that an
earlier test applied with kubectl; the CRD is deleted only when this test created it, since other
tests of the session use it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import LocalCluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "elastiserve"
MDEP_CRD = "modeldeployments.elastiserve.dev"
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")

# (verb, resource[.group], subresource): every call the operator makes (see operator/kube.py, handlers.py)
# and what kopf needs for itself.
OPERATOR_NAMESPACED = [
    *[(v, "modeldeployments.elastiserve.dev", "") for v in ("get", "list", "watch", "patch", "update")],
    *[(v, "modeldeployments.elastiserve.dev", "status") for v in ("get", "patch", "update")],
    *[(v, r, "") for r in ("deployments.apps", "services", "configmaps", "horizontalpodautoscalers.autoscaling",
                           "endpointslices.discovery.k8s.io")
      for v in ("get", "list", "watch", "create", "patch", "delete")],
    *[(v, r, "") for r in ("events", "events.events.k8s.io") for v in ("create", "patch")],
]
OPERATOR_CLUSTER = [("list", "namespaces", ""), ("watch", "namespaces", ""),
                    ("list", "customresourcedefinitions.apiextensions.k8s.io", ""),
                    ("watch", "customresourcedefinitions.apiextensions.k8s.io", "")]
OPERATOR_FORBIDDEN = [
    ("get", "secrets", ""),  # only where operator.tokenSecrets lists a namespace (test_tenancy.py)
    ("delete", "modeldeployments.elastiserve.dev", ""),
    ("create", "modeldeployments.elastiserve.dev", ""),
    ("list", "secrets", ""),
    ("create", "secrets", ""),
    ("get", "pods", ""),
    ("delete", "nodes", ""),
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("update", "deployments.apps", ""),
]
ACTIVATOR_ALLOWED = [("get", "modeldeployments.elastiserve.dev", ""), ("patch", "modeldeployments.elastiserve.dev", ""),
                     *[(v, r, "") for r in ("endpointslices.discovery.k8s.io", "pods") for v in ("get", "list", "watch")]]
ACTIVATOR_FORBIDDEN = [("delete", "modeldeployments.elastiserve.dev", ""), ("patch", "deployments.apps", ""),
                       ("get", "secrets", ""), ("create", "pods", "")]


def can_i(cluster: LocalCluster, sa: str, verb: str, resource: str, sub: str, namespace: str | None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={sa}"]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    proc = cluster.kubectl(*args, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {proc.stderr}"
    return answer == "yes"


def assert_rbac(cluster: LocalCluster, sa: str, allowed, forbidden, namespace: str | None) -> None:
    denied = [f"{v} {r}{'/' + s if s else ''}" for v, r, s in allowed if not can_i(cluster, sa, v, r, s, namespace)]
    granted = [f"{v} {r}{'/' + s if s else ''}" for v, r, s in forbidden if can_i(cluster, sa, v, r, s, namespace)]
    where = namespace or "cluster-wide"
    assert not denied, f"{sa} lacks in {where}: {denied}"
    assert not granted, f"{sa} may, but must not, in {where}: {granted}"


def release_leftovers(cluster: LocalCluster, release: str) -> list[str]:
    """Objects of any kind that still carry the release's instance label (CRDs excluded)."""
    selector = f"app.kubernetes.io/instance={release}"
    kinds = ("clusterroles,clusterrolebindings,roles,rolebindings,serviceaccounts,services,deployments,"
             "configmaps,secrets")
    items = cluster.kubectl_json("get", kinds, "-A", "-l", selector)["items"]
    helm_secrets = cluster.kubectl_json("get", "secrets", "-A", "-l", f"owner=helm,name={release}")["items"]
    return [f"{o['kind']} {o['metadata'].get('namespace', '')}/{o['metadata']['name']}" for o in items + helm_secrets]


def crd_exists(cluster: LocalCluster, name: str) -> bool:
    return cluster.kubectl("get", "crd", name, check=False).returncode == 0


def timed(fn, *args, **kwargs):
    t0 = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - t0


def deployments_available(cluster: LocalCluster, namespace: str, release: str) -> dict[str, int]:
    deps = cluster.kubectl_json("-n", namespace, "get", "deployments", "-l", f"app.kubernetes.io/instance={release}")
    return {d["metadata"]["name"]: d.get("status", {}).get("availableReplicas", 0) for d in deps["items"]}


@pytest.fixture
def release(k8s_cluster: LocalCluster, namespace: str) -> Iterator[str]:
    name = f"es-{uuid.uuid4().hex[:6]}"
    yield name
    k8s_cluster.helm("uninstall", name, "-n", namespace, "--wait", check=False)


@pytest.fixture
def mdep_crd_guard(k8s_cluster: LocalCluster) -> Iterator[bool]:
    """True when the ModelDeployment CRD existed before the test (then it must survive it)."""
    existed = crd_exists(k8s_cluster, MDEP_CRD)
    yield existed
    for name in PEERING_CRDS:
        k8s_cluster.kubectl("delete", "crd", name, "--ignore-not-found", "--wait=false", check=False)
    k8s_cluster.kubectl("delete", "clusterkopfpeering", "--all", "--ignore-not-found", check=False)


def test_install_rbac_upgrade_uninstall(k8s_cluster: LocalCluster, namespace: str, release: str, mdep_crd_guard: bool):
    install, t_install = timed(
        k8s_cluster.helm, "install", release, str(CHART), "-n", namespace, "--take-ownership",
        "--set", "image.pullPolicy=Never", "--wait", "--timeout", "3m",
    )
    assert "STATUS: deployed" in install.stdout
    available = deployments_available(k8s_cluster, namespace, release)
    assert available == {f"{release}-elastiserve-operator": 1, f"{release}-elastiserve-activator": 1}, available
    k8s_cluster.wait_established(MDEP_CRD)
    crd = k8s_cluster.kubectl_json("get", "crd", MDEP_CRD)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    # RBAC as the ServiceAccounts, in an arbitrary namespace (cluster-wide mode).
    operator_sa = f"system:serviceaccount:{namespace}:{release}-elastiserve-operator"
    activator_sa = f"system:serviceaccount:{namespace}:{release}-elastiserve-activator"
    assert_rbac(k8s_cluster, operator_sa, OPERATOR_NAMESPACED, OPERATOR_FORBIDDEN, "default")
    assert_rbac(k8s_cluster, operator_sa, OPERATOR_CLUSTER, [("delete", "namespaces", "")], None)
    assert_rbac(k8s_cluster, activator_sa, ACTIVATOR_ALLOWED, ACTIVATOR_FORBIDDEN, "default")

    # The API server accepts a ModelDeployment through the chart's CRD.
    mdep = (ROOT / "examples" / "minimal.yaml").read_text()
    k8s_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=mdep)

    upgrade, t_upgrade = timed(
        k8s_cluster.helm, "upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
        "--set", "operator.verbose=true", "--set", "activator.replicas=2", "--wait", "--timeout", "3m",
    )
    assert "has been upgraded" in upgrade.stdout
    history = json.loads(k8s_cluster.helm("history", release, "-n", namespace, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"
    operator = k8s_cluster.kubectl_json("-n", namespace, "get", "deployment", f"{release}-elastiserve-operator")
    assert "--verbose" in operator["spec"]["template"]["spec"]["containers"][0]["args"]
    k8s_cluster.wait_for(
        lambda: deployments_available(k8s_cluster, namespace, release).get(f"{release}-elastiserve-activator") == 2,
        timeout=120, what="2 activator replicas",
    )

    k8s_cluster.kubectl("delete", "-n", namespace, "-f", "-", "--wait=true", input=mdep)
    _, t_uninstall = timed(k8s_cluster.helm, "uninstall", release, "-n", namespace, "--wait")
    assert k8s_cluster.wait_for(lambda: not release_leftovers(k8s_cluster, release), timeout=60,
                                what="release objects gone") is True
    assert crd_exists(k8s_cluster, MDEP_CRD), "crds.keep=true keeps the CRD after uninstall"
    print(f"\nhelm timings: install {t_install:.1f}s, upgrade {t_upgrade:.1f}s, uninstall {t_uninstall:.1f}s")


def test_namespaced_install_with_peering(k8s_cluster: LocalCluster, namespace: str, release: str, mdep_crd_guard: bool):
    team_a, team_b = f"{namespace}-a"[:63], f"{namespace}-b"[:63]
    for ns in (team_a, team_b):
        k8s_cluster.kubectl("create", "namespace", ns)
    try:
        args = ["install", release, str(CHART), "-n", namespace, "--take-ownership", "--wait", "--timeout", "3m",
                "--set", "rbac.namespaced=true", "--set", f"watchNamespaces={{{team_a},{team_b}}}",
                "--set", "operator.replicas=2", "--set", "operator.peering.enabled=true",
                "--set", f"operator.peering.name={release}"]
        if not mdep_crd_guard:
            args += ["--set", "crds.keep=false"]
        k8s_cluster.helm(*args)
        # The post-install hook created the peering object once its CRD was served.
        peering = k8s_cluster.kubectl_json("get", "clusterkopfpeering", release)
        assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"

        operator_sa = f"system:serviceaccount:{namespace}:{release}-elastiserve-operator"
        peering_rules = [(v, "kopfpeerings.kopf.dev", "") for v in ("get", "list", "watch", "patch")]
        for ns in (team_a, team_b):
            assert_rbac(k8s_cluster, operator_sa, OPERATOR_NAMESPACED + peering_rules, OPERATOR_FORBIDDEN, ns)
        # Nothing outside the watched namespaces, except kopf's read-only discovery and cluster peering.
        assert_rbac(k8s_cluster, operator_sa, [], [(v, r, s) for v, r, s in OPERATOR_NAMESPACED], "default")
        cluster_peering = [(v, "clusterkopfpeerings.kopf.dev", "") for v in ("get", "list", "watch", "patch")]
        assert_rbac(k8s_cluster, operator_sa, OPERATOR_CLUSTER + cluster_peering, [("delete", "namespaces", "")], None)
        activator_sa = f"system:serviceaccount:{namespace}:{release}-elastiserve-activator"
        assert_rbac(k8s_cluster, activator_sa, ACTIVATOR_ALLOWED, ACTIVATOR_FORBIDDEN, team_a)
        assert_rbac(k8s_cluster, activator_sa, [], ACTIVATOR_ALLOWED, "default")

        # A second `helm upgrade` re-runs the hook (before-hook-creation replaces the object).
        k8s_cluster.helm("upgrade", release, str(CHART), "-n", namespace, "--reuse-values", "--wait", "--timeout", "3m")
        assert k8s_cluster.kubectl_json("get", "clusterkopfpeering", release)["metadata"]["name"] == release

        k8s_cluster.helm("uninstall", release, "-n", namespace, "--wait")
        assert k8s_cluster.wait_for(lambda: not release_leftovers(k8s_cluster, release), timeout=60,
                                    what="release objects gone") is True
        if not mdep_crd_guard:
            # crds.keep=false: the CRDs go with the release, and the hook's peering object with its CRD.
            k8s_cluster.wait_for(lambda: not any(crd_exists(k8s_cluster, c) for c in (MDEP_CRD, *PEERING_CRDS)),
                                 timeout=120, what="CRDs deleted")
    finally:
        for ns in (team_a, team_b):
            k8s_cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def test_bad_values_fail_the_install_with_the_schema_message(k8s_cluster: LocalCluster, namespace: str, release: str):
    proc = k8s_cluster.helm("install", release, str(CHART), "-n", namespace, "--set", "operator.replicas=-1", check=False)
    assert proc.returncode != 0
    assert "at '/operator/replicas': minimum: got -1, want 0" in proc.stderr
    assert k8s_cluster.helm("status", release, "-n", namespace, check=False).returncode != 0, "nothing was installed"
