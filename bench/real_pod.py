"""Figures on REAL model-server pods of the local cluster's real node (docs/local-cluster.md).

    ELASTISERVE_NODES=0 ELASTISERVE_REAL_NODE=1 hack/cluster.sh up && eval "$(hack/cluster.sh env)"
    python bench/real_pod.py [--only capacity,cold,s3] [--seconds 8] [--cpu 500m] [--out real-pod.json]

Installs (``helm upgrade --install``) the chart from the image built out of the Dockerfile
(``hack/cluster.sh image``), serves the MiniLM folder (fp32 + INT8, built into the model cache if
needed) over HTTP on the node's bridge address, and measures, for fp32 and INT8:

* ``capacity``: one model-server pod with ``--cpu`` as its CPU limit (a CFS quota); closed-loop clients
  at concurrency 1, 2, 4, 8 send one sentence per request to the pod for ``--seconds`` each: the best
  rate is the pod's saturation throughput. Then open-loop Poisson load at 50, 60, ... 90 % of it for 30 s
  each: the capacity is the highest of these rates whose p95 latency stays within the objective
  (``--p95-ms``, default 200 ms: the default latency rule ``metrics.rules.latency.scaleUpAbove``).
* ``cold``: a ModelDeployment at zero (``replicas.min: 0``, scale to zero on); ONE request is sent
  through the in-cluster activator's Service while nothing runs; the time to its 200 is split into
  ``decide_s`` (request sent -> the operator set the Deployment's replicas to 1), ``pod_start_s``
  (-> the container runs), ``server_start_s`` (-> the server logs "serving": interpreter and imports
  under the CPU limit), ``model_load_s`` (-> "ready": download + session) and ``rest_s`` (Ready -> the
  200 reaches the client: the activator's poll and the forward).
* ``s3``: the model comes from SeaweedFS (``hack/s3.sh up`` with ``ELASTISERVE_S3_IP`` = the bridge
  address, reachable by the pods only). Scale-up 0 -> 1 (ModelDeployment applied) to the first
  successful inference on the new replica, split into ``pod_start_s``, ``server_start_s``,
  ``download_s`` (every file fetched into the empty emptyDir cache: cold disk), ``session_s``
  (``load`` minus downloads: ONNX Runtime session + tokenizer) and ``first_inference_s``; then the
  container is killed and restarted by the kubelet with the emptyDir kept: ``warm_load_s`` is the
  cache hit (a HEAD per file, no body: ``warm_downloads`` stays empty) + a new session, ``restart_total_s``
  the kill to the first 200 of the restarted container.

Times come from the client's clock, a watch on the pods and Deployments, and the server's own log
lines (same machine, same clock). Prints one JSON document. Only one real node per machine: run it
while nothing else uses the node.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from elastiserve.serving.builder import ensure_model

REPO = Path(__file__).resolve().parents[1]
GATEWAY = "10.250.0.1"
RELEASE, SYSTEM_NS = "es", "elastiserve-system"
SENTENCE = "Autoscaling model servers on a real node keeps the latency objective within reach."
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[real-pod {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def sh(*args: str, input: str | None = None, timeout: float = 300, check: bool = True) -> str:
    res = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} failed: {res.stderr.strip()[-800:]}")
    return res.stdout


def kubectl(*args: str, **kw) -> str:
    return sh("kubectl", *args, **kw)


def kjson(*args: str):
    return json.loads(kubectl(*args, "-o", "json"))


# ------------------------------------------------------------------ cluster objects


def model_deployment(ns: str, name: str, uri: str, image: str, *, precision: str, cpu: str, replicas: dict,
                     env: list | None = None) -> dict:
    variant = {"name": precision, "precision": precision}
    return {
        "apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"name": "minilm", "uri": uri, "lazyLoading": {"memoryBudget": "512Mi", "preload": ["minilm"]}},
            "variants": [variant],
            "template": {"image": image, "env": env or [],
                         "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": cpu, "memory": "1Gi"}}},
            "replicas": replicas,
            "scaleToZero": {"enabled": True, "idleSeconds": 3600},
        },
    }


def fresh_namespace(ns: str) -> None:
    kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", timeout=180)
    kubectl("create", "namespace", ns)
    deadline = time.monotonic() + 60
    while kubectl("-n", ns, "get", "serviceaccount", "default", check=False).strip() == "":
        if time.monotonic() > deadline:
            raise SystemExit(f"no default ServiceAccount in {ns}")
        time.sleep(0.5)


def ready_pod(ns: str, name: str) -> dict | None:
    for p in kjson("-n", ns, "get", "pods", "-l", f"elastiserve.dev/modeldeployment={name}")["items"]:
        if p["metadata"].get("deletionTimestamp"):
            continue
        if {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready") == "True":
            return p
    return None


def wait(cond, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


class Timeline:
    """Wall-clock times (time.time()) of what happens to a ModelDeployment's pods and Deployment, from watches."""

    def __init__(self, ns: str, name: str) -> None:
        self.ns, self.name = ns, name
        self.marks: dict[str, float] = {}
        self._procs: list[subprocess.Popen] = []

    def _mark(self, key: str) -> None:
        self.marks.setdefault(key, time.time())

    def _watch(self, kind: str, on) -> None:
        proc = subprocess.Popen(["kubectl", "-n", self.ns, "get", kind, "-l", f"elastiserve.dev/modeldeployment={self.name}",
                                 "--watch", "-o", "json", "--output-watch-events"], stdout=subprocess.PIPE, text=True)
        self._procs.append(proc)

        def run():
            dec, buf = json.JSONDecoder(), ""
            assert proc.stdout is not None
            for line in proc.stdout:
                buf += line
                try:
                    ev, _ = dec.raw_decode(buf.strip())
                except ValueError:
                    continue
                buf = ""
                on(ev.get("object", {}))

        threading.Thread(target=run, daemon=True).start()

    def start(self) -> Timeline:
        def deploy(obj):
            if obj.get("spec", {}).get("replicas", 0) >= 1:
                self._mark("decided")

        def pod(obj):
            self._mark("pod_created")
            for s in obj.get("status", {}).get("containerStatuses", []):
                if "running" in s.get("state", {}):
                    self._mark("container_running")
            if {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}.get("Ready") == "True":
                self._mark("pod_ready")

        self._watch("deployments", deploy)
        self._watch("pods", pod)
        time.sleep(1.5)  # both watches listed (their initial state is before t0)
        return self

    def stop(self) -> dict[str, float]:
        for p in self._procs:
            p.terminate()
            p.wait(timeout=10)
        return self.marks


_LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (\S+): (.*)$")


def server_log(ns: str, pod: str, previous: bool = False) -> dict:
    """The server's own phases from its log: when it served, each download, the load, Ready."""
    text = kubectl("-n", ns, "logs", pod, *(["--previous"] if previous else []))
    out: dict = {"downloads": {}}
    for line in text.splitlines():
        m = _LOG_TS.match(line)
        if not m:
            continue
        ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc).timestamp()
        msg = m.group(3)
        if msg.startswith("serving "):
            out.setdefault("serving", ts)
        elif (d := re.match(r"artifact cache: downloaded (\S+) \((\d+) bytes.*\) in ([\d.]+)s", msg)):
            out["downloads"][d.group(1).rsplit("/", 1)[1]] = float(d.group(3))
        elif (d := re.match(r"loaded \S+ version \S+ in ([\d.]+)s", msg)):
            out["load_s"] = float(d.group(1))
        elif msg.startswith("ready"):
            out.setdefault("ready", ts)
    return out


# ------------------------------------------------------------------ load


def embed_once(host: str, port: int, conn: http.client.HTTPConnection | None = None,
               headers: dict | None = None) -> tuple[int, float]:
    body = json.dumps({"texts": [SENTENCE]})
    t = time.perf_counter()
    c = conn or http.client.HTTPConnection(host, port, timeout=300)
    c.request("POST", "/v1/models/minilm:embed", body=body, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    r.read()
    if conn is None:
        c.close()
    return r.status, time.perf_counter() - t


def closed_loop(host: str, port: int, concurrency: int, seconds: float) -> dict:
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    errors = 0

    def worker():
        nonlocal errors
        conn = http.client.HTTPConnection(host, port, timeout=30)
        while time.perf_counter() < stop:
            try:
                status, dt = embed_once(host, port, conn)
            except OSError:
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
                continue
            if status == 200:
                lat.append(dt)
            else:
                errors += 1
        conn.close()

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    lat.sort()
    p95 = lat[max(0, int(0.95 * len(lat)) - 1)] if lat else float("nan")
    return {"concurrency": concurrency, "rps": round(len(lat) / wall, 2), "p50_ms": round(statistics.median(lat) * 1000, 1)
            if lat else None, "p95_ms": round(p95 * 1000, 1), "errors": errors}


# ------------------------------------------------------------------ parts


def open_loop(host: str, port: int, rate: float, seconds: float) -> dict:
    """Poisson arrivals at ``rate`` req/s for ``seconds`` (``elastiserve.loadgen``, pooled connections):
    the latency a pod gives traffic that does not wait for it, unlike the closed loop's clients."""
    import asyncio

    from elastiserve.loadgen import LoadGen

    sys.path.insert(0, str(REPO / "tests"))
    from support.real_node import POD_CIDR

    gen = LoadGen("bench/lm", "minilm", [f"http://{host}:{port}"], None, lambda _t: rate, seconds, seed=11,
                  local_networks=(POD_CIDR,))
    t0 = time.perf_counter()
    asyncio.run(gen.run())
    s = gen.stats.summary(time.perf_counter() - t0)
    return {"offered_rps": round(rate, 2), "rps": s["ok_per_second"], "p50_ms": s["latency_ms"]["p50"],
            "p95_ms": s["latency_ms"]["p95"], "errors": sum(gen.stats.errors.values())}


OPEN_LOOP_SHARES = (0.5, 0.6, 0.7, 0.8, 0.9)
"""Open-loop rates tried, as shares of the closed loop's saturation throughput."""


def measure_capacity(image: str, store: str, precision: str, cpu: str, seconds: float, p95_ms: float,
                     open_seconds: float = 30.0) -> dict:
    """A pod's saturation throughput (closed loop, 1-8 clients) and its capacity AT the objective: the highest
    open-loop Poisson rate (``OPEN_LOOP_SHARES`` of the saturation) whose p95 stays within ``p95_ms`` without
    errors. The closed loop's best rate is not a capacity: one client already keeps a 300m pod at its quota."""
    ns = f"bench-capacity-{precision}"
    fresh_namespace(ns)
    t = time.monotonic()
    kubectl("apply", "-f", "-", input=json.dumps(model_deployment(ns, "lm", store, image, precision=precision, cpu=cpu,
                                                                   replicas={"min": 1, "max": 1})))
    pod = wait(lambda: ready_pod(ns, "lm"), 300, f"a Ready {precision} pod", interval=1)
    ready_s = time.monotonic() - t
    ip = pod["status"]["podIP"]
    for _ in range(5):  # warm-up
        embed_once(ip, 8080)
    levels = [closed_loop(ip, 8080, c, seconds) for c in (1, 2, 4, 8)]
    saturation = max((lv["rps"] for lv in levels if lv["errors"] == 0), default=0.0)
    sweep = []
    for share in OPEN_LOOP_SHARES:
        sweep.append(open_loop(ip, 8080, share * saturation, open_seconds))
        log(f"capacity {precision}: open loop {sweep[-1]}")
        if sweep[-1]["p95_ms"] is None or sweep[-1]["p95_ms"] > p95_ms or sweep[-1]["errors"]:
            break  # past the objective: higher rates only queue more
    ok = [lv for lv in sweep if lv["p95_ms"] is not None and lv["p95_ms"] <= p95_ms and lv["errors"] == 0]
    kubectl("delete", "namespace", ns, "--wait=false")
    res = {"cpu_limit": cpu, "created_to_ready_s": round(ready_s, 1), "levels": levels, "open_loop": sweep,
           "saturation_rps": saturation,
           "capacity_rps_at_p95": max((lv["offered_rps"] for lv in ok), default=0.0)}
    log(f"capacity {precision}: {res['capacity_rps_at_p95']} req/s at p95 <= {p95_ms:g} ms (open loop; saturation "
        f"{saturation} req/s closed loop)")
    return res


def measure_cold(image: str, store: str, precision: str, cpu: str) -> dict:
    ns = f"bench-cold-{precision}"
    fresh_namespace(ns)
    kubectl("apply", "-f", "-", input=json.dumps(model_deployment(ns, "lm", store, image, precision=precision, cpu=cpu,
                                                                   replicas={"min": 0, "max": 1})))
    wait(lambda: kjson("-n", ns, "get", "modeldeployment", "lm").get("status", {}).get("routing") == "activator",
         90, "routing to the activator")
    act = kjson("-n", SYSTEM_NS, "get", "service", f"{RELEASE}-elastiserve-activator")["spec"]["clusterIP"]
    tl = Timeline(ns, "lm").start()
    t0 = time.time()
    status, total = embed_once(act, 80, headers={"Host": f"lm.{ns}.svc"})
    marks = tl.stop()
    pod = ready_pod(ns, "lm")
    srv = server_log(ns, pod["metadata"]["name"]) if pod else {}
    kubectl("delete", "namespace", ns, "--wait=false")
    r = lambda a, b: round(b - a, 2) if a and b else None  # noqa: E731
    res = {"status": status, "total_s": round(total, 2),
           "decide_s": r(t0, marks.get("decided")),
           "pod_start_s": r(marks.get("decided"), marks.get("container_running")),
           "server_start_s": r(marks.get("container_running"), srv.get("serving")),
           "model_load_s": r(srv.get("serving"), srv.get("ready")),
           "readiness_probe_s": r(srv.get("ready"), marks.get("pod_ready")),
           "rest_s": r(marks.get("pod_ready"), t0 + total),
           "downloads_s": srv.get("downloads"), "load_s": srv.get("load_s")}
    log(f"cold start {precision}: {res}")
    return res


def measure_s3(image: str, model_dir: Path, precision: str, cpu: str, aws: dict) -> dict:
    ns = f"bench-s3-{precision}"
    fresh_namespace(ns)
    env = [{"name": k, "value": v} for k, v in aws.items()]
    md = model_deployment(ns, "lm", "s3://bench/minilm/v1", image, precision=precision, cpu=cpu,
                          replicas={"min": 1, "max": 1}, env=env)
    tl = Timeline(ns, "lm").start()
    t0 = time.time()
    kubectl("apply", "-f", "-", input=json.dumps(md))
    pod = wait(lambda: ready_pod(ns, "lm"), 300, f"a Ready {precision} pod from S3", interval=0.2)
    ip = pod["status"]["podIP"]
    status, first = embed_once(ip, 8080)
    t_first = time.time()
    marks = tl.stop()
    name = pod["metadata"]["name"]
    srv = server_log(ns, name)
    downloads = sum(srv["downloads"].values())
    session = srv["load_s"] - downloads
    r = lambda a, b: round(b - a, 2) if a and b else None  # noqa: E731
    res = {"status": status, "total_s": round(t_first - t0, 2),
           "operator_s": r(t0, marks.get("pod_created")),
           "pod_start_s": r(marks.get("pod_created"), marks.get("container_running")),
           "server_start_s": r(marks.get("container_running"), srv.get("serving")),
           "load_s": srv["load_s"], "download_s": round(downloads, 3), "downloads_s": srv["downloads"],
           "session_s": round(session, 3),
           "ready_to_first_inference_s": r(srv.get("ready"), t_first), "first_inference_s": round(first, 3)}
    # The kubelet restarts a killed container in the same pod: its emptyDir (the artifact cache) stays.
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    procs = [p for p in Path("/sys/fs/cgroup/cpu/kubepods").glob(f"**/pod{pod['metadata']['uid']}/{cid}/cgroup.procs")]
    t_kill = time.time()
    for pid in procs[0].read_text().split():
        os.kill(int(pid), signal.SIGKILL)

    def restarted_ready():
        p = kjson("-n", ns, "get", "pod", name)
        st = p["status"]["containerStatuses"][0]
        return st["restartCount"] > restarts and st.get("ready")

    wait(restarted_ready, 300, "the restarted container Ready", interval=0.2)
    status2, _ = embed_once(ip, 8080)
    t_first2 = time.time()
    warm = server_log(ns, name)
    kubectl("delete", "namespace", ns, "--wait=false")
    res.update(restart_status=status2, restart_total_s=round(t_first2 - t_kill, 2),
               warm_load_s=warm.get("load_s"),
               warm_downloads=warm["downloads"])
    log(f"s3 {precision}: {res}")
    return res


# ------------------------------------------------------------------ setup (shared with bench/live.py)


def install_chart(extra_sets: tuple[str, ...] = ()) -> str:
    """Build (cached) and load the project's image into the real node, ``helm upgrade --install`` the chart from
    it; returns the image. ``extra_sets``: more ``--set`` values (e.g. ``operator.prometheusUrl=...``)."""
    image = sh(str(REPO / "hack" / "cluster.sh"), "image", timeout=3600).strip().splitlines()[-1]
    log(f"image {image}; installing the chart")
    repo, tag = image.rsplit(":", 1)
    sets = [f"image.repository={repo}", f"image.tag={tag}", "image.pullPolicy=Never",
            # a cold start on this loaded 2-core machine can exceed the chart's default 30 s hold: give it 180 s
            "activator.timeoutSeconds=180", *extra_sets]
    sh("helm", "upgrade", "--install", RELEASE, str(REPO / "charts" / "elastiserve"), "-n", SYSTEM_NS,
       "--create-namespace", *[x for v in sets for x in ("--set", v)], "--wait", "--timeout", "300s", timeout=400)
    return image


def serve_model_store() -> tuple[Callable[[], None], str, Path]:
    """The MiniLM folder (fp32 + INT8, built into the model cache if needed) served over HTTP on the node's bridge
    address (reachable by the pods only): (a stop function, the store URI for a ModelDeployment, the folder)."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.real_node import serve_directory

    model_dir = ensure_model("int8", log)
    base, stop = serve_directory(model_dir.parent, GATEWAY)
    return stop, f"{base}/{model_dir.name}", model_dir


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="capacity,cold,s3")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per concurrency level")
    ap.add_argument("--cpu", default="500m", help="CPU limit of the model-server pod")
    ap.add_argument("--p95-ms", type=float, default=200.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    parts = set(a.only.split(","))
    if not os.environ.get("KUBECONFIG"):
        raise SystemExit('no KUBECONFIG: run `eval "$(hack/cluster.sh env)"` for a cluster with a real node')
    if not kjson("get", "node", "elastiserve-node"):
        raise SystemExit("no real node (ELASTISERVE_NODES=0 ELASTISERVE_REAL_NODE=1 hack/cluster.sh up)")
    image = install_chart()
    stop_store, store, model_dir = serve_model_store()
    result: dict = {"cpu_limit": a.cpu, "p95_objective_ms": a.p95_ms, "load_average": os.getloadavg()}
    precisions = a.precisions.split(",")
    if "capacity" in parts:
        result["capacity"] = {p: measure_capacity(image, store, p, a.cpu, a.seconds, a.p95_ms) for p in precisions}
    if "cold" in parts:
        result["cold_start_via_activator"] = {p: measure_cold(image, store, p, a.cpu) for p in precisions}
    if "s3" in parts:
        state = Path(tempfile.mkdtemp(prefix="es-bench-s3-")) / "s3"
        env = {**os.environ, "ELASTISERVE_S3_DIR": str(state), "ELASTISERVE_S3_IP": GATEWAY}
        subprocess.run([str(REPO / "hack" / "s3.sh"), "up"], env=env, check=True, timeout=120)
        try:
            aws = {}
            for line in subprocess.run([str(REPO / "hack" / "s3.sh"), "env"], env=env, check=True, capture_output=True,
                                       text=True).stdout.splitlines():
                k, _, v = line.removeprefix("export ").partition("=")
                aws[k] = v.strip("'\"")
            from elastiserve.serving import paths
            from elastiserve.serving.remote import Remote, S3Settings
            fs = Remote(S3Settings(endpoint_url=aws["AWS_ENDPOINT_URL"], region=aws["AWS_REGION"],
                                   access_key_id=aws["AWS_ACCESS_KEY_ID"],
                                   secret_access_key=aws["AWS_SECRET_ACCESS_KEY"])).fs("s3://bench")
            if not fs.exists("bench"):
                fs.mkdir("bench")
            for f in (paths.VARIANT_FILES["fp32"], paths.VARIANT_FILES["int8"], paths.TOKENIZER_FILE, paths.CONFIG_FILE):
                fs.put_file(str(model_dir / f), f"bench/minilm/v1/{f}")
            result["s3_scale_up"] = {p: measure_s3(image, model_dir, p, a.cpu, aws) for p in precisions}
        finally:
            subprocess.run([str(REPO / "hack" / "s3.sh"), "down"], env=env, check=False, timeout=120)
    stop_store()
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
