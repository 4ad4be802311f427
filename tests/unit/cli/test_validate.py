"""`elastiserve validate` reads like the API server and stays bounded on hostile files.

One rule set: the file-level cases kubectl itself would refuse (duplicate keys, a misspelt kind, a List of
ModelDeployments) and the bounds no API server needs (bombs, depth, size, encodings). The spec rules are
covered by examples/invalid (each is also rejected by the real API server in
tests/integration/test_operator_cluster.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from elastiserve.cli import app

ROOT = Path(__file__).resolve().parents[3]
GOOD = """apiVersion: elastiserve.dev/v1alpha1
kind: ModelDeployment
metadata: {name: good}
spec:
  model: {name: m, uri: file:///m.onnx}
"""


def run(tmp_path: Path, text: str | bytes, name: str = "m.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    r = CliRunner().invoke(app, ["validate", str(path)])
    return r, path


def test_good_file(tmp_path):
    r, path = run(tmp_path, GOOD)
    assert r.exit_code == 0 and f"{path}: ok (good: fp32(primary))" in r.output


def test_duplicate_keys_are_an_error_with_the_line(tmp_path):
    r, path = run(tmp_path, GOOD + "  replicas: {min: 1, max: 3}\n  replicas: {min: 9, max: 9}\n")
    assert r.exit_code == 1 and f"{path}:7:3: duplicate key 'replicas' (first at line 6)" in r.output


@pytest.mark.parametrize("kind", ["ModelDeploymnet", "Deployment", "List"])
def test_other_kinds_are_errors_not_skips(tmp_path, kind):
    r, _ = run(tmp_path, GOOD.replace("kind: ModelDeployment", f"kind: {kind}"))
    assert r.exit_code == 1 and "kind: Input should be 'ModelDeployment'" in r.output


def test_a_v1_list_is_checked_item_by_item(tmp_path):
    item = "    " + GOOD.replace("\n", "\n    ").rstrip()
    bad = item.replace("name: good", "name: Bad")
    r, path = run(tmp_path, f"apiVersion: v1\nkind: List\nitems:\n  -\n{item}\n  -\n{bad}\n")
    assert r.exit_code == 1
    assert f"{path}.items[0]: ok" in r.output and f"{path}.items[1]: invalid ModelDeployment" in r.output


@pytest.mark.parametrize("api_version", ["elastiserveXdev/v1alpha1", "elastiserve.dev/v1", "v1"])
def test_api_version_is_exact(tmp_path, api_version):
    r, _ = run(tmp_path, GOOD.replace("elastiserve.dev/v1alpha1", api_version))
    assert r.exit_code == 1 and "apiVersion" in r.output


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    r, _ = run(tmp_path, GOOD + f"  metrics: {{rules: {{cpu: {{scaleUpAbove: {value}, scaleDownBelow: 1}}}}}}\n")
    assert r.exit_code == 1 and "spec.metrics.rules.cpu.scaleUpAbove: must be a finite number" in r.output


def test_exponent_numbers_read_as_kubectl_reads_them(tmp_path):
    r, _ = run(tmp_path, GOOD + "  metrics: {rules: {cpu: {scaleUpAbove: 9e1, scaleDownBelow: 1e1}}}\n")
    assert r.exit_code == 0, r.output


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines)


@pytest.mark.parametrize("where", ["enum", "list"])
def test_billion_laughs_ends_at_once(tmp_path, where):
    bomb = _bomb()
    field = "  actuation: *a9\n" if where == "enum" else "  model: {name: m, uri: /m, subModels: *a9}\n"
    text = bomb.replace("a0:", "x-bomb:\n  a0:").replace("\na", "\n  a") + "\n" + GOOD.replace(
        "  model: {name: m, uri: file:///m.onnx}\n", field)
    started = time.process_time()
    r, _ = run(tmp_path, text)
    assert r.exit_code == 1 and "more than 100000 values once aliases are expanded" in r.output
    assert len(r.output) < 2000
    assert time.process_time() - started < 30  # a generous bound: unbounded, this takes minutes


def test_deep_nesting_is_a_message_not_a_recursion_error(tmp_path):
    r, path = run(tmp_path, GOOD + "  x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert r.exit_code == 1 and "nested more than 64 levels deep" in r.output and f"{path}:" in r.output
    assert "RecursionError" not in r.output and len(r.output) < 2000


def test_huge_field_is_not_echoed(tmp_path):
    r, _ = run(tmp_path, GOOD.replace("name: m,", "name: " + "a" * 500_000 + ","))
    assert r.exit_code == 1 and "spec.model.name" in r.output and len(r.output) < 2000


def test_oversized_and_endless_files(tmp_path):
    r, path = run(tmp_path, GOOD + "# " + "x" * (2 << 20) + "\n")
    assert r.exit_code == 1 and f"{path}: larger than 1048576 bytes" in r.output
    r = CliRunner().invoke(app, ["validate", "/dev/zero"])
    assert r.exit_code == 1 and "/dev/zero: larger than 1048576 bytes" in r.output


def test_non_utf8_names_the_file_and_the_line(tmp_path):
    r, path = run(tmp_path, GOOD.encode() + b"# caf\xe9\n")
    assert r.exit_code == 1 and f"{path}:6: not UTF-8 (byte 0xe9" in r.output


def test_a_byte_order_mark_is_fine(tmp_path):
    r, _ = run(tmp_path, "\ufeff" + GOOD)
    assert r.exit_code == 0, r.output


def test_validate_does_not_import_the_heavy_packages():
    # `validate` must stay fast (< 0.5 s target, see bench/validate.py): no statsmodels, pandas, numpy,
    # onnxruntime or kubernetes client for it.
    code = ("import sys; sys.argv = ['elastiserve', 'validate', sys.argv[1]]\n"
            "from elastiserve.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('statsmodels', 'pandas', 'numpy', 'onnxruntime', 'kubernetes', 'scipy')"
            " if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "examples" / "full.yaml")], capture_output=True,
                         text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("command,absent", [
    # a model server starts with `elastiserve serve` in every pod: the backtest's statsmodels/scipy are not for it
    (["serve", "--help"], ("statsmodels", "scipy", "pandas", "kubernetes")),
    (["activator", "--help"], ("statsmodels", "scipy", "pandas", "onnxruntime")),
])
def test_a_subcommand_imports_only_its_own_packages(command, absent):
    code = (f"import sys; sys.argv = ['elastiserve', *{command!r}]\n"
            "from elastiserve.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', sorted(m for m in {absent!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_help_still_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "elastiserve.cli", "--help"], capture_output=True, text=True,
                         timeout=120, cwd="/")
    for command in ("serve", "model", "activator", "backtest", "validate", "run"):
        assert command in out.stdout, out.stdout + out.stderr
