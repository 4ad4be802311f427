"""Writing a backtest report: a Markdown and a JSON table, and PNG plots (matplotlib, Agg backend).

Files in the output folder:

* ``report.md``: settings, the policy table, notes, and the plots;
* ``report.json``: the same numbers, the spec and the settings (machine-readable);
* ``traffic.png``: request rate with our forecast (mean and band, plotted at the time it was for);
* ``replicas.png``: replicas per policy over time, with what the load needs at capacity;
* ``latency.png``: p95 latency per policy (per bucket) against the SLO.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .backtest import COLUMNS, BacktestResult, minute_index
from .cluster import latency_quantile

PLOTS = ("traffic.png", "replicas.png", "latency.png")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value else "0"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    head = "| policy | " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    lines = [head, sep]
    for row in rows:
        lines.append(f"| {row['policy']} | " + " | ".join(_fmt(row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def bucket_seconds(span_seconds: float) -> int:
    """Plot resolution: 1 min up to 3 days, then coarser (about 4000 points at most)."""
    for b in (60, 300, 900, 3600):
        if span_seconds / b <= 4500:
            return b
    return 3600


def write_report(result: BacktestResult, out: Path, plots: bool = True, title: str | None = None) -> dict[str, Path]:
    """Write report.md, report.json and (optionally) the plots; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    sc = result.scenario
    rows = result.table()
    span = (sc.n - sc.i0) * sc.dt
    trace = sc.trace
    info = {
        "trace": {
            "name": trace.name, "source": trace.source, "kind": trace.kind, "step_seconds": trace.step_seconds,
            "bins": len(trace), "mean_qps": trace.mean_qps, "peak_qps": float(trace.rate.max()),
            "notes": list(trace.notes),
        },
        "scored": {"start_seconds": sc.i0 * sc.dt, "seconds": span, "days": span / 86400, "tick_seconds": sc.dt},
        "slo_ms": sc.slo_seconds * 1000,
        "config": asdict(sc.cfg),
        "spec": sc.spec.to_api(),
        "policies": {r["policy"]: r for r in rows},
    }
    paths = {"report.json": out / "report.json", "report.md": out / "report.md"}
    paths["report.json"].write_text(json.dumps(info, indent=2, default=_json_default) + "\n")
    if plots:
        paths.update(write_plots(result, out))
    paths["report.md"].write_text(_markdown(result, info, title, plots))
    return paths


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _markdown(result: BacktestResult, info: dict, title: str | None, plots: bool) -> str:
    sc = result.scenario
    tr = info["trace"]
    fc = sc.spec.forecasting
    lines = [
        f"# {title or 'Backtest: ' + tr['name']}",
        "",
        f"- trace: `{tr['name']}` ({tr['kind']}, {tr['bins']} bins of {tr['step_seconds']:g} s, mean "
        f"{tr['mean_qps']:.3g} qps, peak {tr['peak_qps']:.3g} qps){'; ' + '; '.join(tr['notes']) if tr['notes'] else ''}",
        f"- scored: {info['scored']['days']:.3g} days after {sc.i0 * sc.dt / 86400:.3g} days of warm-up history; "
        f"tick {sc.dt:g} s; SLO p95 ≤ {info['slo_ms']:.0f} ms",
        "- variants: " + ", ".join(f"{v.name} {v.capacity_qps:g} qps/replica, start-up {sc.cfg.startup(v):g} s, "
                                   f"cost ×{c:g}" for v, c in zip(sc.spec.variants, sc.costs)),
        f"- ours: qps target {sc.spec.metrics.rules.qps.effective_target:g} % of capacity; forecast "
        f"{fc.method if fc.enabled else 'off'} step {fc.step_seconds} s, horizon {fc.horizon_seconds} s, "
        f"p{round(fc.quantile * 100)}, seasons {fc.seasonal_periods_seconds or 'none'}",
        f"- baselines: HPA-like and KPA-like at {sc.cfg.target_utilisation:.0%} of capacity; metrics "
        f"{sc.cfg.scrape_delay_seconds:g} s late (KPA {sc.cfg.kpa_metric_delay_seconds:g} s)",
        "",
        markdown_table(result.table()),
        "",
        "Replica-hours include start-up time. Cost weights each variant by its CPU request relative to the "
        "primary. An SLO-violation minute is a minute whose p95 latency is above the SLO.",
    ]
    if plots:
        lines += ["", "![traffic and forecast](traffic.png)", "", "![replicas per policy](replicas.png)", "",
                  "![latency against the SLO](latency.png)"]
    return "\n".join(lines) + "\n"


def write_plots(result: BacktestResult, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = result.scenario
    span = (sc.n - sc.i0) * sc.dt
    b = bucket_seconds(span)
    groups = minute_index(sc, b)
    counts = np.bincount(groups)
    lam = sc.lam[sc.i0 :]
    t0 = sc.i0 * sc.dt
    hours = (t0 + (np.arange(len(counts)) + 0.5) * b) / 3600
    rate = np.bincount(groups, weights=lam) / np.maximum(counts, 1)
    paths: dict[str, Path] = {}

    # traffic + forecast band
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(hours, rate, lw=0.8, color="black", label=f"request rate ({b // 60} min mean)")
    ours = result.results.get("ours")
    bands = getattr(ours.policy, "bands", []) if ours else []
    if bands:
        arr = np.array(bands)
        th = arr[:, 1] / 3600
        ax.plot(th, arr[:, 2], lw=0.8, color="tab:blue", label="forecast mean (one horizon ahead)")
        ax.fill_between(th, arr[:, 3], arr[:, 4], color="tab:blue", alpha=0.25, lw=0,
                        label=f"forecast band (p{round(sc.spec.forecasting.quantile * 100)})")
    ax.set_xlabel("hours from trace start")
    ax.set_ylabel("requests / s")
    ax.set_title(f"{sc.trace.name}: traffic and forecast")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    paths["traffic.png"] = out / "traffic.png"
    fig.savefig(paths["traffic.png"], dpi=110)
    plt.close(fig)

    # replicas
    fig, ax = plt.subplots(figsize=(11, 4))
    need = np.bincount(groups, weights=lam / sc.capacity[sc.primary]) / np.maximum(counts, 1)
    ax.plot(hours, need, lw=0.8, color="grey", ls=":", label="load / capacity")
    for name, r in result.results.items():
        pods = np.bincount(groups, weights=r.record.pods.sum(axis=1)) / np.maximum(counts, 1)
        ax.step(hours, pods, where="mid", lw=0.9, label=f"{name} ({r.metrics['replica_hours']:.0f} replica-h)")
    ax.set_xlabel("hours from trace start")
    ax.set_ylabel("replicas (all variants)")
    ax.set_title("replicas per policy")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    paths["replicas.png"] = out / "replicas.png"
    fig.savefig(paths["replicas.png"], dpi=110)
    plt.close(fig)

    # latency
    fig, ax = plt.subplots(figsize=(11, 4))
    for name, r in result.results.items():
        q = latency_quantile(sc, r.record, 0.95, groups=groups)
        ax.plot(hours, 1000 * np.asarray(q), lw=0.8,
                label=f"{name} ({r.metrics['slo_violation_minutes']} SLO-violation min)")
    ax.axhline(sc.slo_seconds * 1000, color="red", lw=1, ls="--", label="SLO")
    ax.set_yscale("log")
    ax.set_xlabel("hours from trace start")
    ax.set_ylabel(f"p95 latency per {b // 60} min (ms)")
    ax.set_title("latency against the SLO")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    paths["latency.png"] = out / "latency.png"
    fig.savefig(paths["latency.png"], dpi=110)
    plt.close(fig)
    return paths
