"""Fixtures for the serving unit tests: tiny random encoders built with the real graph builder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from elastiserve.serving.builder import build_tiny_model


class FakeClock:
    """An injectable monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory) -> Path:
    """One tiny model folder (model.onnx + tokenizer.json + manifest), built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "template", hidden=8, layers=1, heads=2)


@pytest.fixture
def store(tmp_path, tiny_template) -> Path:
    """A model store with four good tiny models, a corrupt one and one without files."""
    root = tmp_path / "store"
    root.mkdir()
    for name in ("alpha", "beta", "gamma", "delta"):
        shutil.copytree(tiny_template, root / name)
    bad = root / "corrupt"
    shutil.copytree(tiny_template, bad)
    (bad / "model.onnx").write_bytes(b"this is not an onnx protobuf" * 10)
    (root / "empty").mkdir()
    return root


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
