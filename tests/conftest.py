"""Shared pytest setup: golden-file updating and the real-infrastructure fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"

pytest_plugins = ["support.cluster", "support.prometheus", "support.devstack", "support.s3", "support.jaeger",
                  "support.real_node"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files from the current output.")


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """Compare text with tests/golden/<name>; with --update-golden, rewrite it instead."""
    update = request.config.getoption("--update-golden") or os.environ.get("UPDATE_GOLDEN") == "1"

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update or not path.exists():
            if not update and os.environ.get("CI"):
                pytest.fail(f"golden file {path} is missing; run pytest --update-golden and commit it")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        expected = path.read_text()
        assert text == expected, f"{name} differs from the golden file; review and run pytest --update-golden"

    return check


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
