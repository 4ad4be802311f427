"""Live, side by side on REAL pods: our operator against the real HPA and KEDA on the same replayed traffic,
and the simulator checked against each of them (docs/backtest.md, "Live on real pods").

    ELASTISERVE_NODES=0 ELASTISERVE_REAL_NODE=1 ELASTISERVE_NODE_SYSTEM_RESERVED_CPU=200m \\
      ELASTISERVE_NODE_KUBE_RESERVED_CPU=200m ELASTISERVE_NODE_POD_MEMORY_MI=6144 hack/cluster.sh up && \\
      eval "$(hack/cluster.sh env)"
    hack/keda.sh build                                   # once, ~40 min cold (only for the keda contender)
    python bench/live.py --trace azure_llm_conv_2023_60s.csv --minutes 40 --compress 4 \\
      --contenders ours,hpa,hpa-matched,keda --run conv

One segment of a shared trace (read at run time from ../shared/traces; ``--start-minute``/``--minutes``),
time-compressed ``--compress`` times (bins shrink, counts stay, so rates grow) and then scaled so its busiest
bin offers ``--peak-qps`` (default: 2.5 × the measured pod capacity, i.e. the peak needs 3 pods at the
objective), is replayed as open-loop Poisson load (``elastiserve.loadgen``) once per contender, one at a
time, on the same real node:

* ``ours``: the chart's operator (in a pod) and a ModelDeployment: one fp32 variant with ``capacityQps`` =
  the measured capacity, the example backtest spec otherwise (``simulation/config.py``: SLO policy, in-flight
  panic check), forecasting off (a segment of minutes has no history to fit);
* ``hpa``: the SAME Deployment and Service the operator renders (``operator/builders.py``), no operator, and an
  ``autoscaling/v2`` HPA on CPU at ``--hpa-cpu-target`` (80 %) computed by the real kube-controller-manager
  (sync 15 s) from metrics-server (resolution 15 s);
* ``hpa-matched``: the same HPA with the CPU target that matches ours' cost: ours' measured mean CPU
  utilisation (CPU core-seconds / (pod-seconds × request), from the kubelet's cAdvisor via Prometheus;
  ``--hpa-matched-target`` sets it when ``ours`` is not in the run);
* ``keda``: the same Deployment with a KEDA ``ScaledObject`` (``hack/keda.sh``: KEDA's operator and metrics
  API server built from its Go module) using the Prometheus scaler on the request rate
  ``sum(rate(elastiserve_requests_total{...}[60s]))`` with a per-pod target ``--keda-qps-target``
  (default 0.8 × capacity: the HPA's 80 % headroom, in requests).

Every pod has ``requests.cpu == limits.cpu == --cpu`` (300m), so CPU utilisation is the share of the pod's
quota and an HPA target of 80 % means 80 % of what a pod can do. Load goes straight to the model's Service
IP, each request on a new connection (``LoadGen(keep_alive=False)``: kube-proxy picks a Ready pod per
request), as a client without keep-alive would. Before the runs, the pod capacity at the p95 objective and the start-up
(ModelDeployment applied -> pod Ready) are measured on the node (``bench/real_pod.py``'s code) unless
``--capacity-rps``/``--startup-s`` are given.

Writes ``--out/<run>/``: report.md, report.json, replicas.png (pods per contender with the offered load).
Then replays the same segment through the simulator (``simulation/live.py``: the measured capacity and
start-up, no warm-up) and reports its error per contender, and the simulated oracle's pod-seconds: the
fewest with which the simulator serves the segment at the objective (``bench/live_reach.py`` computes it for
every segment). It takes (minutes / compress + ~3) minutes per contender; ``make test`` runs a short form
(``tests/e2e/test_live_smoke.py``: two replay minutes, the real HPA).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import real_pod  # noqa: E402  (bench/real_pod.py: chart install, model store, capacity, kubectl helpers)
from real_pod import GATEWAY, kjson, kubectl, log, sh  # noqa: E402

REPO = BENCH.parent
NAME = "lm"
CONTENDERS = ("ours", "hpa", "hpa-matched", "keda")
SLO_MS = 200.0
POD_MEMORY = "1Gi"
"""Memory request = limit of every model-server pod (the fp32 server holds ~390 MiB at rest)."""


# ------------------------------------------------------------------ the segment


def resolve_trace(arg: str) -> Path:
    from elastiserve.simulation.traces import traces_dir

    p = Path(arg)
    if p.exists():
        return p
    q = traces_dir() / arg
    if q.exists():
        return q
    raise SystemExit(f"--trace: no file {arg} (nor {q}); the shared traces are in {traces_dir()}")


def load_segment(path: Path, start_minute: float, minutes: float, compress: float):
    """The trace segment as replayed, before the peak scaling: ``limited`` then ``compressed``."""
    from elastiserve.simulation.traces import TraceError, load_trace

    if minutes <= 0 or compress <= 0 or start_minute < 0:
        raise SystemExit("--minutes and --compress must be positive, --start-minute not negative")
    try:
        full = load_trace(path)
        if (start_minute + minutes) * 60 > full.duration_seconds + 1e-6:
            raise SystemExit(f"--start-minute {start_minute:g} + --minutes {minutes:g} ends past the end of {path.name} "
                             f"({full.duration_seconds / 60:g} min): start earlier or replay fewer minutes")
        tr = full.limited(minutes * 60, start_minute * 60).compressed(compress)
    except (TraceError, ValueError) as exc:
        raise SystemExit(f"--trace {path}: {exc}") from None
    if tr.requests.sum() <= 0:
        raise SystemExit(f"--trace {path}: the segment from minute {start_minute:g} has no requests")
    return tr


def scale_to_peak(tr, peak_qps: float):
    from dataclasses import replace

    factor = peak_qps / float(tr.rate.max())
    return replace(tr, requests=tr.requests * factor, notes=tr.notes + (f"scaled ×{factor:.4g} to a {peak_qps:g} qps peak",))


# ------------------------------------------------------------------ objects


def live_spec(store: str, image: str, capacity: float, cpu: str, max_replicas: int) -> dict:
    """Ours' ModelDeployment spec: the example backtest spec with one fp32 variant at the measured capacity."""
    from elastiserve.simulation.config import DEFAULT_SPEC_DICT

    d = copy.deepcopy(DEFAULT_SPEC_DICT)
    d.pop("burst", None)
    d["model"] = {"name": "minilm", "uri": store, "lazyLoading": {"memoryBudget": "512Mi", "preload": ["minilm"]}}
    d["variants"] = [{"name": "fp32", "precision": "fp32", "role": "primary", "capacityQps": round(capacity, 1)}]
    d["template"] = {"image": image, "resources": {"requests": {"cpu": cpu, "memory": POD_MEMORY},
                                                  "limits": {"cpu": cpu, "memory": POD_MEMORY}}}
    d["replicas"] = {"min": 1, "max": max_replicas}
    d["forecasting"] = {"enabled": False}
    return d


def parsed(spec: dict):
    from elastiserve.api import parse_spec

    return parse_spec(spec, "live spec")


def plain_deployment(spec: dict, ns: str) -> tuple[dict, dict]:
    """The Deployment and Service the operator renders for ``spec``, without the owner (no operator acts on them)."""
    from elastiserve.operator.builders import build_deployment, build_service

    s = parsed(spec)
    dep = build_deployment(s, NAME, ns, "", s.primary)
    svc = build_service(s, NAME, ns, "")
    for obj in (dep, svc):
        obj["metadata"].pop("ownerReferences", None)
    dep["spec"]["replicas"] = 1
    return dep, svc


def deployment_name(spec: dict) -> str:
    from elastiserve.operator.builders import deployment_name as dn

    return dn(NAME, parsed(spec).primary.name)


def hpa_object(ns: str, target: str, cpu_percent: float, max_replicas: int) -> dict:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": NAME, "namespace": ns},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                     "minReplicas": 1, "maxReplicas": max_replicas,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "Utilization", "averageUtilization": int(round(cpu_percent))}}}]}}


KEDA_RATE_WINDOW_S = 60
"""The rate window of KEDA's query; the simulated KEDA reads the same window."""
HPA_CPU_TARGET = 80.0
"""The HPA's CPU target (%) by default: the seed's."""
KEDA_CAPACITY_SHARE = 0.8
"""KEDA's per-pod request-rate target by default, as a share of the pod capacity: the HPA's 80 % headroom."""


def rate_query(ns: str) -> str:
    return (f'sum(rate(elastiserve_requests_total{{namespace="{ns}",modeldeployment="{NAME}"}}'
            f'[{KEDA_RATE_WINDOW_S}s]))')


def scaled_object(ns: str, target: str, prometheus: str, qps_target: float, max_replicas: int) -> dict:
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": NAME, "namespace": ns},
            "spec": {"scaleTargetRef": {"name": target}, "minReplicaCount": 1, "maxReplicaCount": max_replicas,
                     "pollingInterval": 15,
                     "triggers": [{"type": "prometheus", "metadata": {
                         "serverAddress": prometheus, "query": rate_query(ns), "threshold": f"{qps_target:.3g}"}}]}}


def apply(obj: dict) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(obj))


# ------------------------------------------------------------------ Prometheus on the bridge


def start_prometheus(workdir: Path, interval: str):
    """Prometheus (built by build-node, with kubernetes_sd) discovering the model servers, the chart's pods and
    cAdvisor; listening on the bridge address so the operator's pod and KEDA reach it."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.prometheus import PrometheusServer, free_port

    binary = os.environ.get("ELASTISERVE_PROMETHEUS_SD", "")
    if not binary or not Path(binary).exists():
        raise SystemExit("no Prometheus with kubernetes_sd ($ELASTISERVE_PROMETHEUS_SD): run hack/cluster.sh build-node "
                         'and eval "$(hack/cluster.sh env)"')
    out = sh(sys.executable, str(REPO / "hack" / "prometheus-sd.py"), "--out", str(workdir / "sd"),
             "--interval", interval, timeout=120)
    config = json.loads(Path(out.strip()).read_text())
    return PrometheusServer(config=config, workdir=workdir / "prom", binary=binary, port=free_port(),
                            host=GATEWAY).start()


# ------------------------------------------------------------------ sampling the cluster


class Sampler(threading.Thread):
    """Every ``interval`` s: the Deployment's desired replicas, the pods (existing, Ready), their first sight and
    Ready times. Reads the API with the Python client (cheaper than a kubectl process per second)."""

    def __init__(self, ns: str, deployment: str, t0: float, interval: float = 1.0, operator: bool = False):
        super().__init__(daemon=True)
        from kubernetes import client, config

        config.load_kube_config(os.environ["KUBECONFIG"])
        self.core, self.apps = client.CoreV1Api(), client.AppsV1Api()
        self.custom = client.CustomObjectsApi() if operator else None
        self.decisions: list[tuple[float, str]] = []
        """With the operator: its last decision's reasons (``status.lastDecision``) whenever they change."""
        self.ns, self.deployment, self.t0, self.interval = ns, deployment, t0, interval
        self.samples: list[tuple[float, int, int, int]] = []
        self.first_seen: dict[str, float] = {}
        self.created: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.errors = 0
        self.load: list[float] = []
        """The machine's 1-minute load average at each sample (2 shared cores: CPU contention skews latency)."""
        self._halt = threading.Event()

    def sample(self) -> None:
        now = time.time() - self.t0
        self.load.append(os.getloadavg()[0])
        try:
            dep = self.apps.read_namespaced_deployment(self.deployment, self.ns)
            pods = self.core.list_namespaced_pod(self.ns, label_selector=f"elastiserve.dev/modeldeployment={NAME}").items
        except Exception:  # noqa: BLE001 - an API hiccup loses one sample, not the run
            self.errors += 1
            return
        alive = [p for p in pods if p.status.phase not in ("Succeeded", "Failed")]
        ready = 0
        for p in alive:
            name = p.metadata.name
            self.first_seen.setdefault(name, now)
            self.created.setdefault(name, p.metadata.creation_timestamp.timestamp() - self.t0)
            conds = {c.type: c for c in (p.status.conditions or [])}
            if "Ready" in conds and conds["Ready"].status == "True" and not p.metadata.deletion_timestamp:
                ready += 1
                self.ready_at.setdefault(name, conds["Ready"].last_transition_time.timestamp() - self.t0)
        self.samples.append((round(now, 2), int(dep.spec.replicas or 0), len(alive), ready))
        if self.custom is not None:
            try:
                md = self.custom.get_namespaced_custom_object("elastiserve.dev", "v1alpha1", self.ns,
                                                              "modeldeployments", NAME)
            except Exception:  # noqa: BLE001 - as above
                self.errors += 1
                return
            last = (md.get("status") or {}).get("lastDecision") or {}
            why = "; ".join(last.get("reasons") or [])
            if why and (not self.decisions or self.decisions[-1][1] != why):
                self.decisions.append((round(now, 2), why))

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            self.sample()
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


# ------------------------------------------------------------------ load straight to the Service


async def replay(target: str, host: str, trace, seed: int) -> tuple[list[tuple[float, float, int]], dict]:
    """``trace`` as Poisson load to ``target`` (``http://<Service IP>:80``), each request on a NEW connection so
    kube-proxy spreads them over the Ready pods as they come and go (keep-alive would pin them to the first
    pods), with ``Host: host`` (the Service's name, as a client in the cluster calls it): per-request records."""
    from elastiserve.loadgen import LoadGen, TraceCurve

    sys.path.insert(0, str(REPO / "tests"))
    from support.real_node import POD_CIDR, SERVICE_CIDR

    records: list[tuple[float, float, int]] = []
    curve = TraceCurve(tuple(i * trace.step_seconds for i in range(len(trace.requests))),
                       tuple(float(v) for v in trace.rate), trace.duration_seconds)
    gen = LoadGen(f"x/{NAME}", "minilm", [target], None, curve, duration=trace.duration_seconds, seed=seed,
                  max_requests=10_000_000, host=host, local_networks=(POD_CIDR, SERVICE_CIDR), keep_alive=False,
                  on_result=lambda s, lat, st: records.append((s, lat, st)))
    stats = await gen.run()
    return records, stats.summary(trace.duration_seconds)


# ------------------------------------------------------------------ one contender


def wait_ready_pods(ns: str, n: int, timeout: float) -> None:
    def ok():
        pods = kjson("-n", ns, "get", "pods", "-l", f"elastiserve.dev/modeldeployment={NAME}")["items"]
        return sum(1 for p in pods if {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready")
                   == "True") >= n

    real_pod.wait(ok, timeout, f"{n} Ready pod(s) in {ns}", interval=1)


def hpa_active(ns: str, name: str) -> bool:
    """The HPA exists and computes from its metric (KEDA creates its HPA a moment after the ScaledObject)."""
    raw = kubectl("-n", ns, "get", "hpa", name, "-o", "json", "--ignore-not-found", check=False).strip()
    if not raw:
        return False
    h = json.loads(raw)
    conds = {c["type"]: c["status"] for c in h.get("status", {}).get("conditions", [])}
    return conds.get("ScalingActive") == "True"


def run_contender(name: str, a, spec: dict, trace, prom, targets: dict) -> dict:
    from elastiserve.simulation.live import Request, Sample, summarize

    ns = f"live-{name}"
    real_pod.fresh_namespace(ns)
    dep_name = deployment_name(spec)
    if name == "ours":
        apply({"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment",
               "metadata": {"name": NAME, "namespace": ns}, "spec": spec})
    else:
        dep, svc = plain_deployment(spec, ns)
        apply(dep)
        apply(svc)
    wait_ready_pods(ns, 1, 300)
    if name in ("hpa", "hpa-matched"):
        apply(hpa_object(ns, dep_name, targets[name], a.max_replicas))
        real_pod.wait(lambda: hpa_active(ns, NAME), 120, f"the HPA in {ns} reading CPU from metrics-server", interval=2)
    elif name == "keda":
        apply(scaled_object(ns, dep_name, prom.url, targets["keda"], a.max_replicas))
        real_pod.wait(lambda: hpa_active(ns, f"keda-hpa-{NAME}"), 180,
                      f"KEDA's HPA in {ns} reading the external metric", interval=2)
    svc_ip = kjson("-n", ns, "get", "service", NAME)["spec"]["clusterIP"]
    for _ in range(5):  # warm the first pod (and prove the path) before the clock starts
        status, _ = real_pod.embed_once(svc_ip, 80)
        if status != 200:
            raise SystemExit(f"{ns}: a warm-up request through the Service got {status}")
    log(f"{name}: replaying {trace.duration_seconds / 60:.1f} min of load")
    t0 = time.time()
    sampler = Sampler(ns, dep_name, t0, operator=name == "ours")
    sampler.sample()
    sampler.start()
    try:
        records, stats = asyncio.run(replay(f"http://{svc_ip}:80", f"{NAME}.{ns}.svc", trace, a.seed))
    finally:
        sampler.stop()
    duration = trace.duration_seconds
    cpu = prom.query_value(f'sum(increase(container_cpu_usage_seconds_total{{namespace="{ns}",container!="",'
                           f'container!="POD"}}[{int(time.time() - t0)}s]))')
    samples = [Sample(*s) for s in sampler.samples]
    requests = [Request(*r) for r in records]
    out = summarize(requests, samples, SLO_MS / 1000, duration, sampler.first_seen, window_seconds=60.0 / a.compress)
    startups = [sampler.ready_at[p] - sampler.created[p] for p in sampler.ready_at if sampler.created[p] > 0]
    out.update(cpu_core_seconds=None if cpu is None else round(cpu, 1),
               mean_cpu_utilisation=(round(100 * cpu / (out["pod_seconds"] * cores(a.cpu)), 1)
                                     if cpu and out["pod_seconds"] else None),
               startup_s_live=round(sum(startups) / len(startups), 1) if startups else None,
               sampler_errors=sampler.errors, loadgen=stats,
               load_average_1m={"min": round(min(sampler.load), 1), "mean": round(sum(sampler.load) / len(sampler.load), 1),
                                "max": round(max(sampler.load), 1)},
               target=targets.get(name), samples=sampler.samples, decisions=sampler.decisions)
    if name != "ours":
        events = kubectl("-n", ns, "get", "events", "--field-selector", "reason=SuccessfulRescale", "-o", "json", check=False)
        out["rescale_events"] = [e.get("message") for e in json.loads(events or '{"items": []}').get("items", [])]
    kubectl("delete", "namespace", ns, "--wait=true", timeout=300, check=False)
    log(f"{name}: {out['pod_seconds']:.0f} pod-s, {out['slo_violation_minutes']} violation min, "
        f"{out['slo_violation_windows']} of {out['windows']} trace minutes violated, p95 {out['p95_ms']} ms, "
        f"errors {out['errors']}, scale events {out['scale_events']}")
    return out


def cores(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


# ------------------------------------------------------------------ report


def write_report(out: Path, doc: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(out, doc)
    c, live, sim = doc["config"], doc["live"], doc.get("simulator", {})
    lines = [f"# Live on real pods: {c['trace']} ({c['run']})", "",
             f"Segment: minutes {c['start_minute']:g}-{c['start_minute'] + c['minutes']:g} of `{c['trace']}`, time compressed "
             f"×{c['compress']:g} (replayed in {c['replay_seconds'] / 60:.1f} min), scaled to a {c['peak_qps']:g} req/s peak "
             f"(mean {c['mean_qps']:.1f}). Pods: `{c['cpu']}` CPU (request = limit); capacity at p95 ≤ {SLO_MS:g} ms "
             f"{c['capacity_rps']:g} req/s/pod, start-up {c['startup_s']:g} s ({c['measured']}). Max {c['max_replicas']} pods. "
             f"Started {c['started']}, load average {c['load_average']}.", "",
             f"Violation minutes are minutes of the replay; trace minutes are its windows of 60/{c['compress']:g} s, "
             "each scored as a minute is (more than 5 % of its requests slow or failed).", "",
             "| contender | target | pod-seconds | SLO-violation min | violated trace minutes | slow or failed | p95 ms "
             "| p99 ms | errors | scale events | pods started | cold starts | mean CPU % | load avg 1m (mean, max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in live.items():
        err = sum(m["errors"].values())
        la = m.get("load_average_1m") or {}
        bad = 100 * (m["slow_share"] + m["error_share"])
        lines.append(f"| {name} | {m.get('target_text', '')} | {m['pod_seconds']:.0f} | {m['slo_violation_minutes']} / "
                     f"{m['minutes']} | {m.get('slo_violation_windows')} / {m.get('windows')} | {bad:.1f} % | {m['p95_ms']} | {m['p99_ms']} | {err} of {m['requests']} | "
                     f"{m['scale_events']} | {m['pods_started']} | {m['cold_starts']} | {m.get('mean_cpu_utilisation')} | "
                     f"{la.get('mean')}, {la.get('max')} |")
    if sim.get("errors"):
        lines += ["", "## The simulator on the same segment", "",
                  f"`simulation/live.py` `calibrated_backtest`: capacityQps {c['capacity_rps']:g}, start-up "
                  f"{c['startup_s']:g} s, no warm-up, tick 1 s; hpa/hpa-matched/keda as the HPA v2 algorithm holding a per-pod "
                  "request rate (keda: its trigger's target; hpa: the rate at which the CPU per request measured in its "
                  "own run reaches the CPU target).", "",
                  "| contender | per-pod rate held (sim) | live pod-s | sim pod-s | error | live violation min | "
                  "sim violation min | live / sim violated trace minutes |", "|---|---|---|---|---|---|---|---|"]
        for name, e in sim["errors"].items():
            pe = "n/a" if e["pod_seconds_error"] is None else f"{100 * e['pod_seconds_error']:+.1f} %"
            held = sim.get("results", {}).get(name, {}).get("qps_target_per_pod")
            lines.append(f"| {name} | {'' if held is None else held} | {e['live_pod_seconds']:.0f} | "
                         f"{e['sim_pod_seconds']:.0f} | {pe} | "
                         f"{e['live_violation_minutes']} | {e['sim_violation_minutes']} | "
                         f"{e.get('live_violation_windows')} / {e.get('sim_violation_windows')} |")
        oracle = sim.get("results", {}).get("oracle")
        if oracle:
            lines += ["", f"The oracle on the same segment (simulated: perfect foresight, each pod started one start-up "
                      f"ahead, from one Ready pod): {oracle['pod_seconds']:.0f} pod-s, {oracle['slo_violation_minutes']} "
                      f"violation min, {oracle.get('slo_violation_windows')} violated trace minutes: the fewest pod-seconds "
                      "with which the simulator serves this segment at the objective (`bench/live_reach.py` over "
                      "every segment)."]
    if doc.get("targets"):
        lines += ["", "## Against the targets", ""] + [f"* {k}: {v}" for k, v in doc["targets"].items()]
    lines += ["", "![replicas](replicas.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def plot(out: Path, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = doc["live"]
    offered = doc["offered"]
    cap = doc["config"]["capacity_rps"]
    end = doc["config"]["replay_seconds"]
    offered = {"t": [*offered["t"], end], "rate": [*offered["rate"], offered["rate"][-1]]}
    fig, axes = plt.subplots(len(live), 1, figsize=(11, 2.6 * max(1, len(live))), sharex=True, squeeze=False)
    for ax, (name, m) in zip(axes[:, 0], live.items()):
        t = [s[0] / 60 for s in m["samples"]]
        ax.step(t, [s[2] for s in m["samples"]], where="post", color="tab:blue", label="pods")
        ax.step(t, [s[3] for s in m["samples"]], where="post", color="tab:green", lw=0.8, label="ready")
        ax.step(t, [s[1] for s in m["samples"]], where="post", color="tab:orange", lw=0.8, ls="--", label="desired")
        ax.step([x / 60 for x in offered["t"]], [r / cap for r in offered["rate"]], where="post", color="grey", lw=0.8,
                ls=":", label="offered / capacity")
        for mi in m["violated_minutes"]:
            ax.axvspan(mi, mi + 1, color="red", alpha=0.12, lw=0)
        ax.set_ylabel("pods")
        ax.set_title(f"{name}: {m['pod_seconds']:.0f} pod-s, {m['slo_violation_minutes']} SLO-violation min (red)",
                     fontsize=9)
        ax2 = ax.twinx()
        ax2.step([x / 60 for x in offered["t"]], offered["rate"], where="post", color="black", lw=0.5, alpha=0.5)
        ax2.set_ylabel("offered req/s", fontsize=8)
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("minutes of replay")
    fig.tight_layout()
    fig.savefig(out / "replicas.png", dpi=100)
    plt.close(fig)


def meets_target(ours_pod_seconds: float, ours_violated: int, base_pod_seconds: float, base_violated: int) -> bool:
    """Issue 17's live target against one baseline: no more pod-seconds, at most half its violated minutes."""
    return ours_pod_seconds <= base_pod_seconds and ours_violated <= base_violated / 2


def target_checks(live: dict, errors: dict, oracle: dict | None = None) -> dict:
    out = {}
    if oracle:
        under = [n for n in ("hpa", "keda") if n in live and live[n]["pod_seconds"] < oracle["pod_seconds"]]
        out["least pod-seconds at the objective (simulated oracle)"] = (
            f"{oracle['pod_seconds']:.0f} pod-s, {oracle.get('slo_violation_windows')} violated trace minutes"
            + (f"; {', '.join(under)} paid less: no more pod-seconds than that means missing the objective where "
               "the oracle does not" if under else ""))
    for name, e in errors.items():
        if e["pod_seconds_error"] is not None:
            out[f"sim vs live pod-seconds, {name} (within 15 %)"] = (
                f"{100 * e['pod_seconds_error']:+.1f} % -> {'met' if abs(e['pod_seconds_error']) <= 0.15 else 'NOT met'}")
    if "ours" in live:
        o = live["ours"]
        for name in ("hpa", "hpa-matched", "keda"):
            if name in live:
                b = live[name]
                for unit, key in (("replay minutes", "slo_violation_minutes"), ("trace minutes", "slo_violation_windows")):
                    met = meets_target(o["pod_seconds"], o[key], b["pod_seconds"], b[key])
                    out[f"ours vs {name}: no more pod-seconds, at most half the violated {unit}"] = (
                        f"{o['pod_seconds']:.0f} vs {b['pod_seconds']:.0f} pod-s, {o[key]} vs {b[key]} "
                        f"-> {'met' if met else 'NOT met'}")
    return out


# ------------------------------------------------------------------ main


_MEMORY_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def memory_bytes(q: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMG]i?|Ki)?", q)
    if not m:
        raise SystemExit(f"unexpected memory quantity {q!r} on the node")
    return float(m.group(1)) * _MEMORY_UNITS[m.group(2) or ""]


def node_max_replicas(cpu: str) -> int:
    """How many model-server pods (``cpu``, ``POD_MEMORY``) still fit on the real node: allocatable minus what
    its pods request, in CPU and in memory (a pod that does not fit stays Pending, and would be billed)."""
    node = kjson("get", "node", "elastiserve-node")
    alloc = node["status"]["allocatable"]
    free_cpu, free_mem = cores(alloc["cpu"]), memory_bytes(alloc["memory"])
    for p in kjson("get", "pods", "-A", "--field-selector", "spec.nodeName=elastiserve-node")["items"]:
        if p["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for ctr in p["spec"]["containers"]:
            req = ctr.get("resources", {}).get("requests", {})
            free_cpu -= cores(req.get("cpu", "0"))
            free_mem -= memory_bytes(req.get("memory", "0"))
    by_cpu, by_mem = int(free_cpu // cores(cpu)), int(free_mem // memory_bytes(POD_MEMORY))
    if by_mem < by_cpu:
        log(f"memory limits the node to {by_mem} pod(s) of {POD_MEMORY} (CPU would allow {by_cpu}): raise "
            "ELASTISERVE_NODE_POD_MEMORY_MI at cluster up")
    return min(by_cpu, by_mem)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default="azure_llm_conv_2023_60s.csv", help="file in ../shared/traces, or a path")
    ap.add_argument("--start-minute", type=float, default=0.0)
    ap.add_argument("--minutes", type=float, default=40.0, help="length of the segment in trace time")
    ap.add_argument("--compress", type=float, default=4.0, help="replay the segment this many times faster")
    ap.add_argument("--peak-qps", type=float, help="offered rate of the busiest bin (default 2.5 × capacity)")
    ap.add_argument("--contenders", default="ours,hpa,keda", help=f"comma-separated, of {','.join(CONTENDERS)}")
    ap.add_argument("--cpu", default="300m", help="CPU request = limit of every model-server pod")
    ap.add_argument("--max-replicas", type=int, help="default: what fits on the real node")
    ap.add_argument("--capacity-rps", type=float, help="skip measuring: pod capacity at the p95 objective")
    ap.add_argument("--saturation-rps", type=float,
                    help="a pod's saturation throughput (closed loop), for the simulator's HPA and KEDA when a run "
                         "has no CPU figure (default: measured with the capacity, else the capacity)")
    ap.add_argument("--startup-s", type=float, help="skip measuring: pod start-up (applied -> Ready)")
    ap.add_argument("--hpa-cpu-target", type=float, default=HPA_CPU_TARGET)
    ap.add_argument("--hpa-matched-target", type=float, help="CPU target of hpa-matched (default: ours' utilisation)")
    ap.add_argument("--keda-qps-target", type=float, help="per-pod request rate of KEDA's trigger (default 0.8 × capacity)")
    ap.add_argument("--scrape-interval", default="5s", help="Prometheus scrape interval")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--run", default=datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    ap.add_argument("--out", type=Path, default=REPO / "report" / "live")
    ap.add_argument("--plan", action="store_true", help="print the segment and settings, touch no cluster")
    a = ap.parse_args()

    for flag, v in (("--peak-qps", a.peak_qps), ("--capacity-rps", a.capacity_rps), ("--startup-s", a.startup_s),
                    ("--hpa-cpu-target", a.hpa_cpu_target), ("--hpa-matched-target", a.hpa_matched_target),
                    ("--keda-qps-target", a.keda_qps_target), ("--max-replicas", a.max_replicas)):
        if v is not None and not v > 0:
            raise SystemExit(f"{flag} must be positive (got {v:g})")
    if not re.fullmatch(r"\d+(\.\d+)?m?", a.cpu) or cores(a.cpu) <= 0:
        raise SystemExit(f"--cpu {a.cpu}: a positive CPU quantity such as 300m or 0.5")
    names = [n.strip() for n in a.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names:
        raise SystemExit(f"--contenders: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(CONTENDERS)})")
    if "hpa-matched" in names and "ours" not in names and a.hpa_matched_target is None:
        raise SystemExit("--contenders hpa-matched needs ours in the same run, or --hpa-matched-target PERCENT")
    names.sort(key=CONTENDERS.index)  # ours first: hpa-matched takes its target from it
    path = resolve_trace(a.trace)
    segment = load_segment(path, a.start_minute, a.minutes, a.compress)
    if a.plan:
        peak = a.peak_qps or 2.5 * (a.capacity_rps or 10.0)
        tr = scale_to_peak(segment, peak)
        print(json.dumps({"trace": str(path), "bins": len(tr.requests), "step_s": tr.step_seconds,
                          "replay_s": tr.duration_seconds, "peak_qps": peak, "mean_qps": round(tr.mean_qps, 2),
                          "contenders": names, "notes": tr.notes}, indent=2))
        return
    if not os.environ.get("KUBECONFIG"):
        raise SystemExit('no KUBECONFIG: run `eval "$(hack/cluster.sh env)"` for a cluster with a real node')
    if not kjson("get", "node", "elastiserve-node"):
        raise SystemExit("no real node (ELASTISERVE_NODES=0 ELASTISERVE_REAL_NODE=1 hack/cluster.sh up)")

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    work = a.out / a.run / "work"
    work.mkdir(parents=True, exist_ok=True)
    keda_started = False
    stop_store = None
    prom = start_prometheus(work, a.scrape_interval)
    try:
        image = real_pod.install_chart((f"operator.prometheusUrl={prom.url}",))
        stop_store, store, _ = real_pod.serve_model_store()
        measured = "given"
        saturation = a.saturation_rps
        if a.capacity_rps is None or a.startup_s is None:
            m = real_pod.measure_capacity(image, store, "fp32", a.cpu, 8.0, SLO_MS)
            capacity = a.capacity_rps if a.capacity_rps is not None else m["capacity_rps_at_p95"]
            startup = a.startup_s if a.startup_s is not None else m["created_to_ready_s"]
            saturation = saturation or m["saturation_rps"]
            measured = (f"measured on the node: saturation {m['saturation_rps']} req/s (closed loop "
                        f"{json.dumps(m['levels'])}); open loop {json.dumps(m['open_loop'])}")
            real_pod.wait(lambda: not kubectl("get", "namespace", "bench-capacity-fp32", "--ignore-not-found",
                                              check=False).strip(), 300, "the capacity namespace gone")
        else:
            capacity, startup = a.capacity_rps, a.startup_s
        if capacity <= 0:
            raise SystemExit(f"measured capacity is 0 req/s at p95 <= {SLO_MS:g} ms with {a.cpu}: give the pods more CPU")
        a.max_replicas = a.max_replicas or node_max_replicas(a.cpu)
        if a.max_replicas < 2:
            raise SystemExit(f"only {a.max_replicas} pod(s) of {a.cpu} and {POD_MEMORY} fit on the node: lower --cpu or the "
                             "node's reserved CPU (ELASTISERVE_NODE_SYSTEM_RESERVED_CPU / _KUBE_RESERVED_CPU at cluster up), "
                             "or give the pods more memory (ELASTISERVE_NODE_POD_MEMORY_MI)")
        peak = a.peak_qps or 2.5 * capacity
        trace = scale_to_peak(segment, peak)
        spec = live_spec(store, image, capacity, a.cpu, a.max_replicas)
        targets = {"hpa": a.hpa_cpu_target, "keda": a.keda_qps_target or KEDA_CAPACITY_SHARE * capacity}
        if "keda" in names:
            env = dict(os.environ)
            subprocess.run([str(REPO / "hack" / "keda.sh"), "up"], check=True, env=env, timeout=600)
            keda_started = True
        live: dict[str, dict] = {}
        for name in names:
            if name == "hpa-matched":
                targets[name] = a.hpa_matched_target or live["ours"]["mean_cpu_utilisation"]
                if not targets[name]:
                    raise SystemExit("hpa-matched: ours' CPU use was not measured (no cAdvisor series in Prometheus); "
                                     "give --hpa-matched-target PERCENT")
            live[name] = run_contender(name, a, spec, trace, prom, targets)
            # kept at once: a later contender that fails does not lose this one's run
            (work / f"{name}.json").write_text(json.dumps(live[name]) + "\n")
            live[name]["target_text"] = {"ours": "SLO policy", "hpa": f"CPU {targets['hpa']:g} %",
                                         "hpa-matched": f"CPU {targets.get('hpa-matched', 0):.0f} %",
                                         "keda": f"{targets['keda']:.3g} req/s/pod"}[name]
        sim_out, errors = calibrate(trace, spec, names, targets, startup, a.max_replicas, live, a.cpu, capacity,
                                    window_seconds=60.0 / a.compress, saturation=saturation)
        config = {"trace": path.name, "run": a.run, "start_minute": a.start_minute, "minutes": a.minutes,
                  "compress": a.compress, "peak_qps": peak, "mean_qps": trace.mean_qps,
                  "replay_seconds": trace.duration_seconds, "cpu": a.cpu, "capacity_rps": capacity, "saturation_rps": saturation, "startup_s": startup,
                  "measured": measured, "max_replicas": a.max_replicas, "scrape_interval": a.scrape_interval,
                  "targets": targets, "image": image, "started": started,
                  "load_average": [round(x, 1) for x in os.getloadavg()],
                  "versions": versions(), "notes": list(trace.notes)}
        offered = {"t": [i * trace.step_seconds for i in range(len(trace.requests))], "rate": [float(r) for r in trace.rate]}
        doc = {"config": config, "offered": offered, "live": live,
               "simulator": {"results": sim_out, "errors": errors}, "targets": target_checks(live, errors, sim_out.get("oracle"))}
        write_report(a.out / a.run, doc)
        print(json.dumps({k: {kk: v for kk, v in m.items() if kk not in ("samples", "loadgen", "violated_minutes")}
                          for k, m in live.items()} | {"simulator": errors, "targets": doc["targets"]}, indent=2))
        log(f"wrote {a.out / a.run}/report.md, report.json, replicas.png")
    finally:
        if keda_started:
            subprocess.run([str(REPO / "hack" / "keda.sh"), "down"], check=False, timeout=120)
        if stop_store is not None:
            stop_store()
        prom.stop()


def sim_contender(name: str, targets: dict, saturation: float):
    """The simulator's model of live contender ``name``: a CPU-target HPA holds ``targets[name]`` % of the rate
    that saturates a pod, KEDA its trigger's per-pod rate ``targets["keda"]`` over its query's window; both see
    their metric capped at ``saturation``, as live (``LiveContender.saturation_qps``)."""
    from elastiserve.simulation.live import LiveContender

    if name == "ours":
        return LiveContender(name, "ours")
    if name in ("hpa", "hpa-matched"):
        return LiveContender(name, "hpa", qps_target=targets[name] / 100.0 * saturation, saturation_qps=saturation)
    return LiveContender(name, "keda", qps_target=targets["keda"], saturation_qps=saturation,
                         metric_window_seconds=KEDA_RATE_WINDOW_S)


def calibrate(trace, spec: dict, names: list[str], targets: dict, startup: float, max_replicas: int, live: dict,
              cpu: str, capacity: float, window_seconds: float = 60.0, saturation: float | None = None):
    """The simulator on the same segment. A CPU-target HPA holds the per-pod rate at which the pods' CPU reaches
    the target: from the CPU per request measured in that contender's own run (cAdvisor core-seconds / requests
    served); without that figure, the pod's quota is taken as saturated at ``saturation`` (the closed loop's
    throughput), or at the capacity when that was not measured. The HPAs and KEDA see their metric capped
    at that saturation rate, as live (``LiveContender.saturation_qps``)."""
    from elastiserve.simulation.live import LiveContender, calibrated_backtest, rate_at_cpu_target, sim_errors

    def saturation_rate(name: str) -> float:
        m = live.get(name, {})
        if m.get("cpu_core_seconds") and m.get("ok"):
            return rate_at_cpu_target(100.0, cores(cpu), m["cpu_core_seconds"] / m["ok"])
        return saturation or capacity

    # the oracle has no live counterpart: the least any policy pays here
    conts = [LiveContender("oracle", "oracle")] + [sim_contender(n, targets, saturation_rate(n)) for n in names]
    sim_out, _ = calibrated_backtest(trace, parsed(spec), conts, startup, max_replicas, window_seconds=window_seconds)
    for c in conts:
        sim_out[c.name]["qps_target_per_pod"] = None if c.qps_target is None else round(c.qps_target, 2)
        sim_out[c.name]["saturation_qps"] = None if c.saturation_qps is None else round(c.saturation_qps, 2)
    return sim_out, sim_errors(sim_out, live)


def versions() -> dict:
    env = {}
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = v.split(":-", 1)[-1].rstrip('}"')
    keda = re.search(r'KEDA_VERSION="\$\{KEDA_VERSION:-([^}]+)\}"', (REPO / "hack" / "keda.sh").read_text())
    return {"kubernetes": env.get("KUBERNETES_VERSION"), "metrics-server": env.get("METRICS_SERVER_VERSION"),
            "prometheus": env.get("PROMETHEUS_VERSION"),
            "keda": os.environ.get("KEDA_VERSION") or (keda.group(1) if keda else None)}


if __name__ == "__main__":
    main()
