"""Backtest benchmarks; prints JSON (and a Markdown table on stderr).

1. ``runtime``: wall and CPU time of a backtest of a 14-day synthetic trace (2 days of warm-up history,
   12 scored), per policy, with the forecasts of our policy precomputed (``replay``) as ``auto`` does.
2. ``traces``: the policy comparison on every trace in ``$ELASTISERVE_TRACES`` (default
   ``../shared/traces``), each scaled to a mean of 250 qps and limited to its first ``--days`` days
   (default 10: 2 days of warm-up history, 8 scored) so the whole run stays within a few minutes.
   For the equal-cost comparison the HPA-like baseline is also run at other targets
   (``--hpa-targets``) and its SLO-violation minutes are interpolated at our replica-hours.
   For the **equal-SLO comparison** the HPA-like and the KPA-like baselines are swept over the same
   targets; the cheapest target of each that reaches at least our attainment (share of minutes without
   an SLO violation) is the baseline our replica-hours are compared with.
3. ``generated``: the same on traces generated at run time (``simulation.synthetic.generated_trace``:
   spiky, flash crowds, growth, social-media-like; ``--generated none`` to skip), shapes the shared
   traces lack, to check that nothing is tuned to the shared ones.

Usage::

    python bench/backtest.py                     # both parts
    python bench/backtest.py --skip-runtime      # traces only
    python bench/backtest.py --days 0            # whole traces (slow: the long ones are 55-215 days)
    python bench/backtest.py --skip-runtime --only twitter_volume_aapl_5min --generated spiky --days 4
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see forecasting/arima.py

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from elastiserve.simulation import SimConfig, load_trace, run_backtest, synthetic_trace, traces_dir  # noqa: E402
from elastiserve.simulation.backtest import score  # noqa: E402
from elastiserve.simulation.cluster import run  # noqa: E402
from elastiserve.simulation.policy_hpa import HpaPolicy  # noqa: E402
from elastiserve.simulation.policy_kpa import KpaPolicy  # noqa: E402
from elastiserve.simulation.synthetic import GENERATED, generated_trace  # noqa: E402
from elastiserve.simulation.report import markdown_table  # noqa: E402

MEAN_QPS = 250.0


def timed_backtest(trace, cfg):
    clocks: dict[str, list[float]] = {}

    def progress(name: str, fraction: float) -> None:
        c = clocks.setdefault(name, [time.perf_counter(), time.process_time(), 0.0, 0.0])
        if fraction >= 1:
            c[2], c[3] = time.perf_counter() - c[0], time.process_time() - c[1]

    wall, cpu = time.perf_counter(), time.process_time()
    result = run_backtest(trace, cfg=cfg, progress=progress)
    total = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    per = {n: {"wall_s": round(c[2], 2), "cpu_s": round(c[3], 2)} for n, c in clocks.items()}
    return result, total, per


def baseline_curve(result, targets: list[float], make=HpaPolicy) -> list[dict]:
    """A baseline at several targets on the same scenario: (target, replica-hours, violation minutes,
    attainment)."""
    sc = result.scenario
    curve = []
    for t in targets:
        sc.cfg.target_utilisation = t
        try:
            m = score(sc, run(sc, make(sc.spec)))
        finally:
            sc.cfg.target_utilisation = SimConfig().target_utilisation
        curve.append({"target": t, "replica_hours": m["replica_hours"], "slo_violation_minutes": m["slo_violation_minutes"],
                      "attainment": m["attainment"]})
    return curve


def hpa_curve(result, targets: list[float]) -> list[dict]:
    return baseline_curve(result, targets, HpaPolicy)


def cheapest_at(curve: list[dict], attainment: float) -> dict | None:
    """The cheapest point of a baseline's curve that reaches ``attainment`` (None if none does)."""
    ok = [c for c in curve if c["attainment"] >= attainment - 1e-12]
    return min(ok, key=lambda c: c["replica_hours"]) if ok else None


def equal_slo(ours: dict, curves: dict[str, list[dict]]) -> dict:
    """Per baseline: the cheapest swept target reaching our attainment, and our replica-hours against it."""
    out = {}
    for name, curve in curves.items():
        best = cheapest_at(curve, ours["attainment"])
        out[name] = None if best is None else {
            "target": best["target"], "replica_hours": best["replica_hours"],
            "slo_violation_minutes": best["slo_violation_minutes"], "attainment": best["attainment"],
            "ours_vs_baseline": ours["replica_hours"] / best["replica_hours"],
        }
    return out


def at_equal_cost(curve: list[dict], replica_hours: float) -> float | None:
    """HPA violation minutes interpolated at ``replica_hours`` (None outside the curve)."""
    pts = sorted((c["replica_hours"], c["slo_violation_minutes"]) for c in curve)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs or replica_hours < xs[0] or replica_hours > xs[-1]:
        return None
    return float(np.interp(replica_hours, xs, ys))


def evaluate(rows: dict, curve: list[dict], eq: dict | None = None, objective: float = 0.99) -> dict:
    ours, hpa, oracle = rows["ours"], rows["hpa"], rows["oracle"]
    saving = 1 - ours["replica_hours"] / hpa["replica_hours"]
    hpa_eq = at_equal_cost(curve, ours["replica_hours"])
    eq = eq or {}
    return {
        "ours_attainment": ours["attainment"],
        "oracle_attainment": oracle["attainment"],
        "target_attainment_where_oracle_reaches_it": (None if oracle["attainment"] < objective
                                                      else bool(ours["attainment"] >= objective)),
        "target_cheaper_than_hpa_at_equal_slo": (None if eq.get("hpa") is None
                                                 else bool(eq["hpa"]["ours_vs_baseline"] <= 1.0)),
        "target_cheaper_than_kpa_at_equal_slo": (None if eq.get("kpa") is None
                                                 else bool(eq["kpa"]["ours_vs_baseline"] <= 1.0)),
        "replica_hours_saving_vs_hpa": saving,
        "target_30pct_fewer_at_no_more_violations": bool(
            saving >= 0.30 and ours["slo_violation_minutes"] <= hpa["slo_violation_minutes"]),
        "hpa_violation_minutes_at_our_replica_hours": hpa_eq,
        "target_half_violations_at_equal_cost": (None if hpa_eq is None else
                                                 bool(ours["slo_violation_minutes"] <= 0.5 * hpa_eq)),
        "replica_hours_vs_oracle": ours["replica_hours"] / oracle["replica_hours"],
        "target_within_15pct_of_oracle": bool(ours["replica_hours"] <= 1.15 * oracle["replica_hours"]),
    }


def slim(metrics: dict) -> dict:
    keep = ("replica_hours", "cost", "cost_vs_oracle", "slo_violation_minutes", "p95_latency_ms", "scale_events",
            "cold_starts", "forecast_smape", "dropped_share", "mean_replicas", "peak_replicas", "attainment",
            "pods_started_per_hour", "pods_deleted_per_hour",
            "forecast_ready_share", "forecast_used_share", "replica_hours_by_variant")
    return {k: metrics[k] for k in keep if k in metrics}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=float, default=10.0, help="limit each trace to its first N days (0: whole)")
    ap.add_argument("--runtime-days", type=float, default=14.0)
    ap.add_argument("--skip-runtime", action="store_true")
    ap.add_argument("--skip-traces", action="store_true")
    ap.add_argument("--only", action="append", default=[], help="trace name (stem) to run; repeatable")
    ap.add_argument("--hpa-targets", default="0.5,0.6,0.7,0.8,0.9,1.0",
                    help="targets (share of capacity per pod) swept for the HPA-like and KPA-like baselines")
    ap.add_argument("--generated", default=",".join(GENERATED),
                    help=f"generated traces to run too (comma-separated among {', '.join(GENERATED)}; 'none')")
    ap.add_argument("--seed", type=int, default=1, help="seed of the generated traces")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    out: dict = {"mean_qps": MEAN_QPS, "days_limit": args.days}

    if not args.skip_runtime:
        trace = synthetic_trace(days=args.runtime_days, seed=0, mean_qps=MEAN_QPS)
        result, total, per = timed_backtest(trace, SimConfig())
        out["runtime"] = {
            "trace": trace.name, "days": args.runtime_days, "scored_days": (result.scenario.n - result.scenario.i0)
            * result.scenario.dt / 86400, "total": total, "per_policy": per,
            "table": {n: slim(r.metrics) for n, r in result.results.items()},
        }
        print(f"runtime: {trace.name} {total['wall_s']:.1f} s wall, {total['cpu_s']:.1f} s CPU", file=sys.stderr)
        print(markdown_table(result.table()), file=sys.stderr)

    if not args.skip_traces:
        targets = [float(x) for x in args.hpa_targets.split(",") if x]
        out["traces"] = {}
        todo = []
        for path in sorted(traces_dir().glob("*.csv")):
            if args.only and path.stem not in args.only:
                continue
            todo.append((path.stem, lambda p=path: load_trace(p)))
        kinds = [] if args.generated in ("", "none") else args.generated.split(",")
        for kind in kinds:
            todo.append((f"gen-{kind}", lambda k=kind: generated_trace(k, days=max(args.days or 10, 4), seed=args.seed)))
        for name, load in todo:
            trace = load()
            if args.days:
                trace = trace.limited(args.days * 86400)
            trace = trace.scaled_to_mean(MEAN_QPS)
            result, total, per = timed_backtest(trace, SimConfig())
            curve = hpa_curve(result, targets)
            kpa_curve = baseline_curve(result, targets, KpaPolicy)
            rows = {n: r.metrics for n, r in result.results.items()}
            eq = equal_slo(rows["ours"], {"hpa": curve, "kpa": kpa_curve})
            entry = {
                "bins": len(trace), "step_seconds": trace.step_seconds, "notes": list(trace.notes),
                "scored_days": (result.scenario.n - result.scenario.i0) * result.scenario.dt / 86400,
                "seconds": round(total["wall_s"], 1), "table": {n: slim(m) for n, m in rows.items()},
                "hpa_curve": curve, "kpa_curve": kpa_curve, "equal_slo": eq,
                "targets": evaluate(rows, curve, eq, result.scenario.spec.slo.attainment),
            }
            out["traces"][name] = entry
            print(f"\n{name} ({entry['scored_days']:.2f} scored days, {total['wall_s']:.0f} s)", file=sys.stderr)
            print(markdown_table(result.table()), file=sys.stderr)
            print("equal SLO: " + json.dumps(eq), file=sys.stderr)
            print(json.dumps(entry["targets"]), file=sys.stderr)
    text = json.dumps(out, indent=2, default=float)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
