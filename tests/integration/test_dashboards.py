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
* a stand-in for the operator's metrics endpoint: a process that imports the real
  ``elastiserve.operator.telemetry`` registry, sets its series the way a scaling loop would and serves it
  (the real operator needs a working ModelDeployment CRD on the control plane — see the report);
* a stand-in for the kubelet's cAdvisor (``container_cpu_usage_seconds_total``,
  ``container_memory_working_set_bytes`` for the model's pods), which no local process provides.

Then every target of every panel is evaluated over the test's time range with Grafana's variables
substituted, and the PNG renderer draws all three dashboards from the same Prometheus.
"""

from __future__ import annotations

import http.server as http_server
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import wait_until

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE, MODEL = "ml", "minilm"
SCRAPE_S = 1.0


def _dashboards():
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))  # appended, never first: the root's operator/ must not shadow the stdlib
    import dashboards
    import dashboards.render
    import dashboards.spec

    return dashboards


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


# The operator-telemetry and cAdvisor stand-in: the real telemetry registry, values set as a loop would.
STANDIN = textwrap.dedent(
    """
    import random, sys, time
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
    from elastiserve.operator import telemetry as t

    op_port, kubelet_port, ns, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    kubelet = CollectorRegistry()
    cpu = Counter("container_cpu_usage_seconds", "cAdvisor CPU", ("namespace", "pod", "container"), registry=kubelet)
    mem = Gauge("container_memory_working_set_bytes", "cAdvisor memory", ("namespace", "pod", "container"), registry=kubelet)
    start_http_server(op_port, addr="127.0.0.1", registry=t.REGISTRY)
    start_http_server(kubelet_port, addr="127.0.0.1", registry=kubelet)
    pods = {"fp32": f"{name}-fp32-7d9f-abcde", "int8": f"{name}-int8-7d9f-fghij"}
    replicas = {"fp32": 2, "int8": 0}
    tick = 0
    while True:
        tick += 1
        for phase in ("metrics", "forecast", "decide", "cycle"):
            t.RECONCILE_SECONDS.labels(phase).observe(random.uniform(0.001, 0.2))
        t.DECISIONS.labels(ns, name).inc()
        t.PROMETHEUS_ERRORS.labels(ns, name, "latency").inc(0)
        if tick % 7 == 0:
            t.PROMETHEUS_ERRORS.labels(ns, name, "cpu").inc()
        if tick % 5 == 0:
            v = "int8" if replicas["int8"] == 0 else "fp32"
            replicas[v] += 1
            t.SCALE_EVENTS.labels(ns, name, v, "up").inc()
        if tick % 11 == 0 and replicas["int8"] > 0:
            replicas["int8"] -= 1
            t.SCALE_EVENTS.labels(ns, name, "int8", "down").inc()
        qps = 20 + 10 * random.random()
        t.OBSERVED_QPS.labels(ns, name).set(qps)
        t.FORECAST_QPS.labels(ns, name, "mean").set(qps * 1.1)
        t.FORECAST_QPS.labels(ns, name, "upper").set(qps * 1.4)
        t.FORECAST_ERROR.labels(ns, name).set(0.2 + 0.1 * random.random())
        t.METRICS_AVAILABLE.labels(ns, name).set(1)
        t.LAST_DECISION.labels(ns, name).set(time.time())
        t.SCALED_TO_ZERO.labels(ns, name).set(0)
        for v, r in replicas.items():
            t.DESIRED.labels(ns, name, v).set(r)
            t.REPLICAS.labels(ns, name, v).set(r)
            t.READY.labels(ns, name, v).set(max(0, r - (tick % 2)))
            t.MAX_REPLICAS.labels(ns, name, v).set(10 if v == "fp32" else 4)
        for v, pod in pods.items():
            cpu.labels(ns, pod, "model-server").inc(random.uniform(0.1, 0.4))
            mem.labels(ns, pod, "model-server").set(180e6 + random.uniform(0, 20e6))
        time.sleep(0.5)
    """
)


@dataclass
class Stack:
    prom: object
    start: float
    end: float
    servers: dict[str, Proc]
    workdir: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
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
    prom = None
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
        op_port, kubelet_port = free_port(), free_port()
        standin = spawn("operator-standin", [sys.executable, "-c", STANDIN, str(op_port), str(kubelet_port), NAMESPACE, MODEL],
                        work, op_port, _clean_env())
        procs.append(standin)
        for p in servers.values():
            p.wait_http("/v2/health/ready")
        activator.wait_http("/healthz")
        standin.wait_http("/metrics")

        def job(name: str, targets: list[str], honor: bool, labels: dict | None = None) -> dict:
            static = {"targets": targets} | ({"labels": labels} if labels else {})
            return {"job_name": name, "scrape_interval": "1s", "scrape_timeout": "1s", "honor_labels": honor,
                    "static_configs": [static]}

        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                job("model-servers", [f"127.0.0.1:{p.port}" for p in servers.values()], False, {"namespace": NAMESPACE}),
                job("elastiserve-operator", [f"127.0.0.1:{op_port}"], True),
                job("activator", [f"127.0.0.1:{act_port}"], True),
                job("kubelet", [f"127.0.0.1:{kubelet_port}"], True),
            ],
        }
        prom = PrometheusServer(workdir=work / "prometheus", config=config).start()
        start = time.time()

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
        time.sleep(3 * SCRAPE_S)
        yield Stack(prom=prom, start=start, end=time.time(), servers=servers, workdir=work)
    finally:
        if prom is not None:
            prom.stop()
        for p in procs:
            p.stop()
        files.shutdown()
        files.server_close()
        for p in procs:
            assert "Traceback (most recent call last)" not in p.text(), f"{p.name} log:\n{p.text()[-3000:]}"


def _values(d, stack: Stack, step: float) -> dict:
    dashboards = _dashboards()
    values = {"namespace": NAMESPACE, "modeldeployment": MODEL, "variant": ["fp32", "int8"], "slo_latency": "0.25"}
    values.update(dashboards.spec.builtins(range_seconds=stack.end - stack.start, step_seconds=step, scrape_seconds=SCRAPE_S))
    return values


def _targets():
    dashboards = _dashboards()
    for d in dashboards.DASHBOARDS:
        for p in d.panels:
            for i, t in enumerate(p.targets):
                yield pytest.param(d, p, t, id=f"{d.uid.removeprefix('elastiserve-')}/{p.title}/{chr(65 + i)}")


@pytest.mark.parametrize("dashboard,panel,target", list(_targets()))
def test_panel_query_returns_data(stack: Stack, dashboard, panel, target):
    from dashboards.spec import expand

    step = 2.0
    expr = expand(target.expr, _values(dashboard, stack, step))
    if panel.kind == "timeseries":
        series = stack.prom.query_range(expr, stack.start, stack.end, step)
        points = [float(v) for s in series for _, v in s["values"]]
    else:
        series = stack.prom.query(expr, time=stack.end)
        points = [float(s["value"][1]) for s in series]
    assert series, f"no series for {expr}"
    assert any(math.isfinite(v) for v in points), f"only NaN for {expr}"


def test_variable_queries_find_the_model(stack: Stack):
    dashboards = _dashboards()
    client = dashboards.render.PrometheusClient(stack.prom.url)
    model = next(d for d in dashboards.DASHBOARDS if d.uid == "elastiserve-model")
    values = dashboards.render.resolve_variables(model, client, {}, stack.start, stack.end)
    assert values["namespace"] == NAMESPACE and values["modeldeployment"] == MODEL
    assert values["variant"] == ["fp32", "int8"] and values["slo_latency"] == "0.25"


def test_render_draws_every_dashboard(stack: Stack, tmp_path):
    dashboards = _dashboards()
    client = dashboards.render.PrometheusClient(stack.prom.url)
    for d in dashboards.DASHBOARDS:
        out = tmp_path / f"{d.uid}.png"
        results = dashboards.render.render_dashboard(d, client, start=stack.start, end=stack.end, out=out, step=2,
                                                     scrape_seconds=SCRAPE_S)
        assert out.stat().st_size > 30_000, f"{out} looks empty"
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not [e for r in results for e in r.errors]
        empty = [r.title for r in results if not r.finite_points]
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
