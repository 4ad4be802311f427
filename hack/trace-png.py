#!/usr/bin/env python3
"""Draw a trace from Jaeger's query API as a waterfall PNG (the figures of docs/observability.md).

    hack/trace-png.py TRACE.json OUT.png [--title TEXT]

TRACE.json is what ``GET /api/traces/<id>`` returns (tests/e2e/test_serverless.py saves two with
``ELASTISERVE_TRACE_DUMP=DIR``). One bar per span, indented under its parent, coloured by service, with
its duration; the x axis is time from the trace's first span.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def spans_in_order(trace: dict) -> list[tuple[int, dict, str]]:
    """(depth, span, service) depth-first, children by start time."""
    services = {k: v["serviceName"] for k, v in trace.get("processes", {}).items()}
    spans = {s["spanID"]: s for s in trace["spans"]}
    children: dict[str | None, list[dict]] = {}
    for s in trace["spans"]:
        parent = next((r["spanID"] for r in s.get("references") or []
                       if r["refType"] == "CHILD_OF" and r["spanID"] in spans), None)
        children.setdefault(parent, []).append(s)
    out: list[tuple[int, dict, str]] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x["startTime"]):
            out.append((depth, s, services.get(s["processID"], "?")))
            walk(s["spanID"], depth + 1)

    walk(None, 0)
    return out


def draw(trace: dict, out: Path, title: str) -> None:
    rows = spans_in_order(trace)
    t0 = min(s["startTime"] for _, s, _ in rows)
    colours = {}
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3"]
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(rows) + 1.2))
    for i, (depth, s, service) in enumerate(rows):
        colour = colours.setdefault(service, palette[len(colours) % len(palette)])
        start, dur = (s["startTime"] - t0) / 1e3, max(s["duration"] / 1e3, 0.05)
        ax.barh(i, dur, left=start, color=colour, height=0.6)
        ax.text(start + dur, i, f" {dur:.1f} ms", va="center", fontsize=8)
        ax.text(-0.42 + 0.02 * depth, i, s["operationName"], va="center", ha="left", fontsize=8,
                transform=ax.get_yaxis_transform())
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("ms from the first span")
    ax.set_title(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    fig.legend(handles, list(colours), loc="lower center", ncol=len(colours), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.36, right=0.93, bottom=0.2 if len(rows) < 8 else 0.12)
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    data = json.loads(args.trace.read_text())
    traces = data.get("data") or []
    if len(traces) != 1:
        raise SystemExit(f"error: {args.trace}: expected one trace, found {len(traces)}")
    draw(traces[0], args.out, args.title or f"trace {traces[0]['traceID']}")


if __name__ == "__main__":
    main()
