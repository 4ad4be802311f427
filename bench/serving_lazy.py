"""Lazy sub-model loading under a Zipf workload: RSS vs eager loading, hit rate, hit/miss latency.

    python bench/serving_lazy.py [--models 24] [--resident 4] [--zipf 1.3] [--session 8] [--requests 1000]

Builds (if needed) the MiniLM encoder into the model cache, copies it into a temporary store as
N sub-models, then runs two server subprocesses on loopback, each driven by the same request
sequence from one sequential client:

* lazy:  memory budget = ``resident`` x model size, nothing preloaded, LRU + single flight;
* eager: budget large enough for all, every sub-model preloaded before ready.

The workload: sessions pick a model by Zipf popularity (exponent ``--zipf``) and send a
geometric number of requests (mean ``--session``) of 1-8 sentences each. ``--session 1`` is the
independent-request model; the printed ``hit_rate_grid`` shows the LRU hit rate for several
exponents and session lengths (same cache code, fake loader) so the choice can be judged.
RSS is read from /proc/<pid>/status of each server (VmRSS sampled every 50 ms, VmHWM = peak).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from elastiserve.serving import paths
from elastiserve.serving.builder import ensure_model

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[serving_lazy {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def zipf_requests(n_models: int, s: float, mean_session: float, n_requests: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_models + 1) ** s
    p /= p.sum()
    order = rng.permutation(n_models)  # popularity rank -> model index
    out: list[int] = []
    while len(out) < n_requests:
        m = int(order[rng.choice(n_models, p=p)])
        k = int(rng.geometric(1.0 / mean_session)) if mean_session > 1 else 1
        out.extend([m] * k)
    return out[:n_requests]


def simulate_hit_rate(n_models: int, resident: int, s: float, mean_session: float, n: int = 10000, seed: int = 1) -> float:
    """LRU hit rate from the real ModelCache with a fake loader (no models, no sleeping)."""
    from elastiserve.serving.loader import ModelCache, ModelSource

    seq = zipf_requests(n_models, s, mean_session, n, seed)
    names = [f"m{i:02d}" for i in range(n_models)]
    cache = ModelCache({nm: ModelSource(nm, f"/x/{nm}") for nm in names}, budget_bytes=resident,
                       loader=lambda src, v: object(), sizer=lambda src, v: 1, trim_after_unload=False)

    async def run() -> float:
        for i in seq:
            await cache.get(names[i])
        return cache.stats.hits / (cache.stats.hits + cache.stats.misses)

    return asyncio.run(run())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = proc_status(self.pid).get("VmRSS")
            if rss:
                self.samples.append(rss)
            self._halt.wait(self.every)

    def stop(self) -> list[int]:
        self._halt.set()
        self.join()
        return self.samples


def run_server(label: str, store: Path, names: list[str], args: list[str], seq: list[int], texts: list[str],
               threads: int, seed: int) -> dict:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "elastiserve.serving.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--store", str(store), "--model", ",".join(names), "--idle-unload-seconds", "0",
           "--intra-op-threads", str(threads), "--infer-workers", "1", *args]
    logf = tempfile.NamedTemporaryFile(prefix=f"es-{label}-", suffix=".log", delete=False)
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0)
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{label} server exited: {Path(logf.name).read_text()[-2000:]}")
            try:
                if client.get("/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} server not ready")
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        ready_s = time.perf_counter() - t_start
        log(f"{label}: ready after {ready_s:.1f}s")
        rss_ready = proc_status(proc.pid)
        rng = np.random.default_rng(seed)
        lat = {"hit": [], "miss": []}
        codes: dict[int, int] = {}
        t0 = time.perf_counter()
        for i in seq:
            k = int(rng.integers(1, 9))
            batch = [texts[j] for j in rng.integers(0, len(texts), size=k)]
            t = time.perf_counter()
            r = client.post(f"/v1/models/{names[i]}:embed", json={"texts": batch})
            dt = time.perf_counter() - t
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                lat[r.headers["x-elastiserve-cache"]].append(dt)
        wall = time.perf_counter() - t0
        metrics = client.get("/metrics").text
        rss_end = proc_status(proc.pid)
    finally:
        # stop the server first, whatever failed above
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        samples = sampler.stop()
        client.close()
        logf.close()
        os.unlink(logf.name)

    def pct(xs, q):
        return float(np.percentile(xs, q) * 1e3) if xs else None

    load_sum = load_cnt = 0.0
    for line in metrics.splitlines():
        if line.startswith("elastiserve_model_load_duration_seconds_sum"):
            load_sum += float(line.rsplit(" ", 1)[1])
        elif line.startswith("elastiserve_model_load_duration_seconds_count"):
            load_cnt += float(line.rsplit(" ", 1)[1])
    n_ok = len(lat["hit"]) + len(lat["miss"])
    return {
        "ready_seconds": ready_s,
        "requests": len(seq), "status_codes": {str(k): v for k, v in codes.items()}, "wall_seconds": wall,
        "hit_rate": len(lat["hit"]) / n_ok if n_ok else None, "hits": len(lat["hit"]), "misses": len(lat["miss"]),
        "hit_ms_p50": pct(lat["hit"], 50), "hit_ms_p99": pct(lat["hit"], 99),
        "miss_ms_p50": pct(lat["miss"], 50), "miss_ms_p99": pct(lat["miss"], 99),
        "server_loads": int(load_cnt), "server_load_ms_mean": (load_sum / load_cnt * 1e3) if load_cnt else None,
        "rss_ready_bytes": rss_ready.get("VmRSS"), "rss_end_bytes": rss_end.get("VmRSS"),
        "rss_peak_bytes": rss_end.get("VmHWM"),
        "rss_sampled_max_bytes": max(samples) if samples else None,
        "rss_sampled_mean_bytes": float(np.mean(samples)) if samples else None,
    }


def cold_load_times(store: Path, names: list[str], variant: str, threads: int) -> dict:
    """Load sub-models one after the other in a fresh subprocess, each a different file (as misses
    are): the first includes ORT's one-time initialisation, the rest are steady-state loads."""
    code = (
        "import time,json\n"
        "from elastiserve.serving.loader import ModelStore\n"
        f"store=ModelStore([{str(store)!r}])\n"
        "ts=[]\n"
        f"for n in {names!r}:\n"
        "    src=store.resolve(n)\n"
        f"    t=time.perf_counter(); m=src.load({variant!r}, {threads}); ts.append(time.perf_counter()-t); del m\n"
        "print(json.dumps(ts))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ts = json.loads(out.stdout.strip().splitlines()[-1])
    return {"first_in_process_s": ts[0], "steady_s": ts[1:], "steady_p50_s": float(np.median(ts[1:]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=24)
    ap.add_argument("--resident", type=int, default=4)
    ap.add_argument("--zipf", type=float, default=1.3)
    ap.add_argument("--session", type=float, default=8.0, help="mean requests per session (1 = independent)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--variant", choices=["fp32", "int8"], default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads in the servers")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-eager", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    a = ap.parse_args()

    src = ensure_model(a.variant, log)
    art = paths.VARIANT_FILES[a.variant]
    size = (src / art).stat().st_size
    from elastiserve.serving.sentences import workload_sentences

    texts = workload_sentences(200, seed=a.seed)
    names = [f"sub{i:02d}" for i in range(a.models)]
    seq = zipf_requests(a.models, a.zipf, a.session, a.requests, a.seed)
    result: dict = {
        "config": {"models": a.models, "resident_budget_models": a.resident, "zipf_s": a.zipf,
                   "mean_session_requests": a.session, "requests": a.requests, "variant": a.variant,
                   "model_bytes": size, "intra_op_threads": a.threads, "cores": os.cpu_count(),
                   "loadavg_at_start": list(os.getloadavg())},
    }
    log("hit-rate grid (fake loader)")
    result["hit_rate_grid"] = {f"s={s}": {f"session={L}": round(simulate_hit_rate(a.models, a.resident, s, L), 4)
                                          for L in (1, 4, 8)} for s in (1.2, 1.3, 1.5, 2.0)}
    tmp = Path(tempfile.mkdtemp(prefix="es-lazy-store-"))
    try:
        for n in names:  # distinct files (not links), as separate sub-models would be
            (tmp / n).mkdir()
            shutil.copyfile(src / art, tmp / n / art)
            for f in (paths.TOKENIZER_FILE, paths.CONFIG_FILE):
                shutil.copyfile(src / f, tmp / n / f)
        log(f"store with {a.models} x {size / 1e6:.1f} MB in {tmp}")
        result["cold_load"] = cold_load_times(tmp, names[:6], a.variant, a.threads)
        log("lazy run")
        result["lazy"] = run_server("lazy", tmp, names, ["--variant", a.variant, "--memory-budget",
                                                         str(a.resident * size)], seq, texts, a.threads, a.seed)
        if not a.skip_eager:
            log("eager run")
            result["eager"] = run_server("eager", tmp, names, ["--variant", a.variant, "--memory-budget",
                                                               str((a.models + 1) * size), "--preload", "all"],
                                         seq, texts, a.threads, a.seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lazy, cold = result["lazy"], result["cold_load"]["steady_p50_s"]
    summary = {"hit_rate": lazy["hit_rate"], "cold_load_ms_p50": cold * 1e3,
               "cold_load_first_in_process_ms": result["cold_load"]["first_in_process_s"] * 1e3,
               "miss_ms_p50": lazy["miss_ms_p50"], "miss_ms_p99": lazy["miss_ms_p99"],
               "hit_ms_p50": lazy["hit_ms_p50"], "hit_ms_p99": lazy["hit_ms_p99"],
               "server_load_ms_mean": lazy["server_load_ms_mean"],
               "miss_p50_over_cold_load": (lazy["miss_ms_p50"] / (cold * 1e3)) if lazy["miss_ms_p50"] else None}
    if "eager" in result:
        e = result["eager"]
        summary.update({
            "rss_peak_ratio_lazy_over_eager": lazy["rss_peak_bytes"] / e["rss_peak_bytes"],
            "rss_end_ratio_lazy_over_eager": lazy["rss_end_bytes"] / e["rss_end_bytes"],
            "rss_lazy_peak_mb": lazy["rss_peak_bytes"] / 1e6, "rss_eager_peak_mb": e["rss_peak_bytes"] / 1e6,
            "eager_ready_seconds": e["ready_seconds"], "eager_hit_ms_p50": e["hit_ms_p50"],
            "eager_hit_ms_p99": e["hit_ms_p99"],
        })
    summary["targets"] = {
        "rss_le_30pct_of_eager": summary.get("rss_peak_ratio_lazy_over_eager", 1.0) <= 0.30,
        "hit_rate_ge_90pct": (lazy["hit_rate"] or 0) >= 0.90,
        # a miss should cost one load (as the server measured it) plus the normal service time
        "miss_p50_le_one_load_plus_hit": (lazy["miss_ms_p50"] or 0)
        <= (lazy["server_load_ms_mean"] or 0) + (lazy["hit_ms_p50"] or 0),
    }
    result["summary"] = summary
    result["config"]["loadavg_at_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
