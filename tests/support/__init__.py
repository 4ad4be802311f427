"""Test support: a real local Kubernetes control plane and a real Prometheus.

Register the fixtures from ``tests/conftest.py``::

    pytest_plugins = ["support.cluster", "support.prometheus"]  # pythonpath = ["tests"]

This package must not import ``elastiserve``: it has to work before the
project is installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition polled by :func:`wait_until` did not hold before the deadline."""


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "condition",
) -> T:
    """Call ``condition`` until it returns a truthy value; return that value.

    Exceptions raised by ``condition`` count as "not yet"; the last one is
    chained to the :class:`WaitTimeout` raised when ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_value: object = None
    while True:
        try:
            last_value = condition()
            if last_value:
                return last_value
            last_exc = None
        except Exception as exc:  # noqa: BLE001 - polled conditions may fail while settling
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f"last error: {last_exc!r}" if last_exc else f"last value: {last_value!r}"
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what} ({detail})") from last_exc
        time.sleep(interval)


__all__ = ["WaitTimeout", "wait_until"]


def load_hack(name: str) -> ModuleType:
    """Import ``hack/<name>.py`` (a script folder, not a package) as the module ``name``."""
    path = Path(__file__).resolve().parents[2] / "hack" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def missing_input(reason: str) -> None:
    """A test's input (a tool, a build, shared data) is missing: fail under CI, where ``make test`` installs and
    builds everything, so a missing input is a broken setup; skip on a developer's machine."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"test input missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)
