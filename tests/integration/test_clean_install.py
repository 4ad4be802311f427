"""The image's install steps work from a clean virtualenv (there is no Docker engine to build the image here).

The test does what the Dockerfile's build stage does, step by step:

1. builds the context the way ``docker build`` would: the repository filtered by ``.dockerignore``;
2. creates a fresh virtualenv (``python -m venv``);
3. runs the build stage's ``RUN`` commands, read from the Dockerfile, with ``/src`` → the context and
   ``/opt/elastiserve`` → the virtualenv. The one change: pip may use its download cache (the image
   build uses ``--no-cache-dir`` only to keep the layer small), which keeps the test near a minute.

So a package folder missing from ``.dockerignore``, a broken ``package-dir`` mapping or a dependency
that does not install makes this test fail just as ``docker build`` would.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INSTALL_BUDGET_S = 180

pytestmark = pytest.mark.e2e


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over a relative path."""
    pattern = pattern.strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line[1:] if negate else line)))
    return rules


def is_excluded(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder matches its files."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def build_context(dest: Path) -> list[str]:
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    copied = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(".git/") or not path.is_file() or is_excluded(rel, rules):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied.append(rel)
    return copied


@pytest.mark.parametrize(
    "rel,excluded",
    [
        ("pyproject.toml", False),
        ("api/spec.py", False),
        ("scaling/rules/__init__.py", False),
        ("api/__pycache__/spec.cpython-311.pyc", True),
        ("tests/conftest.py", True),
        ("charts/elastiserve/values.yaml", True),
        ("dashboards/fleet.py", True),
    ],
)
def test_dockerignore_emulation(rel, excluded):
    assert is_excluded(rel, dockerignore_rules(DOCKERIGNORE.read_text())) is excluded


# --------------------------------------------------------------------------- the build stage


def build_stage_commands() -> list[str]:
    """The shell commands of the build stage's RUN instructions, split at ``&&``."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    commands: list[str] = []
    in_build = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            in_build = line.endswith(" AS build")
        elif in_build and line.startswith("RUN "):
            commands += [c.strip() for c in line[4:].split("&&")]
    return commands


def test_clean_virtualenv_install(tmp_path):
    context, venv = tmp_path / "context", tmp_path / "venv"
    copied = build_context(context)
    assert "pyproject.toml" in copied and "operator/main.py" in copied
    assert not [c for c in copied if c.startswith(("tests/", "charts/", ".git/"))]

    env = {k: v for k, v in os.environ.items() if k not in ("PIP_NO_CACHE_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    commands = build_stage_commands()
    assert commands and commands[0] == "python -m venv /opt/elastiserve", commands
    timings: list[tuple[str, float]] = []
    started = time.monotonic()
    for command in commands:
        command = command.replace("--no-cache-dir ", "").replace("/opt/elastiserve", str(venv)).replace("/src", str(context))
        if command.startswith("python -m venv"):
            argv = [sys.executable, "-m", "venv", str(venv)]
            shell = False
        else:
            argv, shell = command, True
        t0 = time.monotonic()
        # cwd outside the repository: the installed package, not the checkout, must be what runs.
        proc = subprocess.run(argv, shell=shell, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=INSTALL_BUDGET_S * 2, check=False)
        timings.append((command if shell else shlex.join(argv), time.monotonic() - t0))
        assert proc.returncode == 0, f"`{command}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}"
    total = time.monotonic() - started
    print("\nclean install timings:\n" + "\n".join(f"  {s:6.1f}s  {c}" for c, s in timings) + f"\n  {total:6.1f}s  total")

    # The installed package is the wheel's copy, not the checkout (package-dir maps the root to `elastiserve`).
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import elastiserve; print(elastiserve.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert where.startswith(str(venv)), where
    crd = subprocess.run([str(venv / "bin" / "elastiserve"), "crd"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    from elastiserve.api.crd import render_yaml  # the checkout's models (crds/ may lag while api/ changes)

    assert crd == render_yaml(), "the installed package renders a different CRD than the checkout"
    helptext = subprocess.run([str(venv / "bin" / "elastiserve"), "--help"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60, check=True).stdout
    for command in ("run", "crd", "validate", "activator"):
        assert re.search(rf"\b{command}\b", helptext), f"`elastiserve {command}` missing from the installed CLI"
    assert total < INSTALL_BUDGET_S, f"install took {total:.0f}s (budget {INSTALL_BUDGET_S}s)"
