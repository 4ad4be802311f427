"""Fixtures for the chart, dashboard and rules tests: the helm and promtool binaries, the repo's scripts.

helm comes from the local control-plane build (``hack/cluster.sh build`` → ``$ELASTISERVE_CACHE/bin/helm-<v>/helm``),
promtool from Debian's ``prometheus`` package. In CI (``CI`` set) a missing tool fails the test;
on a developer machine it skips with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from support import missing_input

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "elastiserve"
KUBE_VERSION = "1.34.0"
"""Kubernetes version for `helm template` (a Helm built from Go modules defaults to v1.20, below kubeVersion)."""


def missing_tool(message: str) -> None:
    missing_input(message)


def _helm_version() -> str | None:
    """HELM_VERSION from hack/versions.env (plain `v3.22.0` or a `${HELM_VERSION:-v3.22.0}` default)."""
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        m = re.match(r"\s*HELM_VERSION=.*?(v\d+\.\d+\.\d+[^\"'}\s]*)", line)
        if m:
            return m.group(1)
    return None


def find_helm() -> str | None:
    explicit = os.environ.get("ELASTISERVE_HELM")
    if explicit:
        return explicit
    cache = Path(os.environ.get("ELASTISERVE_CACHE") or Path.home() / ".cache" / "elastiserve")
    candidates = [cache / "bin" / f"helm-{_helm_version()}" / "helm"] + sorted((cache / "bin").glob("helm-*/helm"), reverse=True)
    for built in candidates:
        if built.is_file() and os.access(built, os.X_OK):
            return str(built)
    return shutil.which("helm")


class Helm:
    def __init__(self, binary: str, home: Path):
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def template(
        self,
        values_files: Sequence[Path] = (),
        *,
        sets: Sequence[str] = (),
        api_versions: Sequence[str] = (),
        check: bool = True,
        extra: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", "elastiserve", str(CHART), "--namespace", "elastiserve", "--kube-version", KUBE_VERSION]
        for f in values_files:
            args += ["--values", str(f)]
        for s in sets:
            args += ["--set", s]
        for a in api_versions:
            args += ["--api-versions", a]
        return self.run(*args, *extra, check=check)


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = find_helm()
    if not binary:
        missing_tool("helm not found: run `hack/cluster.sh build` (builds helm into ~/.cache/elastiserve/bin) or set ELASTISERVE_HELM")
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def promtool() -> str:
    path = os.environ.get("ELASTISERVE_PROMTOOL") or shutil.which("promtool")
    if not path:
        missing_tool("promtool not found: run `apt-get install -y prometheus` (or make deps-system)")
    return path


def _load_script(name: str) -> ModuleType:
    """Import hack/<name>.py (a script with a dash in its name) as a module."""
    path = ROOT / "hack" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sync_chart() -> ModuleType:
    """hack/sync-chart.py as a module."""
    return _load_script("sync-chart")


@pytest.fixture(scope="session")
def chart_readme() -> ModuleType:
    """hack/chart-readme.py as a module."""
    return _load_script("chart-readme")


@pytest.fixture(scope="session")
def dashboards() -> ModuleType:
    """The repository's ``dashboards`` package (``support.dashboards.load``: the root is appended to sys.path,
    never put first)."""
    from support import dashboards as dashboards_support

    return dashboards_support.load()


@pytest.fixture(scope="session")
def grafana_sdk() -> None:
    """grafana-foundation-sdk, needed to generate the dashboards' JSON."""
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        missing_tool("grafana-foundation-sdk is not installed: pip install -e '.[test]'")
