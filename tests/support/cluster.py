"""A real local Kubernetes control plane for tests (``hack/cluster.sh``).

``k8s_cluster`` (session scope) runs ``hack/cluster.sh build`` (a no-op when the
cache under ``$ELASTISERVE_CACHE`` is warm) and ``up``, yields a
:class:`LocalCluster`, and runs ``down`` at the end of the session, also when
tests fail. If the control plane cannot be built or started the fixture FAILS
with the reason; set ``ELASTISERVE_SKIP_CLUSTER=1`` to skip instead.

The test cluster lives in its own state dir (``$ELASTISERVE_TEST_CLUSTER_DIR``,
default ``$ELASTISERVE_CACHE/cluster-pytest``), so a demo cluster started with
``hack/cluster.sh up`` is never stopped by a test run.

``namespace`` (function scope) creates a fresh namespace for one test and
deletes it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import missing_input, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "hack" / "cluster.sh"

# A cold build compiles Kubernetes: allow for it (CI should run `hack/cluster.sh build` first).
BUILD_TIMEOUT_S = int(os.environ.get("ELASTISERVE_BUILD_TIMEOUT", "4800"))
UP_TIMEOUT_S = int(os.environ.get("ELASTISERVE_UP_TIMEOUT", "600"))


class ClusterError(RuntimeError):
    """The local control plane could not be built, started or used."""


def cache_dir() -> Path:
    return Path(os.environ.get("ELASTISERVE_CACHE") or Path.home() / ".cache" / "elastiserve")


def cluster_state_dir() -> Path:
    explicit = os.environ.get("ELASTISERVE_TEST_CLUSTER_DIR")
    return Path(explicit) if explicit else cache_dir() / "cluster-pytest"


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_cluster_sh(
    command: str, *, env: Mapping[str, str], timeout: float, stream: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``hack/cluster.sh COMMAND``; raise :class:`ClusterError` with its output on failure.

    With ``stream`` its progress lines also go to the real stderr as they come
    (a cold build takes a while; pytest would otherwise show nothing).
    """
    argv = ["bash", str(CLUSTER_SH), command]
    if not stream:
        try:
            proc = subprocess.run(
                argv,
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stderr or b""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise ClusterError(f"`hack/cluster.sh {command}` timed out after {timeout:.0f}s:\n{_tail(out)}") from exc
    else:
        lines: list[str] = []
        with subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as child:
            timer = threading.Timer(timeout, child.kill)
            timer.start()
            try:
                assert child.stdout is not None
                for line in child.stdout:
                    lines.append(line)
                    sys.__stderr__.write(line)
                    sys.__stderr__.flush()
                child.wait()
            finally:
                timer.cancel()
        proc = subprocess.CompletedProcess(argv, child.returncode, "".join(lines), "")
        if child.returncode < 0:
            raise ClusterError(f"`hack/cluster.sh {command}` timed out after {timeout:.0f}s:\n{_tail(proc.stdout)}")
    if proc.returncode != 0:
        raise ClusterError(
            f"`hack/cluster.sh {command}` failed (exit {proc.returncode}):\n{_tail(proc.stderr + proc.stdout)}"
        )
    return proc


def parse_env_exports(text: str) -> dict[str, str]:
    """Parse the ``export NAME=value`` lines printed by ``hack/cluster.sh env``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        name, _, value = line[len("export ") :].partition("=")
        if name == "PATH":
            # export PATH=<dirs>:"$PATH": keep our dirs only
            value = value.replace(':"$PATH"', "")
        parts = shlex.split(value)
        out[name] = parts[0] if parts else ""
    return out


@dataclass
class LocalCluster:
    """Handle on a running local control plane."""

    kubeconfig: Path
    bin_dir: Path
    helm_bin: Path
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def kubectl_bin(self) -> Path:
        return self.bin_dir / "kubectl"

    def _run(
        self,
        argv: Sequence[str],
        *,
        check: bool,
        input: str | None,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(argv),
            env=self.env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            cmd = " ".join(shlex.quote(a) for a in argv[1:])
            raise ClusterError(
                f"`{Path(argv[0]).name} {cmd}` failed (exit {proc.returncode}):\n{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the cluster's kubectl with the admin kubeconfig (text output captured)."""
        return self._run([str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig), *args], check=check, input=input, timeout=timeout)

    def kubectl_json(self, *args: str, timeout: float = 120) -> Any:
        """``kubectl ... -o json`` parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Wait until a CRD is served. (``kubectl wait --for=condition=Established`` fails at once, instead
        of waiting, when it reads the CRD before the API server has written any condition.)"""

        def established() -> bool:
            conditions = self.kubectl_json("get", "crd", crd).get("status", {}).get("conditions") or []
            return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

        wait_until(established, timeout=timeout, interval=0.2, what=f"CRD {crd} Established")

    def helm(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against the cluster (KUBECONFIG set in its environment)."""
        return self._run([str(self.helm_bin), *args], check=check, input=input, timeout=timeout)

    def apply(
        self, manifest: str | Mapping[str, Any], *, namespace: str | None = None, server_side: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply -f -`` for YAML text or one object given as a dict."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        if server_side:
            args += ["--server-side", "--field-manager", "elastiserve-tests"]
        return self.kubectl(*args, input=text)

    def wait_for(self, condition: Any, *, timeout: float = 60, interval: float = 0.5, what: str = "condition") -> Any:
        return wait_until(condition, timeout=timeout, interval=interval, what=what)


def _base_env(state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ELASTISERVE_CLUSTER_DIR"] = str(state_dir)
    return env


def start_cluster(state_dir: Path | None = None) -> LocalCluster:
    """Build (if needed) and start the control plane; return a handle. Raises :class:`ClusterError`."""
    state = state_dir or cluster_state_dir()
    env = _base_env(state)
    run_cluster_sh("build", env=env, timeout=BUILD_TIMEOUT_S, stream=True)
    try:
        run_cluster_sh("up", env=env, timeout=UP_TIMEOUT_S)
    except ClusterError as first:
        # Seen once on a busy machine: etcd exited during start-up with an empty log (a port chosen
        # free and taken before etcd bound it, most likely). `up` cleans up after itself; one retry
        # with freshly chosen ports, then give up with both errors.
        try:
            run_cluster_sh("up", env=env, timeout=UP_TIMEOUT_S)
        except ClusterError as second:
            raise ClusterError(f"{second}\n(first attempt: {first})") from first
    exports = parse_env_exports(run_cluster_sh("env", env=env, timeout=60).stdout)
    kubeconfig = Path(exports["KUBECONFIG"])
    bin_dir = Path(exports["ELASTISERVE_BIN_DIR"])
    helm_bin = Path(exports["ELASTISERVE_HELM"])
    path_dirs = exports.get("PATH", "")
    env["KUBECONFIG"] = str(kubeconfig)
    env["PATH"] = f"{path_dirs}:{env.get('PATH', '')}" if path_dirs else env.get("PATH", "")
    # keep helm's caches/config out of the user's home
    helm_home = state / "helm"
    env.setdefault("HELM_CACHE_HOME", str(helm_home / "cache"))
    env.setdefault("HELM_CONFIG_HOME", str(helm_home / "config"))
    env.setdefault("HELM_DATA_HOME", str(helm_home / "data"))
    return LocalCluster(kubeconfig=kubeconfig, bin_dir=bin_dir, helm_bin=helm_bin, state_dir=state, env=env)


def stop_cluster(state_dir: Path | None = None) -> None:
    state = state_dir or cluster_state_dir()
    run_cluster_sh("down", env=_base_env(state), timeout=120)


@pytest.fixture(scope="session")
def k8s_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """The local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes)."""
    if os.environ.get("ELASTISERVE_SKIP_CLUSTER") == "1":
        missing_input("ELASTISERVE_SKIP_CLUSTER=1: local control plane disabled")
    state = cluster_state_dir()
    error: str | None = None
    capman = request.config.pluginmanager.getplugin("capturemanager")
    try:
        # let the build's progress lines reach the terminal (a cold build is long)
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            cluster = start_cluster(state)
    except (ClusterError, OSError, subprocess.SubprocessError) as exc:
        error = str(exc)
    if error is not None:
        try:
            stop_cluster(state)
        except (ClusterError, OSError, subprocess.SubprocessError):
            pass
        pytest.fail(f"local Kubernetes control plane unavailable: {error}", pytrace=False)
    try:
        yield cluster
    finally:
        stop_cluster(state)


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "test"
    return f"{slug}-{uuid.uuid4().hex[:6]}"


def create_namespace(cluster: LocalCluster, name: str) -> str:
    """Create namespace ``name`` and wait until its ``default`` ServiceAccount exists (pods need it)."""
    cluster.kubectl("create", "namespace", name)
    wait_until(lambda: cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
               timeout=60, what=f"ServiceAccount default in namespace {name}")
    return name


@pytest.fixture
def namespace(k8s_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its ``default`` ServiceAccount ready), deleted after the test."""
    name = _namespace_name(request.node.name)
    try:
        yield create_namespace(k8s_cluster, name)
    finally:
        k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


__all__ = [
    "CLUSTER_SH",
    "create_namespace",
    "ClusterError",
    "LocalCluster",
    "k8s_cluster",
    "namespace",
    "parse_env_exports",
    "start_cluster",
    "stop_cluster",
]
