"""A small, renderer-neutral description of a dashboard: rows of panels, each with PromQL targets.

One description feeds two renderers: ``grafana.py`` (Grafana JSON through grafana-foundation-sdk)
and ``render.py`` (PNG previews with matplotlib, querying Prometheus). The tests check every target's
PromQL with promtool and run it against a real Prometheus, so what the previews show, what Grafana
shows and what is tested are the same queries.

Template variables in expressions use Grafana's syntax (``$namespace``, ``$__rate_interval``,
``$__range``); :func:`expand` substitutes them for the PNG renderer and the tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

PanelKind = Literal["timeseries", "stat", "bargauge"]


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""
    """Grafana legend format, e.g. ``{{variant}}``; empty: the series' labels."""


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    kind: PanelKind = "timeseries"
    unit: str = "short"
    """Grafana unit id: ``short``, ``percent``, ``reqps``, ``ms``, ``s``, ``bytes``, ``percentunit``."""
    description: str = ""
    width: int = 12
    """Grid columns out of 24."""
    height: int = 8
    stack: bool = False
    band: tuple[str, str] | None = None
    """Legends of two series to shade between (lower, upper), e.g. a forecast interval."""
    min: float | None = None
    max: float | None = None
    thresholds: tuple[tuple[float, str], ...] = ()
    """Colour steps above ``base_color``: ((80, "orange"), (95, "red"))."""
    base_color: str = "green"
    bars: bool = False
    """Draw a time series as bars (counts per interval)."""
    min_interval: str = ""
    """Lower bound of ``$__interval`` for this panel (Grafana's panel "Min interval")."""


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A dashboard variable: a Prometheus label's values, or a fixed list of options."""

    name: str
    label: str
    query: str = ""
    """``label_values(metric{...}, label)`` for a query variable; empty for a custom one."""
    options: tuple[str, ...] = ()
    """Choices of a custom variable; the first is the default."""
    multi: bool = False
    include_all: bool = False
    description: str = ""

    @property
    def metric_and_label(self) -> tuple[str, str]:
        """``label_values(m{...}, l)`` → (``m{...}``, ``l``)."""
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", self.query.strip())
        if not m:
            raise ValueError(f"variable {self.name}: not a label_values() query: {self.query!r}")
        return m.group(1).strip(), m.group(2)


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = ("elastiserve",)
    time_from: str = "now-6h"
    refresh: str = "30s"

    @property
    def panels(self) -> tuple[Panel, ...]:
        return tuple(p for row in self.rows for p in row.panels)

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


# --------------------------------------------------------------------------- variable expansion

_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")


def _duration(seconds: float) -> str:
    seconds = max(1, int(round(seconds)))
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def builtins(*, range_seconds: float, step_seconds: float, scrape_seconds: float = 15.0) -> dict[str, str]:
    """Grafana's global variables for a time range and a step, as Grafana computes them."""
    rate_interval = max(step_seconds + scrape_seconds, 4 * scrape_seconds)
    return {
        "__interval": _duration(step_seconds),
        "__rate_interval": _duration(rate_interval),
        "__range": _duration(range_seconds),
        "__range_s": str(int(round(range_seconds))),
    }


def _format(value: str | list[str], fmt: str | None) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if len(values) == 1 and fmt != "regex":
        return values[0]
    escaped = [re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", v) for v in values] if fmt == "regex" else values
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(expr: str, values: Mapping[str, str | list[str]]) -> str:
    """Substitute ``$name`` / ``${name}`` / ``${name:regex}`` like Grafana does for Prometheus.

    A multi-value variable becomes ``(a|b)``, which is how Grafana formats it inside ``=~``.
    Unknown variables raise ``KeyError`` so that a typo cannot slip through a test.
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name not in values:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return _format(values[name], m.group(2))

    return _VAR.sub(sub, expr)


def variables_used(expr: str) -> set[str]:
    return {m.group(1) or m.group(3) for m in _VAR.finditer(expr)}
