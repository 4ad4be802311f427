"""The Dockerfile: hadolint-clean, multi-stage, non-root uid 10001, OCI labels, one entry point; .dockerignore lets the package through.

There is no Docker engine here: tests/integration/test_clean_install.py (marked e2e) repeats the
build stage's install steps in a clean virtualenv instead.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from support import missing_input

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_hadolint_is_clean():
    binary = shutil.which("hadolint")
    if not binary:
        missing_input("hadolint not installed (it comes with the test extras: pip install -e '.[test]')")
    proc = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_on_slim_python_311():
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.MULTILINE))
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    st = stages(text)
    assert len(st) == 2, "a build stage and a runtime stage"
    assert st[0][0][1].endswith("AS build")
    runtime = st[-1]
    assert ("COPY", "--from=build /opt/elastiserve /opt/elastiserve") in runtime
    assert not [i for i in instructions(text) if i[0] == "ADD"], "use COPY"


def test_runtime_is_non_root_with_one_entry_point():
    runtime = stages(DOCKERFILE.read_text())[-1]
    users = [arg for ins, arg in runtime if ins == "USER"]
    assert users == ["10001:10001"]
    run = " ".join(arg for ins, arg in runtime if ins == "RUN")
    assert "--uid 10001" in run and "--gid 10001" in run
    entry = [json.loads(arg) for ins, arg in runtime if ins == "ENTRYPOINT"]
    assert entry == [["elastiserve"]]


def test_build_installs_the_package_and_onnxruntime_and_smoke_tests_them():
    build = stages(DOCKERFILE.read_text())[0]
    run = " ".join(arg for ins, arg in build if ins == "RUN")
    assert "pip install --no-cache-dir /src" in run and "-e " not in run, "a regular (non-editable) install"
    assert "elastiserve --help" in run and "elastiserve crd" in run
    assert "import onnxruntime" in run


def test_build_steps_do_not_run_inside_the_copied_package():
    """`python -m venv`/`python -c` put the working directory first on sys.path: run from /src (the
    context, whose `operator/` folder is the package's) they import it instead of the standard library's
    `operator`, and the build fails (found by the first real build, hack/image.sh)."""
    workdir, copied_to = "/", None
    for ins, arg in stages(DOCKERFILE.read_text())[0]:
        if ins == "WORKDIR":
            workdir = arg
        elif ins == "COPY" and arg.split()[0] == ".":
            copied_to = workdir if arg.split()[1] in (".", "./") else arg.split()[1]
        elif ins == "RUN" and "python" in arg:
            assert copied_to and workdir.rstrip("/") != copied_to.rstrip("/"), (workdir, copied_to)


def test_the_model_server_listens_on_every_address_in_a_container():
    env = " ".join(arg for ins, arg in stages(DOCKERFILE.read_text())[-1] if ins == "ENV")
    # read by `elastiserve serve` (whose own default, 127.0.0.1, no probe or Service could reach)
    assert re.search(r"\bELASTISERVE_HOST=0\.0\.0\.0\b", env)


def test_oci_labels():
    labels = " ".join(arg for ins, arg in stages(DOCKERFILE.read_text())[-1] if ins == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_dockerignore_lets_every_package_folder_through():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]
    folders = {p.split(".")[1] for p in packages if p.count(".") >= 1}
    lines = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "*", "exclude everything first, then let the package back in"
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    missing = folders - allowed
    assert not missing, f".dockerignore drops package folders {sorted(missing)}"
    assert {"pyproject.toml", "README.md", "__init__.py", "cli.py"} <= allowed
    assert not allowed & {"tests", "charts", "dashboards", "hack", ".git"}
