"""elastiserve's Grafana dashboards as code.

Each module describes one dashboard with the neutral model of ``spec.py``; ``grafana.py`` turns it into
Grafana JSON with grafana-foundation-sdk, ``generate.py`` writes ``generated/*.json`` and the chart's
ConfigMaps, and ``render.py`` draws PNG previews from the same queries against a Prometheus.
"""

from __future__ import annotations

from . import fleet, model, operator_health
from .spec import Dashboard

DASHBOARDS: tuple[Dashboard, ...] = (fleet.DASHBOARD, model.DASHBOARD, operator_health.DASHBOARD)

__all__ = ["DASHBOARDS", "Dashboard"]
