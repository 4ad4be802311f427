"""``elastiserve backtest``: replay a trace (or the synthetic workload) through the policies, write a report.

The root ``cli.py`` mounts ``backtest`` as a command. Without ``--trace`` the seeded synthetic workload
is used (``make demo DEMO=backtest``): 4 days, 2 of them warm-up history for the forecaster.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer

DEFAULT_MEAN_QPS = 250.0
"""Mean rate traces are scaled to unless ``--mean-qps`` says otherwise (about 7 replicas of 35 qps)."""


class _Progress:
    """A one-line progress bar on stderr (no dependency, no terminal control beyond ``\\r``)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.current = ""
        self.last = -1

    def __call__(self, name: str, fraction: float) -> None:
        if not self.enabled:
            return
        pct = int(fraction * 100)
        if not self.tty:  # logs: one line per policy
            if fraction >= 1:
                sys.stderr.write(f"  {name}: simulated\n")
            return
        if name == self.current and pct == self.last:
            return
        self.current, self.last = name, pct
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        sys.stderr.write(f"\r  {name:<8} [{bar}] {pct:3d}%")
        if fraction >= 1:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _load_spec(path: Path):
    """One ModelDeployment (or a bare spec) read with the same bounded, strict loader as `validate`."""
    from ..api import SpecError, parse_manifest, parse_spec
    from ..api.yamlio import ManifestError, load_file

    try:
        docs = load_file(path)
    except ManifestError as exc:
        raise ValueError(str(exc)) from None
    if len(docs) != 1:
        raise ValueError(f"{path}: expected one ModelDeployment, found {len(docs)} YAML documents")
    doc = docs[0]
    try:
        if isinstance(doc, dict) and "kind" in doc:
            return parse_manifest(doc, str(path)).spec
        return parse_spec(doc, str(path))
    except SpecError as exc:
        raise ValueError(str(exc)) from None


def backtest(
    trace: Optional[Path] = typer.Option(
        None, "--trace", help="Trace CSV (timestamp_s,requests[,...] or cpu_percent); default: the synthetic workload."
    ),
    policy: list[str] = typer.Option(
        ["ours", "hpa", "kpa", "oracle"], "--policy", "-p", help="Policies to compare (repeatable): ours, hpa, kpa, oracle."
    ),
    out: Path = typer.Option(Path("report/backtest"), "--out", help="Folder for report.md, report.json and the plots."),
    spec: Optional[Path] = typer.Option(
        None, "--spec", help="ModelDeployment YAML (manifest or bare spec) instead of the example backtest spec."
    ),
    days: Optional[float] = typer.Option(
        None, "--days", help="Use this many days of the trace (synthetic: its length, default 4)."
    ),
    start_day: float = typer.Option(0.0, "--start-day", help="Skip this many days of the trace first."),
    mean_qps: float = typer.Option(
        DEFAULT_MEAN_QPS, "--mean-qps", help="Scale the trace to this mean rate (req/s); 0 keeps its own rates."
    ),
    compress: float = typer.Option(1.0, "--compress", help="Replay time this many times faster (changes burst structure)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic workload."),
    tick: float = typer.Option(2.0, "--tick", help="Simulation step in seconds."),
    forecast: str = typer.Option(
        "auto", "--forecast", help="online (update() every cycle), replay (precomputed, same forecasts), or auto."
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PNG plots."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Replay a trace through our operator's decide() + forecaster, HPA-like, KPA-like and the oracle."""
    from ..api import SpecError
    from .backtest import POLICIES, run_backtest
    from .config import SimConfig
    from .report import markdown_table, write_report
    from .synthetic import synthetic_trace
    from .traces import TraceError, TraceWarning, load_trace

    def fail(message: str) -> None:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)

    unknown = [p for p in policy if p not in POLICIES]
    if unknown:
        fail(f"unknown policy {', '.join(unknown)} (known: {', '.join(POLICIES)})")
    if forecast not in ("auto", "online", "replay"):
        fail(f"--forecast must be auto, online or replay (got {forecast!r})")
    if tick <= 0 or compress <= 0 or mean_qps < 0 or (days is not None and days <= 0):
        fail("--tick, --compress and --days must be positive, --mean-qps not negative")
    try:
        md_spec = _load_spec(spec) if spec is not None else None
    except (ValueError, SpecError) as exc:
        fail(str(exc))
    try:
        if trace is None:
            tr = synthetic_trace(days=days or 4.0, seed=seed, mean_qps=mean_qps or DEFAULT_MEAN_QPS)
        else:
            if not trace.exists():
                fail(f"{trace}: no such file")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TraceWarning)
                tr = load_trace(trace)
            for w in caught:
                typer.echo(f"warning: {w.message}", err=True)
            tr = tr.compressed(compress)
            if start_day or days:
                tr = tr.limited((days or 1e9) * 86400, start_day * 86400)
            if mean_qps:
                tr = tr.scaled_to_mean(mean_qps)
    except (TraceError, ValueError) as exc:
        fail(str(exc))
    cfg = SimConfig(tick_seconds=tick, forecast=forecast)
    progress = _Progress(not quiet)
    started = time.perf_counter()
    result = run_backtest(tr, md_spec, cfg, policies=tuple(policy), progress=progress)
    paths = write_report(result, out, plots=plots)
    typer.echo(markdown_table(result.table()))
    typer.echo(f"\nwrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - started:.1f} s")
