#!/usr/bin/env python3
"""`make demo`: elastiserve doing its job for real, on real pods of a local cluster, with a real Prometheus.

Steps (each prints progress; Ctrl-C or any failure tears everything down and restores the host):

1. build (once, cached by version) and start a local control plane (etcd, kube-apiserver, controller-manager,
   scheduler) with one REAL node (containerd, runc, CNI bridge, kubelet, kube-proxy, CoreDNS,
   metrics-server), and build the project's image from the Dockerfile (cached by content) into the node;
2. build the MiniLM ONNX model and its INT8 variant (once, cached), served to the pods over HTTP on the
   node's bridge address (the model store);
3. Prometheus, which discovers its targets (kubernetes_sd: model-server, operator and activator pods, the
   kubelet's cAdvisor), with a day of request history backfilled from the workload (the built-in compressed
   day, or ``TRACE=path.csv`` in the ../shared/traces format), so the forecaster has history at once;
4. Jaeger, when built (``make cluster-build``): the pods send it their traces;
5. ``helm install`` the chart from the image: the operator and the activator run as its Deployments with
   their ServiceAccounts and in-cluster config;
6. ``kubectl apply`` a ModelDeployment with fp32 and INT8 variants, forecasting on, scale to zero on: the
   operator creates real model-server pods (CPU-limited by cgroups, Ready by their probes);
7. drive live load at the model's Service (the pods, or the in-cluster activator while at zero), show a live
   table, then write a report folder (plots of what happened, Events, dashboard previews, a cycle's trace);
8. tear down (``KEEP=1`` keeps it running until Ctrl-C and prints how to reach it).

It needs root and the Debian packages of ``make deps-system`` (containerd, runc, CNI plugins, buildah, ...):
``DEMO=backtest make demo`` is the cluster-free policy comparison.

The workload is a *compressed day*: one cycle every ``PERIOD`` seconds (default 600) with an idle
stretch, a ramp, a short peak and a decline. The demo's ModelDeployment declares that period as its
seasonality, so the forecaster, fitted on the backfilled history, sees the next peak coming.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from demo_stack import ROOT, Stack, fail, say
from live import run_live


def main() -> None:
    ap = argparse.ArgumentParser(description="elastiserve demo")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "report" / "demo")))
    ap.add_argument("--duration", type=float, default=float(os.environ.get("DURATION", "700")))
    ap.add_argument("--period", type=float, default=float(os.environ.get("PERIOD", "600")))
    ap.add_argument("--trace", type=Path, default=Path(os.environ["TRACE"]) if os.environ.get("TRACE") else None)
    ap.add_argument("--keep", action="store_true", default=os.environ.get("KEEP") == "1")
    args = ap.parse_args()
    if args.trace is not None and not args.trace.is_file():
        fail(f"TRACE={args.trace}: no such file (use a CSV in the ../shared/traces format)")

    if os.environ.get("DEMO", "cluster") == "backtest":
        return run_backtest(args)
    args.out.mkdir(parents=True, exist_ok=True)
    lock = _single_instance()
    stack = Stack(out=args.out, period=args.period, duration=args.duration, keep=args.keep, trace=args.trace)

    def on_signal(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    ok = False
    try:
        run_live(stack)
        ok = True
        if stack.keep:
            say("KEEP=1: the cluster, its real node, Prometheus, Jaeger and the model store stay up until Ctrl-C. "
                + "; ".join(stack.reach))
            while True:
                signal.pause()
    except KeyboardInterrupt:
        say("interrupted: tearing down" if not ok else "tearing down")
    except SystemExit:
        raise
    except Exception as exc:  # one line for the user; the details are in the logs folder
        lines = str(exc).splitlines()
        # The first line says what failed; an "ERROR:" line from a hack/ script says why.
        why = [ln.strip() for ln in lines[1:] if "ERROR:" in ln][-1:]
        print(f"[demo] error: {type(exc).__name__}: {' '.join((lines[:1] or ['']) + why)}"
              f" (logs: {stack.out / 'logs'}); tearing down", file=sys.stderr, flush=True)
        import traceback

        (stack.out / "logs").mkdir(parents=True, exist_ok=True)
        (stack.out / "logs" / "demo-error.txt").write_text(traceback.format_exc())
    finally:
        # Teardown must finish even if the user presses Ctrl-C again.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop_all()
    if not ok:
        raise SystemExit(1)


def _single_instance():
    """One demo at a time: two would share (and tear down) the same local control plane."""
    import fcntl

    cache = Path(os.environ.get("ELASTISERVE_CACHE") or Path.home() / ".cache" / "elastiserve")
    cache.mkdir(parents=True, exist_ok=True)
    handle = open(cache / "demo.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        fail(f"another demo is running (pid {handle.read().strip() or '?'}); stop it first (Ctrl-C there)")
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def run_backtest(args) -> None:
    out = args.out.parent / "backtest" if args.out.name == "demo" else args.out
    argv = [sys.executable, "-m", "elastiserve.cli", "backtest", "--out", str(out)]
    if args.trace:
        argv += ["--trace", str(args.trace)]
    say(f"backtest on {'the built-in workload' if not args.trace else args.trace} → {out}")
    rc = subprocess.call(argv)
    if rc != 0:
        fail(f"backtest failed (exit {rc})")
    table = out / "report.md"
    if table.exists():
        print(table.read_text())


if __name__ == "__main__":
    main()
