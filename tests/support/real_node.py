"""A local cluster with a REAL node (``hack/cluster.sh`` + ``hack/node.sh``): pods run for real.

``real_cluster`` (module scope) starts its own control plane in its own state dir
(``$ELASTISERVE_TEST_REAL_CLUSTER_DIR``, default ``$ELASTISERVE_CACHE/cluster-pytest-real``) with no
kwok nodes and one real node (containerd, runc, CNI bridge, kubelet, kube-proxy), builds the
project's image from the Dockerfile (cached by content hash) and loads it into the node, and stops
everything (restoring the host state the node changed) when the module ends. Only one real node can
run on a machine: its paths are host-wide.

Prerequisites are root, the Debian packages of ``hack/install-node-deps.sh`` and the Go builds
(``hack/cluster.sh build``, ``build-node``: kubelet, kube-proxy, crictl, Prometheus, CoreDNS, metrics-server). Under CI (``CI`` set) a missing prerequisite FAILS the
tests; elsewhere they skip with the reason. ``ELASTISERVE_SKIP_REAL_NODE=1`` skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import missing_input
from .cluster import (
    BUILD_TIMEOUT_S,
    UP_TIMEOUT_S,
    ClusterError,
    LocalCluster,
    cache_dir,
    parse_env_exports,
    run_cluster_sh,
)

IMAGE_TIMEOUT_S = int(os.environ.get("ELASTISERVE_IMAGE_TIMEOUT", "2400"))
NODE_PACKAGES = {"containerd": "containerd", "runc": "runc", "ctr": "containerd", "nft": "nftables",
                 "buildah": "buildah", "debootstrap": "debootstrap", "gcc": "gcc"}
NODE_NAME = "elastiserve-node"
POD_CIDR = "10.250.0.0/24"
NODE_GATEWAY = "10.250.0.1"
NFT_TABLE = "elastiserve_node"


@dataclass
class RealCluster:
    """A running cluster with one real node and the project's image loaded."""

    cluster: LocalCluster
    image: str
    """``localhost/elastiserve:<content hash>``: the image built from the repository's Dockerfile."""
    prometheus_sd: str = ""
    """A Prometheus with ``kubernetes_sd_configs`` (built by ``build-node``; Debian's has none)."""

    @property
    def repository(self) -> str:
        return self.image.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.image.rsplit(":", 1)[1]


def real_cluster_dir() -> Path:
    explicit = os.environ.get("ELASTISERVE_TEST_REAL_CLUSTER_DIR")
    return Path(explicit) if explicit else cache_dir() / "cluster-pytest-real"


def missing_prerequisites() -> list[str]:
    """What this machine lacks for a real node (empty when everything is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (containerd, cgroups and network namespaces need it)")
    tools = sorted({pkg for tool, pkg in NODE_PACKAGES.items() if shutil.which(tool) is None})
    if tools:
        missing.append(f"Debian packages {', '.join(tools)} (run hack/install-node-deps.sh)")
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("containernetworking-plugins (run hack/install-node-deps.sh)")
    if not Path("/sys/fs/cgroup/memory").is_dir():
        missing.append("cgroup v1 memory controller at /sys/fs/cgroup/memory")
    return missing


def _unavailable(reason: str) -> None:
    missing_input(f"real node unavailable: {reason}")


NODE_MONITOR_GRACE_S = 20
"""The controller-manager's --node-monitor-grace-period here: a kubelet silent this long makes the node NotReady
(the default cluster waits 5 minutes, for kwok's starved heartbeats)."""
HPA_SYNC_PERIOD_S = 5
"""The controller-manager's --horizontal-pod-autoscaler-sync-period here (default 15 s)."""


def _env(state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ELASTISERVE_CLUSTER_DIR=str(state), ELASTISERVE_NODES="0", ELASTISERVE_REAL_NODE="1",
               ELASTISERVE_NODE_MONITOR_GRACE_PERIOD=f"{NODE_MONITOR_GRACE_S}s",
               ELASTISERVE_HPA_SYNC_PERIOD=f"{HPA_SYNC_PERIOD_S}s")
    return env


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[RealCluster]:
    if os.environ.get("ELASTISERVE_SKIP_REAL_NODE") == "1":
        missing_input("ELASTISERVE_SKIP_REAL_NODE=1: real node disabled")
    missing = missing_prerequisites()
    if missing:
        _unavailable("; ".join(missing))
    state = real_cluster_dir()
    env = _env(state)
    try:
        run_cluster_sh("build", env=env, timeout=BUILD_TIMEOUT_S, stream=True)
        run_cluster_sh("build-node", env=env, timeout=BUILD_TIMEOUT_S, stream=True)
        run_cluster_sh("up", env=env, timeout=UP_TIMEOUT_S)
        image = run_cluster_sh("image", env=env, timeout=IMAGE_TIMEOUT_S).stdout.strip().splitlines()[-1]
        exports = parse_env_exports(run_cluster_sh("env", env=env, timeout=60).stdout)
    except (ClusterError, OSError, subprocess.SubprocessError) as exc:
        try:
            run_cluster_sh("down", env=env, timeout=180)
        except (ClusterError, OSError, subprocess.SubprocessError):
            pass
        pytest.fail(f"cluster with a real node could not start: {exc}", pytrace=False)
    kubeconfig = Path(exports["KUBECONFIG"])
    env["KUBECONFIG"] = str(kubeconfig)
    env["PATH"] = f"{exports.get('PATH', '')}:{env.get('PATH', '')}"
    helm_home = state / "helm"
    env.update(HELM_CACHE_HOME=str(helm_home / "cache"), HELM_CONFIG_HOME=str(helm_home / "config"),
               HELM_DATA_HOME=str(helm_home / "data"))
    cluster = LocalCluster(kubeconfig=kubeconfig, bin_dir=Path(exports["ELASTISERVE_BIN_DIR"]),
                           helm_bin=Path(exports["ELASTISERVE_HELM"]), state_dir=state, env=env)
    try:
        yield RealCluster(cluster=cluster, image=image, prometheus_sd=exports.get("ELASTISERVE_PROMETHEUS_SD", ""))
    finally:
        run_cluster_sh("down", env=env, timeout=180)


__all__ = ["HPA_SYNC_PERIOD_S", "NFT_TABLE", "NODE_GATEWAY", "NODE_MONITOR_GRACE_S", "NODE_NAME", "POD_CIDR",
           "RealCluster", "missing_prerequisites", "real_cluster"]
