"""hack/keda.sh (KEDA for bench/live.py): versioned cache folder, clear errors without a build or a cluster,
and a `down` that is safe when nothing runs. The build itself (~40 min) and `up` are exercised by
bench/keda_smoke.py, not here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

KEDA_SH = Path(__file__).resolve().parents[2] / "hack" / "keda.sh"


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, ELASTISERVE_CACHE=str(tmp_path / "cache"), ELASTISERVE_CLUSTER_DIR=str(tmp_path / "cluster"),
             **env)
    return subprocess.run(["bash", str(KEDA_SH), *args], env=e, capture_output=True, text=True, timeout=60)


def test_path_is_keyed_by_version(tmp_path: Path):
    out = _run(tmp_path, "path")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "cache" / "bin" / "keda-v2.21.0")
    assert _run(tmp_path, "path", KEDA_VERSION="v2.20.2").stdout.strip().endswith("/keda-v2.20.2")


def test_up_without_a_cluster_says_what_to_run(tmp_path: Path):
    out = _run(tmp_path, "up")
    assert out.returncode == 1
    assert f"no running cluster in {tmp_path / 'cluster'}" in out.stderr
    assert "hack/cluster.sh up" in out.stderr


def test_down_with_nothing_running_is_a_no_op_and_unknown_commands_fail(tmp_path: Path):
    out = _run(tmp_path, "down")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "cluster").exists()
    bad = _run(tmp_path, "start")
    assert bad.returncode == 1 and "unknown command 'start'" in bad.stderr and "build|up|down|status|path" in bad.stderr
