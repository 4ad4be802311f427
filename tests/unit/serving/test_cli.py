"""The typer CLI surface and the flag/env -> ServerConfig mapping (nothing is served here)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from elastiserve.serving import cli, paths
from elastiserve.serving.server import ServerConfig, config_from_values

SERVING = Path(cli.__file__).resolve().parent


def test_model_app_commands():
    app = typer.Typer()
    app.add_typer(cli.model_app, name="model")
    app.command("serve")(cli.serve)
    r = CliRunner().invoke(app, ["model", "--help"])
    assert r.exit_code == 0
    for cmd in ("build", "quantize", "compare"):
        assert cmd in r.output
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0 and "--memory-budget" in r.output and "--preload" in r.output


def _values(**over):
    base = dict(host="127.0.0.1", port=8080, store=None, model=None, discover=False, variant=None,
                memory_budget="512Mi", idle_unload_seconds=300.0, preload=None, max_request_bytes="1Mi",
                max_batch=64, intra_op_threads=None, infer_workers=2)
    base.update(over)
    return config_from_values(**base)


def test_defaults_single_minilm(monkeypatch):
    monkeypatch.delenv("ELASTISERVE_VARIANT", raising=False)
    cfg = _values()
    assert cfg.models == {"minilm": None} and cfg.variant == "fp32"
    assert cfg.memory_budget == 512 * 2**20 and cfg.max_request_bytes == 2**20
    assert cfg.stores == [str(paths.models_root())]


def test_variant_follows_the_label_env(monkeypatch):
    monkeypatch.setenv("ELASTISERVE_VARIANT", "int8")
    assert _values().variant == "int8"
    monkeypatch.setenv("ELASTISERVE_VARIANT", "burst")  # a label that is no artifact variant
    assert _values().variant == "fp32"
    assert _values(variant="int8").variant == "int8"


def test_pairs_stores_and_preload():
    cfg = _values(model=["a=/m/a,b", "c=s3://bkt/c"], store=["/m,s3://bkt"], preload=["a,b"])
    assert cfg.models == {"a": "/m/a", "b": None, "c": "s3://bkt/c"}
    assert cfg.stores == ["/m", "s3://bkt"] and cfg.preload == ["a", "b"]


def test_bad_values():
    with pytest.raises(ValueError):
        _values(memory_budget="lots")
    with pytest.raises(ValueError):
        ServerConfig(variant="fp16")


def test_serving_stays_independent_of_the_operator():
    """serving is deployed alone: no imports of the operator, scaling, kopf or kubernetes.

    (activator.py, the lead's, talks to the API server and is checked by its own tests.)"""
    banned = ("elastiserve.operator", "elastiserve.scaling", "kopf", "kubernetes")
    for path in SERVING.glob("*.py"):
        if path.name == "activator.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")]
            for m in mods:
                assert not m.startswith(banned), f"{path.name} imports {m}"
                assert not m.startswith(("..operator", "..scaling")), f"{path.name} imports {m}"
