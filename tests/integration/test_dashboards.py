"""Every dashboard query against a real Prometheus scraping real elastiserve processes returns data.

What runs (all on 127.0.0.1, scraped every second by a real ``prometheus``):

* two real model servers (``python -m elastiserve.serving.cli serve``), variants fp32 and int8 of the
  ModelDeployment ``ml/minilm``, serving tiny random encoders (``build_tiny_model``) — requests, latency,
  lazy loads, cache hits/misses and idle unloads are real. The ``namespace`` label is attached by the
  scrape config, as Kubernetes service discovery does in a cluster. The int8 server reads its store over
  HTTP (a plain file server on loopback) through the artifact disk cache, and one of its sub-models
  (``gamma``) has a corrupt ONNX file: the cache's figures and a sub-model failing to load are real too;
* the real activator (``elastiserve activator --endpoints-file``): one held request times out (503),
  another waits for a cold start and is forwarded to the fp32 server;
* the real operator (``elastiserve run -n ml``) on the local control plane (kwok nodes, the session's
  ``k8s_cluster``) with this test's Prometheus as its metrics source, scaling the real ModelDeployment
  ``ml/minilm`` (fp32 primary, int8 burst, ``spec.slo`` on, a naive forecast on 1 s steps). Its series come
  from its own cycles: its first cycles run before any request, so the request-rate and latency queries
  find no series and count as failed Prometheus queries; then a steady load above the ready capacity, in
  two levels, makes it scale fp32 up twice (int8 bridging its start-up) and the forecast's error and
  coverage follow within a few cycles. (No scale-down: the SLO policy holds one for two primary lead times, 40 to 140 s
  here depending on the start-up it has learned, and the scale-events panels need one event.)
* no stand-in: the two panels that read the kubelet's cAdvisor (``container_cpu_usage_seconds_total``,
  ``container_memory_working_set_bytes``: CPU and memory per pod) are checked on the real node, where a
  kubelet measures real pods (``tests/e2e/test_serverless.py``). kwok pods run no containers, so nothing
  here could produce those series honestly; they are left out below (``reads_kubelet``).

Then every other target of every panel is evaluated over the test's time range with Grafana's variables
substituted, and the PNG renderer draws all three dashboards from the same Prometheus.
"""

from __future__ import annotations

import http.server as http_server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import dashboards as dashboards_support
from support import wait_until
from support.dashboards import reads_kubelet

pytestmark = [pytest.mark.prometheus, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE, MODEL = "ml", "minilm"
SCRAPE_S = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 30) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    log: Path
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_http(self, path: str, timeout: float = 60) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                return http("GET", self.base + path, timeout=2) == 200
            except OSError:
                return False

        wait_until(up, timeout=timeout, interval=0.2, what=f"{self.name} {path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def spawn(name: str, argv: list[str], workdir: Path, port: int, env: dict[str, str]) -> Proc:
    log = workdir / f"{name}.log"
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=workdir,
                            start_new_session=True)
    return Proc(name, proc, log, port)


def model_deployment() -> dict:
    """ml/minilm as the operator scales it here: SLO policy and a naive forecast on second-scale steps, so
    every SLO series, the forecast's error and its coverage exist within seconds of traffic."""
    return {
        "apiVersion": "elastiserve.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "alpha", "uri": "file:///models/alpha/model.onnx"},
            "variants": [
                {"name": "fp32", "precision": "fp32", "role": "primary", "capacityQps": 2},
                {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 4,
                 "replicas": {"min": 1, "max": 3}},
            ],
            "replicas": {"min": 1, "max": 12},
            "syncPeriodSeconds": 5,
            "metrics": {"windowSeconds": 10,
                        "rules": {"cpu": {"enabled": False, "scaleUpAbove": 80, "scaleDownBelow": 30}}},
            "forecasting": {"enabled": True, "method": "naive", "stepSeconds": 1, "historySeconds": 600,
                            "horizonSeconds": 2},
            "slo": {"enabled": True, "latencyMs": 250},
        },
    }


def operator_samples(op: "Proc") -> list:
    """The samples of the operator's own /metrics (``prometheus_client``'s parser)."""
    with urllib.request.urlopen(op.base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def has_series(op: "Proc", *names: str) -> bool:
    present = {s.name for s in operator_samples(op)}
    return set(names) <= present


def counted(op: "Proc", name: str, **labels: str) -> float:
    """Value of the operator's counter ``name`` with these labels (0 before its first increment)."""
    return sum(s.value for s in operator_samples(op) if s.name == name and labels.items() <= s.labels.items())


@dataclass
class Stack:
    prom: object
    start: float
    end: float
    servers: dict[str, Proc]
    workdir: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, k8s_cluster, crd) -> Iterator[Stack]:
    from support.prometheus import PrometheusNotInstalled, PrometheusServer, ensure_prometheus

    try:
        ensure_prometheus()
    except PrometheusNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    from elastiserve.serving.builder import build_tiny_model

    work = tmp_path_factory.mktemp("dashboards")
    store = work / "store"
    for variant in ("fp32", "int8"):
        build_tiny_model(store / "alpha", hidden=16, layers=1, heads=2, variant=variant)
    shutil.copytree(store / "alpha", store / "beta")
    shutil.copytree(store / "alpha", store / "gamma")
    for onnx in (store / "gamma").glob("*.onnx"):
        onnx.write_bytes(b"not an ONNX model")  # downloads fine, fails to load: invalid_model

    class QuietFiles(http_server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(store), **kwargs)

        def log_message(self, *args) -> None:
            pass

    files = http_server.ThreadingHTTPServer(("127.0.0.1", 0), QuietFiles)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    remote_store = f"http://127.0.0.1:{files.server_address[1]}/"

    procs: list[Proc] = []
    cleanups: list = []
    prom = None
    namespace_made = False
    try:
        servers = {}
        for variant in ("fp32", "int8"):
            port = free_port()
            remote = variant == "int8"
            servers[variant] = spawn(
                f"server-{variant}",
                [sys.executable, "-m", "elastiserve.serving.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--store", remote_store if remote else str(store), "--model", "alpha,beta,gamma" if remote else "alpha,beta",
                 "--preload", "alpha", "--idle-unload-seconds", "2"],
                work, port,
                _clean_env(ELASTISERVE_MODELDEPLOYMENT=MODEL, ELASTISERVE_VARIANT=variant,
                           **({"ELASTISERVE_ARTIFACT_CACHE_DIR": str(work / "artifacts")} if remote else {})),
            )
            procs.append(servers[variant])
        endpoints = work / "endpoints.json"
        endpoints.write_text("{}")
        act_port = free_port()
        activator = spawn("activator", [sys.executable, "-m", "elastiserve.cli", "activator", "--host", "127.0.0.1",
                                        "--port", str(act_port), "--endpoints-file", str(endpoints), "--timeout", "2"],
                          work, act_port, _clean_env())
        procs.append(activator)
        for p in servers.values():
            p.wait_http("/v2/health/ready")
        activator.wait_http("/healthz")

        def job(name: str, targets: list[str], honor: bool, labels: dict | None = None) -> dict:
            static = {"targets": targets} | ({"labels": labels} if labels else {})
            return {"job_name": name, "scrape_interval": "1s", "scrape_timeout": "1s", "honor_labels": honor,
                    "static_configs": [static]}

        op_port, live_port = free_port(), free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                job("model-servers", [f"127.0.0.1:{p.port}" for p in servers.values()], False, {"namespace": NAMESPACE}),
                job("elastiserve-operator", [f"127.0.0.1:{op_port}"], True),
                job("activator", [f"127.0.0.1:{act_port}"], True),
            ],
        }
        prom = PrometheusServer(workdir=work / "prometheus", config=config).start()
        start = time.time()

        # The real operator on the kwok cluster, reading this Prometheus. Its first cycles come before any
        # request: the request-rate and latency queries find no series, and it counts them as failed queries.
        k8s_cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        namespace_made = True
        k8s_cluster.apply(model_deployment())
        operator = spawn("operator", [sys.executable, "-m", "elastiserve.cli", "run", "-n", NAMESPACE,
                                      "--prometheus-url", prom.url, "--metrics-port", str(op_port),
                                      "--liveness", f"http://127.0.0.1:{live_port}/healthz"],
                         work, op_port, dict(k8s_cluster.env) | {"PYTHONUNBUFFERED": "1"})
        procs.append(operator)
        operator.wait_http("/metrics")
        wait_until(lambda: has_series(operator, "elastiserve_operator_prometheus_errors_total"),
                   timeout=60, what="the operator's first cycle (a failed query: no requests yet)")

        # A steady load on alpha from here on, in two levels: about 3 req/s (above fp32's ready capacity of
        # 2), then about 15 or more. Each level makes the SLO policy scale fp32 up, so the scale events are
        # counted twice (a counter's first increment is invisible to increase(): the series is born at 1).
        steady_stop = threading.Event()
        steady_codes: list[int] = []
        pause = [0.3]

        def steady() -> None:
            i = 0
            while not steady_stop.is_set():
                variant = "int8" if i % 3 == 0 else "fp32"
                steady_codes.append(http("POST", f"{servers[variant].base}/v1/models/alpha:embed", {"texts": ["steady"]}))
                i += 1
                steady_stop.wait(pause[0])

        steady_thread = threading.Thread(target=steady, daemon=True)
        steady_thread.start()
        cleanups.append(lambda: (steady_stop.set(), steady_thread.join(10)))

        # Traffic: both variants, a lazily loaded sub-model (miss, then hits, then an idle unload), unknown models.
        body = {"texts": ["hello there"]}
        for i in range(30):
            variant = "int8" if i % 3 == 0 else "fp32"
            model = "beta" if i in (4, 5, 6) else "alpha"
            assert http("POST", f"{servers[variant].base}/v1/models/{model}:embed", body) == 200
            if i % 10 == 9:
                assert http("POST", f"{servers['fp32'].base}/v1/models/nope:embed", body) == 404
            time.sleep(0.2)
        assert http("POST", f"{servers['int8'].base}/v1/models/gamma:embed", body) == 500  # corrupt: load fails

        # The activator: one held request times out, the next one waits for a "cold start" and is forwarded.
        headers = {"Host": f"{MODEL}.{NAMESPACE}.svc"}  # the model's Service, as a caller reaches it
        codes: list[int] = []
        timed_out = threading.Thread(target=lambda: codes.append(
            http("POST", f"{activator.base}/v1/models/alpha:embed", body, headers)))
        timed_out.start()
        timed_out.join(10)
        # Let the first wake finish: a request arriving in the instant between the held request's 503 and
        # the end of its wake task waits on that task's event, which is never set (reported to the lead).
        time.sleep(1.0)
        # Two cold starts: a histogram child is born at its first observation, and rate() needs the second.
        for _ in range(2):
            endpoints.write_text("{}")
            time.sleep(1.5)
            woken = threading.Thread(target=lambda: codes.append(
                http("POST", f"{activator.base}/v1/models/alpha:embed", body, headers)))
            woken.start()
            time.sleep(0.8)
            endpoints.write_text(json.dumps({f"{NAMESPACE}/{MODEL}": [servers["fp32"].base]}))
            woken.join(10)
        assert codes == [503, 200, 200], codes

        # More traffic; beta (idle-unloaded 2 s after its first use) is loaded a second time, for the same
        # reason as the cold starts.
        for i in range(20):
            variant = "int8" if i % 2 else "fp32"
            model = "beta" if i in (10, 11) else "alpha"
            assert http("POST", f"{servers[variant].base}/v1/models/{model}:embed", body) == 200
            time.sleep(0.25)
        wait_until(lambda: prom.query(f'elastiserve_model_unloads_total{{modeldeployment="{MODEL}"}}'),
                   timeout=30, what="an idle unload scraped")
        def fp32_up() -> float:
            return counted(operator, "elastiserve_operator_scale_events_total", variant="fp32", direction="up")

        wait_until(lambda: fp32_up() >= 1, timeout=60, interval=1,
                   what=f"a first scale-up of fp32 (log: {operator.log})")
        pause[0] = 0.04
        wait_until(lambda: fp32_up() >= 2, timeout=60, interval=1,
                   what=f"a second scale-up of fp32 under the higher load (log: {operator.log})")
        wanted = ("elastiserve_operator_forecast_coverage", "elastiserve_operator_forecast_error",
                  "elastiserve_operator_forecast_qps", "elastiserve_operator_slo_lead_seconds",
                  "elastiserve_operator_observed_qps")
        wait_until(lambda: has_series(operator, *wanted), timeout=60, interval=1,
                   what=f"the operator's series {wanted} (log: {operator.log})")
        steady_stop.set()
        steady_thread.join(10)
        assert steady_codes and set(steady_codes) == {200}, sorted(set(steady_codes))
        time.sleep(3 * SCRAPE_S)
        yield Stack(prom=prom, start=start, end=time.time(), servers=servers, workdir=work)
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
        if namespace_made:
            # While the operator runs, so that it removes its finalizer; then the namespace goes too.
            k8s_cluster.kubectl("delete", "modeldeployment", MODEL, "-n", NAMESPACE, "--ignore-not-found",
                                "--timeout=60s", check=False)
        for p in reversed(procs):  # the operator first
            p.stop()
        if namespace_made:
            k8s_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found", check=False)
        if prom is not None:
            prom.stop()
        files.shutdown()
        files.server_close()
        for p in procs:
            assert "Traceback (most recent call last)" not in p.text(), f"{p.name} log:\n{p.text()[-3000:]}"


def _values(d, stack: Stack, step: float) -> dict:
    dashboards = dashboards_support.load()
    values = {"namespace": NAMESPACE, "modeldeployment": MODEL, "variant": ["fp32", "int8"], "slo_latency": "0.25"}
    values.update(dashboards.spec.builtins(range_seconds=stack.end - stack.start, step_seconds=step, scrape_seconds=SCRAPE_S))
    return values


def _targets():
    dashboards = dashboards_support.load()
    for d in dashboards.DASHBOARDS:
        for p in d.panels:
            for i, t in enumerate(p.targets):
                if not reads_kubelet(t.expr):
                    yield pytest.param(d, p, t, id=f"{d.uid.removeprefix('elastiserve-')}/{p.title}/{chr(65 + i)}")


@pytest.mark.parametrize("dashboard,panel,target", list(_targets()))
def test_panel_query_returns_data(stack: Stack, dashboard, panel, target):
    from dashboards.spec import expand

    step = 2.0
    expr = expand(target.expr, _values(dashboard, stack, step))
    series, finite = dashboards_support.evaluate(stack.prom, panel, expr, stack.start, stack.end, step)
    assert series, f"no series for {expr}"
    assert finite, f"only NaN for {expr}"


def test_variable_queries_find_the_model(stack: Stack):
    dashboards = dashboards_support.load()
    client = dashboards.render.PrometheusClient(stack.prom.url)
    model = next(d for d in dashboards.DASHBOARDS if d.uid == "elastiserve-model")
    values = dashboards.render.resolve_variables(model, client, {}, stack.start, stack.end)
    assert values["namespace"] == NAMESPACE and values["modeldeployment"] == MODEL
    assert values["variant"] == ["fp32", "int8"] and values["slo_latency"] == "0.25"


def test_render_draws_every_dashboard(stack: Stack, tmp_path):
    dashboards = dashboards_support.load()
    client = dashboards.render.PrometheusClient(stack.prom.url)
    for d in dashboards.DASHBOARDS:
        out = tmp_path / f"{d.uid}.png"
        results = dashboards.render.render_dashboard(d, client, start=stack.start, end=stack.end, out=out, step=2,
                                                     scrape_seconds=SCRAPE_S)
        assert out.stat().st_size > 30_000, f"{out} looks empty"
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not [e for r in results for e in r.errors]
        kubelet = {p.title for p in d.panels if any(reads_kubelet(t.expr) for t in p.targets)}
        empty = [r.title for r in results if not r.finite_points and r.title not in kubelet]
        assert not empty, f"{d.uid}: panels drawn without data: {empty}"


def test_render_cli(stack: Stack, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "dashboards" / "render.py"), "--prometheus-url", stack.prom.url,
         "--start", f"{stack.start:.0f}", "--end", f"{stack.end:.0f}", "--step", "2", "--scrape-interval", "1",
         "--out", str(tmp_path), "--dashboard", "elastiserve-operator"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "elastiserve-operator.png").exists()
    assert "wrote" in proc.stdout


def test_slo_policy_panels_read_the_operators_decisions(stack: Stack):
    """The SLO policy row shows what the operator sized capacity on: a lead time per variant of at least a
    sync period plus half the rate window (5 + 5 s here), the calibrated quantile within its range, a
    headroom multiplier of at least 1 and a coverage share."""
    model = f'namespace="{NAMESPACE}",modeldeployment="{MODEL}"'

    def latest(metric: str) -> dict[str, float]:
        return {s["metric"].get("variant", ""): float(s["value"][1])
                for s in stack.prom.query(f"{metric}{{{model}}}", time=stack.end)}

    leads = latest("elastiserve_operator_slo_lead_seconds")
    assert set(leads) == {"fp32", "int8"} and min(leads.values()) >= 10, leads
    (quantile,) = latest("elastiserve_operator_slo_quantile").values()
    assert 0.5 <= quantile <= 0.999
    (headroom,) = latest("elastiserve_operator_slo_headroom").values()
    assert 1 <= headroom <= 5
    (coverage,) = latest("elastiserve_operator_forecast_coverage").values()
    assert 0 <= coverage <= 1


def test_scale_events_panels_count_the_operators_scale_ups(stack: Stack):
    """The scale-events bars are not only zeros: the operator scaled fp32 up (twice) for real. ``$__interval``
    is the panel's minimum interval, as Grafana sets it."""
    from dashboards.spec import expand

    dashboards = dashboards_support.load()
    for d in dashboards.DASHBOARDS:
        for panel in (p for p in d.panels if p.title == "Scale events"):
            values = _values(d, stack, 2.0) | {"__interval": panel.min_interval}
            expr = expand(panel.targets[0].expr, values)
            series = stack.prom.query_range(expr, stack.start, stack.end, 2.0)
            ups = [float(v) for s in series if s["metric"].get("direction") == "up" for _, v in s["values"]]
            assert ups and max(ups) >= 1, f"{d.uid}: {expr} -> {series}"
