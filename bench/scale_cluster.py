#!/usr/bin/env python3
"""Many ModelDeployments on the real local API server: latency, operator CPU/RSS, API requests per cycle.

For each count N (default 100 and 500) this starts a fresh local control plane, a real Prometheus
scraping one exporter with a request rate per ModelDeployment, and the real operator process; it
creates N ModelDeployments (two variants each, scale-to-zero allowed; one model in ten has traffic and
runs one replica, the rest idle at zero), then:

- reconcile latency: creation → first decision in status (p50/p95/max);
- steady state over a window: operator CPU (cores) and RSS from /proc, and API requests by verb and
  resource from the API server's own ``apiserver_request_total``, divided by the sync cycles in the
  window (requests per cycle; per object per cycle shows whether anything polls);
- a linear fit over the counts, extrapolated to 5000.

Prints JSON. Takes several minutes per count; not part of the test suite.

    python bench/scale_cluster.py [--counts 100 500] [--window 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from prometheus_client import CollectorRegistry, start_http_server  # noqa: E402
from prometheus_client.core import CounterMetricFamily  # noqa: E402

from support.cluster import start_cluster, stop_cluster  # noqa: E402
from support.devstack import free_port  # noqa: E402
from support.prometheus import PrometheusServer  # noqa: E402

NS = "scale"
SYNC = 15


class ManyRates:
    """elastiserve_requests_total for N models, each at its own constant rate."""

    def __init__(self, n: int):
        self.n = n
        self.t0 = time.monotonic()

    def collect(self):
        c = CounterMetricFamily("elastiserve_requests", "requests", labels=["modeldeployment", "variant", "model", "code", "namespace"])
        dt = time.monotonic() - self.t0
        for i in range(self.n):
            # One model in ten has traffic (one replica); the rest idle at zero, as most fleets do.
            c.add_metric([f"m{i}", "fp32", "m", "200", NS], (5.0 if i % 10 == 0 else 0.0) * dt)
        yield c


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def apiserver_counts(cluster) -> dict[tuple[str, str], float]:
    text = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("resource") in ("modeldeployments", "deployments", "services", "events", "configmaps",
                                      "endpointslices", "horizontalpodautoscalers"):
            key = (labels.get("verb", ""), labels["resource"])
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def mdep(i: int) -> dict:
    return {
        "apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": f"m{i}", "namespace": NS},
        "spec": {
            "model": {"name": "m", "uri": "file:///m.onnx"},
            "variants": [{"name": "fp32", "capacityQps": 10}, {"name": "int8", "precision": "int8", "role": "burst"}],
            "replicas": {"min": 0, "max": 10},
            "scaleToZero": {"enabled": True},
            "metrics": {"rules": {"cpu": {"enabled": False, "scaleUpAbove": 80, "scaleDownBelow": 30},
                                  "latency": {"enabled": False, "scaleUpAbove": 200, "scaleDownBelow": 50}}},
            "syncPeriodSeconds": SYNC,
        },
    }


def run(n: int, window: float, workdir: Path) -> dict:
    state = workdir / f"cluster-{n}"
    cluster = start_cluster(state)
    prom = None
    op = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "modeldeployments.elastiserve.dev.yaml"))
        cluster.wait_established("modeldeployments.elastiserve.dev")
        cluster.kubectl("create", "namespace", NS)
        registry = CollectorRegistry()
        registry.register(ManyRates(n))
        exp_port = free_port()
        start_http_server(exp_port, addr="127.0.0.1", registry=registry)
        prom = PrometheusServer([f"127.0.0.1:{exp_port}"], workdir=workdir / f"prom-{n}", scrape_interval="5s").start()
        log = (workdir / f"operator-{n}.log").open("w")
        op = subprocess.Popen(
            [sys.executable, "-m", "elastiserve.cli", "run", "-n", NS, "--prometheus-url", prom.url,
             "--metrics-port", str(free_port()), "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
            env=dict(cluster.env), stdout=log, stderr=subprocess.STDOUT,
        )
        created = time.time()
        for start in range(0, n, 50):
            docs = "\n---\n".join(json.dumps(mdep(i)) for i in range(start, min(n, start + 50)))
            cluster.kubectl("apply", "-f", "-", input=docs, timeout=300)

        def decided() -> list[float]:
            items = cluster.kubectl_json("get", "mdep", "-n", NS, timeout=300)["items"]
            lat = []
            for it in items:
                d = (it.get("status") or {}).get("lastDecision")
                if d:
                    t = datetime.fromisoformat(d["time"].replace("Z", "+00:00")).timestamp()
                    c = datetime.fromisoformat(it["metadata"]["creationTimestamp"].replace("Z", "+00:00")).timestamp()
                    lat.append(max(0.0, t - c))
            return lat

        deadline = time.time() + 900
        lat = []
        while time.time() < deadline:
            lat = decided()
            if len(lat) >= n:
                break
            time.sleep(5)
        all_decided_s = time.time() - created
        # Steady state.
        c0, a0, t0 = cpu_seconds(op.pid), apiserver_counts(cluster), time.monotonic()
        time.sleep(window)
        c1, a1, t1 = cpu_seconds(op.pid), apiserver_counts(cluster), time.monotonic()
        cycles = (t1 - t0) / SYNC
        events = cluster.kubectl_json("get", "events", "-n", NS, timeout=300)["items"]
        by_source: dict[str, int] = {}
        for ev in events:
            src = ev.get("reportingComponent") or (ev.get("source") or {}).get("component") or "?"
            by_source[src] = by_source.get(src, 0) + int(ev.get("count") or 1)
        per_cycle = {f"{v} {r}": round((a1.get((v, r), 0) - a0.get((v, r), 0)) / cycles, 1)
                     for (v, r) in sorted(set(a1) | set(a0)) if a1.get((v, r), 0) - a0.get((v, r), 0) > 0}
        lat.sort()
        return {
            "models": n,
            "decided": len(lat),
            "first_decision_latency_s": {"p50": round(statistics.median(lat), 1) if lat else None,
                                         "p95": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
                                         "max": round(lat[-1], 1) if lat else None},
            "all_decided_after_s": round(all_decided_s, 1),
            "operator_cpu_cores": round((c1 - c0) / (t1 - t0), 3),
            "operator_rss_mb": round(rss_mb(op.pid), 1),
            "api_requests_per_cycle": per_cycle,
            "api_requests_per_cycle_total": round(sum(per_cycle.values()), 1),
            "api_requests_per_object_per_cycle": round(sum(per_cycle.values()) / n, 3),
            "events_by_source_since_start": by_source,
        }
    finally:
        if op is not None:
            op.terminate()
            op.wait(30)
        if prom is not None:
            prom.stop()
        stop_cluster(state)


def fit(xs: list[float], ys: list[float], at: float) -> float:
    if len(xs) < 2:
        return float("nan")
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return round(my + slope * (at - mx), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--window", type=float, default=60.0)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="elastiserve-scale-"))
    results = [run(n, args.window, workdir) for n in args.counts]
    xs = [r["models"] for r in results]
    out = {
        "results": results,
        "extrapolated_to_5000": {
            "operator_cpu_cores": fit(xs, [r["operator_cpu_cores"] for r in results], 5000),
            "operator_rss_mb": fit(xs, [r["operator_rss_mb"] for r in results], 5000),
            "api_requests_per_cycle": fit(xs, [r["api_requests_per_cycle_total"] for r in results], 5000),
            "first_decision_p95_s": fit(xs, [r["first_decision_latency_s"]["p95"] or 0 for r in results], 5000),
        },
        "note": "linear fit over the measured counts; sync period 15 s; two variants per model; "
                "API requests are all clients' (the controller-manager's Deployment/EndpointSlice status "
                "writes included); events are split by source",
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
