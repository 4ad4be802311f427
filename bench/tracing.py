"""What tracing costs the model server: throughput and p95 with tracing off, sampled at 1 % and at 100 %.

    python bench/tracing.py [--variant int8] [--concurrency 4] [--seconds 8] [--rounds 3]

Three `elastiserve serve` processes on loopback serve the MiniLM model (built into the model cache
if needed), one per setting; the traced ones export to a real Jaeger (hack/jaeger.sh) with the SDK's
batch processor, as in production. Each round drives every server in turn with the same closed-loop
load (``--concurrency`` clients, one sentence per request, for ``--seconds``), so drift on a busy
machine hits all three alike; the figures are per-setting medians over the rounds, with ratios to
"off" from the same run. Every request carries a ``traceparent`` whose sampled flag is cleared, so
the server's own sampler decides (parent-based: an unsampled parent is not followed; the ratio
applies to requests that arrive without one). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.devstack import free_port  # noqa: E402

from elastiserve.serving.builder import ensure_model  # noqa: E402

SETTINGS = {"off": None, "sampled_1pct": "0.01", "sampled_100pct": "1.0"}


def log(msg: str) -> None:
    print(f"[tracing] {msg}", file=sys.stderr, flush=True)


def start_jaeger(work: Path) -> tuple[subprocess.Popen, str, str]:
    sh = ROOT / "hack" / "jaeger.sh"
    if subprocess.run([str(sh), "path"], capture_output=True).returncode != 0:
        log("building Jaeger (once)")
        subprocess.run([str(sh), "build"], check=True)
    binary = subprocess.run([str(sh), "path"], check=True, capture_output=True, text=True).stdout.strip()
    otlp, query = free_port(), free_port()
    cfg = work / "jaeger.yaml"
    cfg.write_text(subprocess.run([str(sh), "config", str(otlp), str(query)], check=True, capture_output=True,
                                  text=True).stdout)
    proc = subprocess.Popen([binary, "--config", str(cfg)], stdout=(work / "jaeger.log").open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{query}/api/services", proc)
    return proc, f"http://127.0.0.1:{otlp}", f"http://127.0.0.1:{query}"


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: {url} did not answer within {timeout:.0f} s")


def start_server(model_dir: Path, variant: str, ratio: str | None, otlp: str, work: Path, name: str):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {"ELASTISERVE_INTRA_OP_THREADS": "1"}
    if ratio is not None:
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio, "OTEL_SERVICE_NAME": f"bench-{name}"}
    argv = [sys.executable, "-m", "elastiserve.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--store", str(model_dir.parent), "--model", f"minilm={model_dir}", "--variant", variant,
            "--preload", "minilm"]
    proc = subprocess.Popen(argv, env=env, stdout=(work / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc)
    return proc, f"http://127.0.0.1:{port}"


async def drive(url: str, concurrency: int, seconds: float, root_sampled: bool) -> dict:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["How much does tracing cost?"]}]}
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        async with aiohttp.ClientSession() as session:
            n = 0
            while time.perf_counter() < stop:
                n += 1
                headers = {}
                if not root_sampled:  # an upstream that does not sample: the server must not either
                    headers["traceparent"] = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00"
                t0 = time.perf_counter()
                async with session.post(f"{url}/v2/models/minilm/infer", json=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "throughput_rps": len(latencies) / wall,
            "p50_ms": 1e3 * latencies[len(latencies) // 2], "p95_ms": 1e3 * latencies[int(0.95 * (len(latencies) - 1))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="int8", choices=["fp32", "int8"])
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model_dir = ensure_model(args.variant, log)
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmp:
        work = Path(tmp)
        procs = []
        try:
            jaeger, otlp, query = start_jaeger(work)
            procs.append(jaeger)
            servers = {}
            for name, ratio in SETTINGS.items():
                proc, url = start_server(model_dir, args.variant, ratio, otlp, work, name)
                procs.append(proc)
                servers[name] = url
            runs: dict[str, list[dict]] = {n: [] for n in SETTINGS}
            for r in range(args.rounds):
                for name, url in servers.items():
                    res = asyncio.run(drive(url, args.concurrency, args.seconds, root_sampled=True))
                    runs[name].append(res)
                    log(f"round {r + 1} {name}: {res['throughput_rps']:.1f} req/s, p95 {res['p95_ms']:.1f} ms")
            # Unsampled parents: the server records nothing even at ratio 1.0 (parent-based sampling).
            unsampled = asyncio.run(drive(servers["sampled_100pct"], args.concurrency, args.seconds / 2,
                                          root_sampled=False))
            time.sleep(1.0)  # the batch processor exports every 5 s by default; give Jaeger what is queued
            with urllib.request.urlopen(f"{query}/api/services", timeout=5) as resp:
                services = json.loads(resp.read())["data"]
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    out: dict = {"variant": args.variant, "concurrency": args.concurrency, "seconds": args.seconds,
                 "rounds": args.rounds, "cores": os.cpu_count(), "services_in_jaeger": sorted(services)}
    for name, rs in runs.items():
        out[name] = {k: round(statistics.median(r[k] for r in rs), 2) for k in ("throughput_rps", "p50_ms", "p95_ms")}
        out[name]["errors"] = sum(r["errors"] for r in rs)
    for name in ("sampled_1pct", "sampled_100pct"):
        out[f"{name}_vs_off"] = {
            "throughput": round(out[name]["throughput_rps"] / out["off"]["throughput_rps"], 3),
            "p95": round(out[name]["p95_ms"] / out["off"]["p95_ms"], 3)}
    out["unsampled_parent_at_100pct"] = {k: round(v, 2) for k, v in unsampled.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
