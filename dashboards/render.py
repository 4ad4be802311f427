"""PNG previews of the dashboards, drawn with matplotlib from the same PromQL against a Prometheus.

    python dashboards/render.py --prometheus-url http://127.0.0.1:9090 --since 1h --out report/dashboards
    python dashboards/render.py --prometheus-url URL --start 1767225600 --end 1767229200 \\
        --var namespace=ml --var modeldeployment=minilm --dashboard elastiserve-model

Variables not given are resolved like Grafana does on load: a query variable takes the first value
of its ``label_values(...)`` (all values for a multi-value "All" variable), a custom one its first option.
Writes ``<out>/<uid>.png`` per dashboard and prints one line per file. Used by the demo's report and
for the images in docs/helm.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.append(str(Path(__file__).resolve().parent.parent))  # appended: the root must not shadow the stdlib
    __package__ = "dashboards"

from dashboards import DASHBOARDS  # noqa: E402
from dashboards.spec import Dashboard, Panel, builtins, expand  # noqa: E402

GRID_COLUMNS = 24
INCH_PER_COLUMN = 0.75
INCH_PER_ROW_UNIT = 0.38
COLORS = {"green": "#56a64b", "orange": "#ff9830", "red": "#e02f44", "yellow": "#fade2a", "blue": "#3274d9"}


class PrometheusClient:
    """The three Prometheus HTTP API calls the renderer needs (stdlib only)."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: list[tuple[str, str]]) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=self.timeout) as resp:
            payload = json.loads(resp.read())
        if payload.get("status") != "success":
            raise RuntimeError(f"{path}: {payload.get('errorType')}: {payload.get('error')}")
        return payload["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self._get("query_range", [("query", expr), ("start", f"{start:.3f}"), ("end", f"{end:.3f}"), ("step", f"{step:g}")])["result"]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = self._get("query", [("query", expr), ("time", f"{at:.3f}")])
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        return self._get(f"label/{label}/values", [("match[]", match), ("start", f"{start:.0f}"), ("end", f"{end:.0f}")])


# --------------------------------------------------------------------------- variables


def resolve_variables(
    d: Dashboard, client: PrometheusClient, given: dict[str, str | list[str]], start: float, end: float
) -> dict[str, str | list[str]]:
    values: dict[str, str | list[str]] = dict(given)
    for v in d.variables:
        if v.name in values:
            continue
        if not v.query:
            values[v.name] = v.options[0]
            continue
        metric, label = v.metric_and_label
        found = sorted(client.label_values(label, expand(metric, values), start, end))
        if not found:
            raise LookupError(f"{d.uid}: no value for ${v.name} ({v.query}) in this time range: pass --var {v.name}=...")
        values[v.name] = found if v.include_all else found[0]
    return values


# --------------------------------------------------------------------------- formatting


def legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}" if shown else "value"


def format_value(value: float, unit: str) -> str:
    if value is None or math.isnan(value):
        return "–"
    if unit == "percent":
        return f"{value:.1f} %"
    if unit == "percentunit":
        return f"{100 * value:.1f} %"
    if unit == "ms":
        return f"{value:.0f} ms" if value >= 10 else f"{value:.2f} ms"
    if unit == "s":
        if abs(value) < 1:
            return f"{value * 1000:.3g} ms"
        return f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min"
    if unit == "bytes":
        for size, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.1f} {suffix}"
        return f"{value:.0f} B"
    if unit == "reqps":
        return f"{value:.3g}/s" if value < 1000 else f"{value:,.0f}/s"
    if unit == "cores":
        return f"{value:.2f} cores"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _floats(values: list[list[Any]]) -> tuple[list[float], list[float]]:
    ts, ys = [], []
    for t, v in values:
        ts.append(float(t))
        ys.append(float(v))
    return ts, ys


# --------------------------------------------------------------------------- panels


@dataclass
class PanelResult:
    title: str
    series: int = 0
    finite_points: int = 0
    errors: list[str] = field(default_factory=list)


def _threshold_color(panel: Panel, value: float) -> str:
    color = panel.base_color
    for limit, c in panel.thresholds:
        if value >= limit:
            color = c
    return COLORS.get(color, color)


def draw_timeseries(ax, panel: Panel, client, values, start, end, step, result: PanelResult) -> None:
    import matplotlib.dates as mdates
    from datetime import datetime, timezone

    lines: dict[str, tuple[list[float], list[float]]] = {}
    for target in panel.targets:
        expr = expand(target.expr, values)
        try:
            series = client.query_range(expr, start, end, step)
        except Exception as exc:  # noqa: BLE001 - show the error on the panel, keep rendering
            result.errors.append(f"{expr}: {exc}")
            continue
        for s in series:
            ts, ys = _floats(s["values"])
            name = legend(target.legend, s["metric"])
            lines[name] = (ts, ys)
            result.series += 1
            result.finite_points += sum(1 for y in ys if math.isfinite(y))
    if not lines:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
        return

    def dt(ts: list[float]) -> list[datetime]:
        return [datetime.fromtimestamp(t, tz=timezone.utc) for t in ts]

    if panel.band and all(name in lines for name in panel.band):
        lo_t, lo_y = lines[panel.band[0]]
        hi = dict(zip(*lines[panel.band[1]]))
        common = [(t, y, hi[t]) for t, y in zip(lo_t, lo_y) if t in hi]
        if common:
            ax.fill_between(dt([c[0] for c in common]), [c[1] for c in common], [c[2] for c in common],
                            alpha=0.25, color="#8ab8ff", label=f"{panel.band[0]} … {panel.band[1]}", linewidth=0)
    if panel.stack and len(lines) > 1:
        grid = sorted({t for ts, _ in lines.values() for t in ts})
        stacks = [[dict(zip(*lines[name])).get(t, 0.0) for t in grid] for name in lines]
        stacks = [[0.0 if math.isnan(v) else v for v in row] for row in stacks]
        ax.stackplot(dt(grid), *stacks, labels=list(lines), alpha=0.7)
    else:
        width = step / 86400 * 0.8
        for name, (ts, ys) in lines.items():
            if panel.bars:
                ax.bar(dt(ts), ys, width=width, label=name, alpha=0.8)
            elif panel.band and name == panel.band[1]:
                continue
            else:
                dashed = panel.band is not None and name == panel.band[0]
                sparse = sum(1 for y in ys if math.isfinite(y)) < 4
                ax.plot(dt(ts), ys, label=name, linewidth=1.4, linestyle="--" if dashed else "-",
                        marker="o" if sparse else None, markersize=3)
    for limit, color in panel.thresholds:
        ax.axhline(limit, color=COLORS.get(color, color), linewidth=0.8, linestyle=":")
    if panel.min is not None:
        ax.set_ylim(bottom=panel.min)
    if panel.max is not None:
        ax.set_ylim(top=panel.max)
    ax.set_xlim(dt([start, end]))
    ax.yaxis.set_major_formatter(lambda v, _pos: format_value(v, panel.unit))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if end - start > 600 else "%H:%M:%S"))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)
    if len(lines) <= 8:
        ax.legend(fontsize=6, loc="upper left", frameon=False)


def draw_instant(ax, panel: Panel, client, values, at: float, result: PanelResult) -> None:
    rows: list[tuple[str, float]] = []
    for target in panel.targets:
        expr = expand(target.expr, values)
        try:
            series = client.query(expr, at)
        except Exception as exc:  # noqa: BLE001
            result.errors.append(f"{expr}: {exc}")
            continue
        for s in series:
            value = float(s["value"][1])
            rows.append((legend(target.legend, s["metric"]), value))
            result.series += 1
            result.finite_points += 1 if math.isfinite(value) else 0
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if not rows:
        ax.text(0.5, 0.45, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
        return
    if panel.kind == "stat":
        value = rows[0][1] if len(rows) == 1 else sum(v for _, v in rows if math.isfinite(v))
        ax.text(0.5, 0.42, format_value(value, panel.unit), ha="center", va="center", transform=ax.transAxes,
                fontsize=20, fontweight="bold", color=_threshold_color(panel, value) if math.isfinite(value) else "#888")
        return
    rows.sort(key=lambda r: r[1] if math.isfinite(r[1]) else -1, reverse=True)
    rows = rows[:12]
    ys = range(len(rows))
    vals = [v if math.isfinite(v) else 0.0 for _, v in rows]
    ax.barh(list(ys), vals, height=0.5, color=[_threshold_color(panel, v) for v in vals], alpha=0.85)
    for y, (name, _) in zip(ys, rows):  # names above the bars: long model names need no left margin
        ax.text(0, y - 0.3, name, fontsize=7, va="bottom")
    ax.set_ylim(len(rows) - 0.5, -0.9)
    top = panel.max if panel.max is not None else (max(vals) * 1.15 if max(vals) > 0 else 1)
    ax.set_xlim(0, top)
    for y, v in zip(ys, vals):
        ax.text(v, y, " " + format_value(v, panel.unit), va="center", fontsize=7)


# --------------------------------------------------------------------------- dashboards


def layout(d: Dashboard) -> tuple[list[tuple[str, float]], list[tuple[Panel, float, float, float, float]], float]:
    """Grafana's auto-layout in grid units: (row titles with y), (panel, x, y, w, h), total height."""
    rows, panels = [], []
    y = 0.0
    for row in d.rows:
        rows.append((row.title, y))
        y += 1
        x, line_h = 0, 0
        for p in row.panels:
            if x + p.width > GRID_COLUMNS:
                y += line_h
                x, line_h = 0, 0
            panels.append((p, x, y, p.width, p.height))
            x += p.width
            line_h = max(line_h, p.height)
        y += line_h
    return rows, panels, y


def render_dashboard(
    d: Dashboard,
    client: PrometheusClient,
    *,
    start: float,
    end: float,
    out: Path,
    values: dict[str, str | list[str]] | None = None,
    step: float | None = None,
    scrape_seconds: float = 15.0,
) -> list[PanelResult]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = step or max(1.0, round((end - start) / 240))
    values = resolve_variables(d, client, dict(values or {}), start, end)
    values.update(builtins(range_seconds=end - start, step_seconds=step, scrape_seconds=scrape_seconds))
    rows, panels, height = layout(d)
    fig_w, fig_h = GRID_COLUMNS * INCH_PER_COLUMN, (height + 3) * INCH_PER_ROW_UNIT
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    shown = {k: v for k, v in values.items() if not k.startswith("__")}
    subtitle = "  ".join(f"{k}={'|'.join(v) if isinstance(v, list) else v}" for k, v in shown.items())
    span = time.strftime("%Y-%m-%d %H:%M", time.gmtime(start)) + " → " + time.strftime("%H:%M UTC", time.gmtime(end))
    fig.text(0.01, 1 - 0.6 / fig_h, d.title, fontsize=14, fontweight="bold", va="top")
    fig.text(0.99, 1 - 0.6 / fig_h, f"{span}   {subtitle}", fontsize=8, va="top", ha="right", color="#555")
    top_margin = 2.2  # grid units above the first row (title)

    def box(x: float, y: float, w: float, h: float) -> list[float]:
        """Grid units → figure fractions, leaving room for tick labels and the panel title (in inches)."""
        left_in = x * INCH_PER_COLUMN + 0.75
        width_in = max(0.2, w * INCH_PER_COLUMN - 0.95)
        top_in = (y + top_margin) * INCH_PER_ROW_UNIT + 0.3
        height_in = max(0.2, h * INCH_PER_ROW_UNIT - 0.65)
        return [left_in / fig_w, 1 - (top_in + height_in) / fig_h, width_in / fig_w, height_in / fig_h]

    for title, y in rows:
        fig.text(0.01, 1 - (y + top_margin + 0.7) * INCH_PER_ROW_UNIT / fig_h, title, fontsize=11, fontweight="bold", color="#333")
    results = []
    for panel, x, y, w, h in panels:
        ax = fig.add_axes(box(x, y, w, h))
        ax.set_title(panel.title, fontsize=9, loc="left")
        result = PanelResult(panel.title)
        if panel.kind == "timeseries":
            draw_timeseries(ax, panel, client, values, start, end, step, result)
        else:
            draw_instant(ax, panel, client, values, end, result)
        if result.errors:
            ax.text(0.5, 0.1, "query error", ha="center", transform=ax.transAxes, color=COLORS["red"], fontsize=8)
        results.append(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return results


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)([smhd])", duration)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {duration!r} (e.g. 30m, 6h, 2d)")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _time(value: str, now: float) -> float:
    if value == "now":
        return now
    if value.startswith("-"):
        return now - _seconds(value[1:])
    return float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus-url", required=True)
    parser.add_argument("--since", default=None, help="Time range ending now, e.g. 30m, 6h (default 1h).")
    parser.add_argument("--start", default=None, help="Unix seconds, or -1h style relative to now.")
    parser.add_argument("--end", default="now", help="Unix seconds, or now.")
    parser.add_argument("--step", type=float, default=None, help="Seconds between points (default: range/240).")
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="For $__rate_interval (seconds).")
    parser.add_argument("--var", action="append", default=[], help="name=value (repeat; value a|b for several).")
    parser.add_argument("--dashboard", action="append", default=[], help="uid to render (default: all).")
    parser.add_argument("--out", type=Path, default=Path("report/dashboards"))
    args = parser.parse_args(argv)

    now = time.time()
    end = _time(args.end, now)
    start = _time(args.start, now) if args.start else end - _seconds(args.since or "1h")
    given: dict[str, str | list[str]] = {}
    for item in args.var:
        name, _, value = item.partition("=")
        given[name] = value.split("|") if "|" in value else value
    client = PrometheusClient(args.prometheus_url)
    failed = 0
    for d in DASHBOARDS:
        if args.dashboard and d.uid not in args.dashboard:
            continue
        path = args.out / f"{d.uid}.png"
        try:
            results = render_dashboard(d, client, start=start, end=end, out=path, values=given, step=args.step,
                                       scrape_seconds=args.scrape_interval)
        except LookupError as exc:
            print(f"skipped {d.uid}: {exc}", file=sys.stderr)
            failed += 1
            continue
        empty = [r.title for r in results if not r.finite_points]
        errors = [e for r in results for e in r.errors]
        print(f"wrote {path} ({len(results)} panels, {len(empty)} without data{', ' + str(len(errors)) + ' query errors' if errors else ''})")
        for e in errors:
            print(f"  query error: {e}", file=sys.stderr)
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
