"""Where can the live target of ``bench/live.py`` be met at all? The simulator over every segment of the shared
traces, replayed as ``bench/live.py`` replays one (docs/backtest.md, "How far the live target is").

    python bench/live_reach.py                      # every trace, ~10 min on 2 cores
    python bench/live_reach.py --history-bins 160   # the policies run 160 bins before each scored segment
    python bench/live_reach.py --traces azure_llm_conv_2023_60s.csv --stride-bins 1 --out /tmp/reach.json

The live target (issue 17): ours at no more pod-seconds than the real HPA (CPU 80 %) and KEDA, with at most half
their violated trace minutes. ``bench/live.py`` can replay only a few minutes per contender on the one real
node (1-4 pods of 300m), so every segment there is 40 bins of a trace replayed at ``--bin-seconds`` per bin
(7.5 s: ×8 for the 60 s traces), scaled so its busiest bin offers ``--peak-factor`` × the pod capacity, and
every contender starts from one Ready pod. This benchmark takes every such segment (every ``--stride-bins``)
and simulates, with the live run's calibration (``calibrated_backtest``: capacity, saturation and start-up
measured on the node, docs/backtest.md):

* ``ours``: the live spec (``bench/live.py: live_spec``);
* ``hpa``: the HPA v2 algorithm at 80 % of a pod's saturation (metrics-server's 15 s CPU window);
* ``keda``: the same at 0.8 × capacity on the 60 s request rate (KEDA's trigger);
* ``oracle``: perfect foresight (``simulation/policy_oracle.py``), the least any policy pays here at the objective.

It prints one JSON line per segment on stdout (progress on stderr) and a summary JSON at the end: per trace and
shape (spiky: peak/mean of the segment ≥ 2), how often ours meets the target against each, and each
contender's median pod-seconds relative to the oracle's. ``--history-bins N`` lets every policy run through
the N bins before the segment (scored: the last 40 only): ours with a calibrated history.

Nothing here touches a cluster; the figures are the simulator's, whose pod-seconds were within 15 % of the
live runs (docs/backtest.md). A trace is read at run time from ../shared/traces.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import live  # noqa: E402  (bench/live.py: the segment, its scaling and ours' spec, as replayed live)

SEGMENT_BINS = 40
DEFAULT_TRACES = ("azure_llm_conv_2023_60s.csv", "azure_llm_code_2023_60s.csv", "twitter_volume_aapl_5min.csv",
                  "nyc_taxi_30min.csv", "aws_asg_cpu_5min.csv")
"""The shared traces whose bins are at least ``--bin-seconds`` (the 1 s code trace would be stretched, not
compressed)."""


def met(row: dict, base: str) -> bool:
    """The live target against ``base``: no more pod-seconds, at most half its violated trace minutes."""
    o, b = row["ours"], row[base]
    return live.meets_target(o["pod_seconds"], o["violated"], b["pod_seconds"], b["violated"])


def segment_row(path: Path, step: float, start_bin: int, spec, a) -> dict | None:
    """Simulate the contenders on the segment of ``SEGMENT_BINS`` bins (of ``step`` s) from ``start_bin``
    (after ``a.history_bins`` unscored bins) with ours' live ``spec``; None when the scored segment has no
    requests."""
    import numpy as np

    from elastiserve.simulation.backtest import violated_windows
    from elastiserve.simulation.live import LiveContender, calibrated_backtest

    compress = step / a.bin_seconds
    first = start_bin - a.history_bins
    seg = live.load_segment(path, first * step / 60, (SEGMENT_BINS + a.history_bins) * step / 60, compress)
    rate = np.asarray(seg.rate, dtype=float)
    scored = rate[a.history_bins:]
    if scored.max() <= 0:
        return None
    # the scored segment's busiest bin offers peak-factor x capacity, as live (the history may go above)
    trace = live.scale_to_peak(seg, a.peak_factor * a.capacity_rps * rate.max() / scored.max())
    targets = {"hpa": live.HPA_CPU_TARGET, "keda": live.KEDA_CAPACITY_SHARE * a.capacity_rps}  # live's defaults
    contenders = [LiveContender("oracle", "oracle")] + [
        live.sim_contender(n, targets, a.saturation_rps) for n in ("ours", "hpa", "keda")]
    _, result = calibrated_backtest(trace, spec, contenders, a.startup_s, a.max_replicas, window_seconds=a.bin_seconds)
    dt = result.scenario.dt
    ticks = int(round(SEGMENT_BINS * a.bin_seconds / dt))
    row = {"trace": path.name, "start_bin": start_bin, "compress": round(compress, 3),
           "peak_to_mean": round(float(scored.max() / scored.mean()), 3),
           "mean_qps": round(float(np.asarray(trace.rate)[a.history_bins:].mean()), 2)}
    for name, r in result.results.items():
        windows = violated_windows(result.scenario, r.record, a.bin_seconds)
        row[name] = {"pod_seconds": round(float(r.record.pods[-ticks:].sum() * dt), 1),
                     "violated": int(windows[-SEGMENT_BINS:].sum())}
    return row


def summarize(rows: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        shape = "spiky" if r["peak_to_mean"] >= 2 else "smooth"
        groups.setdefault(f"{r['trace']} {shape}", []).append(r)
        groups.setdefault(f"all {shape}", []).append(r)

    def rel(rs: list[dict], name: str) -> float:
        return round(statistics.median(r[name]["pod_seconds"] / max(r["oracle"]["pod_seconds"], 1e-9) for r in rs), 3)

    out = {}
    for key, rs in sorted(groups.items()):
        out[key] = {
            "segments": len(rs),
            "met_vs_hpa": sum(met(r, "hpa") for r in rs), "met_vs_keda": sum(met(r, "keda") for r in rs),
            "met_vs_both": sum(met(r, "hpa") and met(r, "keda") for r in rs),
            "met_vs_both_not_all_tied": sum(met(r, "hpa") and met(r, "keda") and not (
                r["ours"] == r["hpa"] == r["keda"]) for r in rs),
            "ours_no_dearer_than_hpa": sum(r["ours"]["pod_seconds"] <= r["hpa"]["pod_seconds"] for r in rs),
            "oracle_no_dearer_than_hpa": sum(r["oracle"]["pod_seconds"] <= r["hpa"]["pod_seconds"] for r in rs),
            "ours_half_hpa_violations": sum(r["ours"]["violated"] <= r["hpa"]["violated"] / 2 for r in rs),
            "median_pod_seconds_vs_oracle": {n: rel(rs, n) for n in ("ours", "hpa", "keda")},
            "violated_trace_minutes": {n: sum(r[n]["violated"] for r in rs) for n in ("ours", "hpa", "keda", "oracle")},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", default=",".join(DEFAULT_TRACES), help="comma-separated shared trace files")
    p.add_argument("--stride-bins", type=int, default=0,
                   help="bins between segment starts (default: 1 for traces under 2 h, else 80)")
    p.add_argument("--history-bins", type=int, default=0, help="unscored bins the policies run through first")
    p.add_argument("--bin-seconds", type=float, default=7.5, help="a trace bin's replay time (7.5: 60 s bins ×8)")
    p.add_argument("--peak-factor", type=float, default=2.5, help="the segment's peak in pod capacities (live's default)")
    # the calibration of the live rounds (docs/backtest.md: a 300m fp32 pod on the real node)
    p.add_argument("--capacity-rps", type=float, default=34.9)
    p.add_argument("--saturation-rps", type=float, default=38.78)
    p.add_argument("--startup-s", type=float, default=11.1)
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--cpu", default="300m")
    p.add_argument("--out", type=Path, help="also write the rows and the summary to this JSON file")
    a = p.parse_args(argv)
    for flag in ("stride_bins", "history_bins"):
        if getattr(a, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must not be negative")
    for flag in ("bin_seconds", "peak_factor", "capacity_rps", "saturation_rps", "startup_s"):
        if getattr(a, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    if a.max_replicas < 1:
        p.error("--max-replicas must be at least 1")

    from elastiserve.simulation.traces import load_trace

    spec = live.parsed(live.live_spec("http://unused", "unused", a.capacity_rps, a.cpu, a.max_replicas))
    rows: list[dict] = []
    t0 = time.monotonic()
    for name in [t for t in a.traces.split(",") if t]:
        path = live.resolve_trace(name)
        full = load_trace(path)
        if full.step_seconds < a.bin_seconds:
            p.error(f"--traces: {name} has {full.step_seconds:g} s bins, under --bin-seconds {a.bin_seconds:g} "
                    "(a replay compresses bins, it does not stretch them)")
        bins = int(round(full.duration_seconds / full.step_seconds))
        stride = a.stride_bins or (1 if full.duration_seconds < 7200 else 80)
        starts = list(range(a.history_bins, bins - SEGMENT_BINS + 1, stride))
        if not starts:
            p.error(f"--traces: {name} has {bins} bins, fewer than {a.history_bins} + {SEGMENT_BINS}")
        for k, start in enumerate(starts):
            row = segment_row(path, full.step_seconds, start, spec, a)
            if row is not None:
                rows.append(row)
                print(json.dumps(row), flush=True)
            if k % 20 == 0 or k == len(starts) - 1:
                print(f"[live_reach] {name}: segment {k + 1}/{len(starts)}, {time.monotonic() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    summary = summarize(rows)
    print(json.dumps({"summary": summary, "settings": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(a).items()}}, indent=2))
    if a.out:
        a.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
