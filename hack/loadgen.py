#!/usr/bin/env python3
"""The load generator moved into the package: ``elastiserve.loadgen``, run as ``elastiserve load``.

This script stays so that ``hack/loadgen.py ARGS`` and ``from loadgen import LoadGen`` (with hack/ on the
path) keep working: it runs ``elastiserve load ARGS`` and re-exports the package's names.
"""

from __future__ import annotations

import sys

from elastiserve.loadgen import SENTENCES, CompressedDay, Constant, LoadGen, Stats, TraceCurve, loopback

__all__ = ["SENTENCES", "CompressedDay", "Constant", "LoadGen", "Stats", "TraceCurve", "loopback"]

if __name__ == "__main__":
    from elastiserve.cli import app

    sys.exit(app(["load", *sys.argv[1:]]))
