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

import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
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
SERVICE_CIDR = "10.96.0.0/16"
"""The API server's --service-cluster-ip-range (hack/run.sh); the node's egress guard keeps it on the machine."""
NODE_GATEWAY = "10.250.0.1"
NFT_TABLE = "elastiserve_node"
CHART = Path(__file__).resolve().parents[2] / "charts" / "elastiserve"
SYSTEM_NS = "elastiserve-system"


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


def start_real_cluster(state: Path, on_step=None) -> RealCluster:
    """Build (cached) and start a control plane with one real node in ``state``, build the project's image
    (cached by content hash) and load it into the node. Raises :class:`ClusterError` (after tearing down
    what started) when any step fails. ``on_step(text)`` hears each step before it runs (the demo prints
    them: a cold build takes long). The fixture below and the demo (hack/live.py) use it."""
    env = _env(state)
    say = on_step or (lambda _text: None)
    try:
        say("building the control plane (cached by version; cold: 16 min on an idle 2-core machine, "
            "50 min on a busy one)")
        run_cluster_sh("build", env=env, timeout=BUILD_TIMEOUT_S, stream=True)
        say("building the real node: kubelet, kube-proxy, CoreDNS, metrics-server, Prometheus "
            "(cached; cold: up to 45 min on a busy machine)")
        run_cluster_sh("build-node", env=env, timeout=BUILD_TIMEOUT_S, stream=True)
        say("starting the control plane and the real node (containerd, runc, CNI bridge, kubelet)")
        run_cluster_sh("up", env=env, timeout=UP_TIMEOUT_S)
        say("building the project's image from the Dockerfile and loading it into the node "
            "(cached by content; about 4 min when the code changed, 25 min the first time with its Debian base)")
        image = run_cluster_sh("image", env=env, timeout=IMAGE_TIMEOUT_S).stdout.strip().splitlines()[-1]
        exports = parse_env_exports(run_cluster_sh("env", env=env, timeout=60).stdout)
    except (ClusterError, OSError, subprocess.SubprocessError) as exc:
        try:
            stop_real_cluster(state)
        except (ClusterError, OSError, subprocess.SubprocessError):
            pass
        raise ClusterError(f"cluster with a real node could not start: {exc}") from exc
    kubeconfig = Path(exports["KUBECONFIG"])
    env["KUBECONFIG"] = str(kubeconfig)
    env["PATH"] = f"{exports.get('PATH', '')}:{env.get('PATH', '')}"
    helm_home = state / "helm"
    env.update(HELM_CACHE_HOME=str(helm_home / "cache"), HELM_CONFIG_HOME=str(helm_home / "config"),
               HELM_DATA_HOME=str(helm_home / "data"))
    cluster = LocalCluster(kubeconfig=kubeconfig, bin_dir=Path(exports["ELASTISERVE_BIN_DIR"]),
                           helm_bin=Path(exports["ELASTISERVE_HELM"]), state_dir=state, env=env)
    return RealCluster(cluster=cluster, image=image, prometheus_sd=exports.get("ELASTISERVE_PROMETHEUS_SD", ""))


def helm_install(real: RealCluster, release: str, values: dict[str, str] | None = None, timeout_s: int = 300) -> None:
    """``helm upgrade --install`` the chart from the image built into the node (pulled never) into
    elastiserve-system, waiting until the operator and the activator are Ready by their real probes.
    ``values``: more ``--set`` pairs."""
    sets = {"image.repository": real.repository, "image.tag": real.tag, "image.pullPolicy": "Never"} | (values or {})
    real.cluster.helm("upgrade", "--install", release, str(CHART), "--namespace", SYSTEM_NS, "--create-namespace",
                      *[arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")],
                      "--wait", "--timeout", f"{timeout_s}s", timeout=timeout_s + 100)


def discovering_prometheus(real: RealCluster, workdir: Path, interval: str = "1s",
                           backfill: str | None = None):
    """A Prometheus (not started) on the node's bridge address, where the operator's pod can query it, that
    DISCOVERS what it scrapes (hack/prometheus-sd.py: model-server, operator and activator pods, the kubelet's
    cAdvisor). ``backfill``: OpenMetrics history loaded before it starts. Raises ClusterError with the reason
    when the discovery-capable binary is missing or the config cannot be written."""
    import json
    import sys

    from .prometheus import PrometheusServer

    if not real.prometheus_sd or not Path(real.prometheus_sd).exists():
        raise ClusterError(f"the Prometheus with kubernetes_sd_configs is missing ({real.prometheus_sd!r}): "
                           "run hack/cluster.sh build-node")
    sd = subprocess.run([sys.executable, str(CHART.parents[1] / "hack" / "prometheus-sd.py"),
                         "--out", str(workdir / "prometheus-sd"), "--kubeconfig", str(real.cluster.kubeconfig),
                         "--interval", interval], env=real.cluster.env, capture_output=True, text=True,
                        timeout=120, check=False)
    if sd.returncode != 0:
        raise ClusterError(f"hack/prometheus-sd.py failed: {sd.stderr.strip()[-500:]}")
    config = json.loads(Path(sd.stdout.strip()).read_text())
    return PrometheusServer(workdir=workdir / "prometheus", config=config, backfill=backfill,
                            binary=real.prometheus_sd, host=NODE_GATEWAY)


def serve_directory(directory: Path, host: str = NODE_GATEWAY) -> tuple[str, Callable[[], None]]:
    """Serve ``directory`` over HTTP on the node's bridge address (reachable by the pods, not from outside the
    machine): a model store. Returns its base URL and a stop function."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the pods' requests are not output
            pass

    server = http.server.ThreadingHTTPServer((host, 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://{host}:{server.server_address[1]}", stop


def stop_real_cluster(state: Path) -> None:
    """Stop the cluster of ``state`` and its real node, restoring the host state the node changed."""
    run_cluster_sh("down", env=_env(state), timeout=180)


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[RealCluster]:
    if os.environ.get("ELASTISERVE_SKIP_REAL_NODE") == "1":
        missing_input("ELASTISERVE_SKIP_REAL_NODE=1: real node disabled")
    missing = missing_prerequisites()
    if missing:
        _unavailable("; ".join(missing))
    state = real_cluster_dir()
    try:
        real = start_real_cluster(state)
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield real
    finally:
        stop_real_cluster(state)


__all__ = ["HPA_SYNC_PERIOD_S", "NFT_TABLE", "NODE_GATEWAY", "NODE_MONITOR_GRACE_S", "NODE_NAME", "POD_CIDR",
           "SERVICE_CIDR", "SYSTEM_NS", "RealCluster", "discovering_prometheus", "helm_install", "missing_prerequisites", "real_cluster",
           "serve_directory",
           "start_real_cluster", "stop_real_cluster"]
