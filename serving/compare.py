"""fp32 vs INT8 vs pruned: size, load time, latency and throughput per batch size, embedding quality."""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import paths
from .runtime import Embedder, cosine_rows, dir_tokenizer, make_session
from .sentences import eval_sentences, workload_sentences


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    except OSError:
        pass
    return []


def default_variants(model_dir: Path) -> list[str]:
    """fp32 first, then every other variant whose file is in ``model_dir`` (int8 when none is)."""
    others = [v for v in paths.VARIANT_FILES if v != "fp32" and (Path(model_dir) / paths.VARIANT_FILES[v]).exists()]
    return ["fp32"] + (others or ["int8"])


def _load(path: Path, tok, threads: int | None) -> tuple[Embedder, float]:
    t0 = time.perf_counter()
    e = Embedder(make_session(path, threads), tok, name=path.name)
    return e, time.perf_counter() - t0


def compare_variants(model_dir: Path | None = None, *, batch_sizes: Sequence[int] = (1, 8, 32), threads: int | None = None,
                     seconds_per_case: float = 1.5, min_reps: int = 5, sentences: Sequence[str] | None = None,
                     variants: Sequence[str] | None = None) -> dict:
    """Measure every variant present in ``model_dir``; speedups are relative to the first one.

    ``variants`` default: fp32 plus whichever of the other variants (int8, pruned) exist in the
    folder (at least one besides fp32 is required); explicitly named variants must all exist.

    Runs of the variants are interleaved (round robin) so background load hits them alike; the
    reported latency is the median per call, throughput = batch / median latency.
    """
    model_dir = Path(model_dir) if model_dir else paths.model_dir()
    if variants is None:
        variants = default_variants(model_dir)
    unknown = [v for v in variants if v not in paths.VARIANT_FILES]
    if unknown:
        raise ValueError(f"unknown variants {unknown} (known: {', '.join(paths.VARIANT_FILES)})")
    tok = dir_tokenizer(model_dir)
    files = {v: model_dir / paths.VARIANT_FILES[v] for v in variants}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise FileNotFoundError(f"missing model files: {missing} "
                                "(run `elastiserve model build` / `quantize` / `prune`)")

    result: dict = {
        "model_dir": str(model_dir),
        "threads": threads if threads is not None else int(os.environ.get("ELASTISERVE_INTRA_OP_THREADS", 0) or 0),
        "cpu": {"machine": platform.machine(), "cores": os.cpu_count(), "flags": cpu_flags(),
                "loadavg_at_start": list(os.getloadavg())},
        "variants": {},
    }
    embedders: dict[str, Embedder] = {}
    for v, f in files.items():
        loads = []
        for _ in range(3):  # load time: median of 3 (the first also reads the file from disk/page cache)
            e, dt = _load(f, tok, threads)
            loads.append(dt)
            del e
            gc.collect()
        embedders[v], _ = _load(f, tok, threads)
        result["variants"][v] = {"file": f.name, "bytes": f.stat().st_size, "load_seconds": float(np.median(loads)),
                                 "load_seconds_all": loads, "batches": {}}

    wl = workload_sentences(max(batch_sizes))
    for bs in batch_sizes:
        batch = wl[:bs]
        for e in embedders.values():
            e.embed(batch)  # warm-up
        times: dict[str, list[float]] = {v: [] for v in embedders}
        deadline = time.perf_counter() + seconds_per_case * len(embedders)
        while time.perf_counter() < deadline or min(len(t) for t in times.values()) < min_reps:
            for v, e in embedders.items():
                t0 = time.perf_counter()
                e.embed(batch)
                times[v].append(time.perf_counter() - t0)
        for v, ts in times.items():
            ts_a = np.asarray(ts)
            med = float(np.median(ts_a))
            result["variants"][v]["batches"][str(bs)] = {
                "reps": len(ts), "latency_ms_p50": med * 1e3, "latency_ms_p90": float(np.percentile(ts_a, 90)) * 1e3,
                "latency_ms_min": float(ts_a.min()) * 1e3, "throughput_per_s": bs / med,
            }

    sents = list(sentences or eval_sentences())
    base_name = variants[0]
    base = embedders[base_name]
    refs = {bs: base.embed_batched(sents, bs) for bs in (1, 32)}
    for v, e in embedders.items():
        info = result["variants"][v]
        b0 = result["variants"][base_name]
        info["size_ratio_vs_" + base_name] = b0["bytes"] / info["bytes"]
        info["speedup_vs_" + base_name] = {
            bs: b0["batches"][bs]["latency_ms_p50"] / info["batches"][bs]["latency_ms_p50"] for bs in info["batches"]
        }
        # best-case ratio: less sensitive to other processes on a shared machine
        info["speedup_min_vs_" + base_name] = {
            bs: b0["batches"][bs]["latency_ms_min"] / info["batches"][bs]["latency_ms_min"] for bs in info["batches"]
        }
        q = {}
        for bs, ref in refs.items():
            cos = cosine_rows(ref, e.embed_batched(sents, bs))
            q[f"batch{bs}"] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                               "worst_sentence": sents[int(np.argmin(cos))][:60]}
        info["quality_vs_" + base_name] = q
    result["sentences"] = len(sents)
    result["cpu"]["loadavg_at_end"] = list(os.getloadavg())
    return result


def format_table(res: dict) -> str:
    variants = list(res["variants"])
    base = variants[0]
    rows = [["metric"] + variants]
    v0 = res["variants"]
    rows.append(["size MB"] + [f"{v0[v]['bytes'] / 1e6:.2f}" for v in variants])
    rows.append([f"size ratio vs {base}"] + [f"{v0[v]['size_ratio_vs_' + base]:.2f}x" for v in variants])
    rows.append(["load s (median of 3)"] + [f"{v0[v]['load_seconds']:.3f}" for v in variants])
    for bs in v0[base]["batches"]:
        rows.append([f"batch {bs} p50 ms"] + [f"{v0[v]['batches'][bs]['latency_ms_p50']:.1f}" for v in variants])
        rows.append([f"batch {bs} seq/s"] + [f"{v0[v]['batches'][bs]['throughput_per_s']:.0f}" for v in variants])
        rows.append([f"batch {bs} speedup (p50)"] + [f"{v0[v]['speedup_vs_' + base][bs]:.2f}x" for v in variants])
        rows.append([f"batch {bs} speedup (min)"] + [f"{v0[v]['speedup_min_vs_' + base][bs]:.2f}x" for v in variants])
    for key in v0[base]["quality_vs_" + base]:
        rows.append([f"min cos ({key})"] + [f"{v0[v]['quality_vs_' + base][key]['min_cosine']:.5f}" for v in variants])
        rows.append([f"mean cos ({key})"] + [f"{v0[v]['quality_vs_' + base][key]['mean_cosine']:.5f}" for v in variants])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"(threads={res['threads'] or 'ORT default'}, {res['cpu']['cores']} cores, "
                 f"load average {res['cpu']['loadavg_at_start'][0]:.1f}, {res['sentences']} sentences for quality)")
    return "\n".join(lines)


def dumps(res: dict) -> str:
    return json.dumps(res, indent=2, sort_keys=False, ensure_ascii=False)
