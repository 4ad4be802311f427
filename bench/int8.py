"""INT8 vs fp32 for the MiniLM encoder: size, load time, latency/throughput (batch 1/8/32), quality.

    python bench/int8.py [--methods dynamic,dynamic-plain,static] [--threads 1] [--seconds 1.0]

Builds the fp32 model into the cache if needed, then for every method writes an INT8 variant
into a temporary folder and measures it against fp32 with ``elastiserve.serving.compare``
(interleaved runs, median latency). Methods:

* ``dynamic``:       the shipped recipe (`elastiserve model quantize`): exact outlier rewrite
                     (SmoothQuant-style scales + fp32 outlier channels) then per-channel dynamic INT8
* ``dynamic-plain``: quantize_dynamic per-channel, no rewrite
* ``static``:        QDQ static quantisation calibrated on 64 generated sentences

Prints one JSON document (per-method reports plus a summary against the targets: >= 3.9x
smaller, >= 1.7x faster at batch 32, min cosine >= 0.99).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from elastiserve.serving import paths

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[int8 {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="dynamic,dynamic-plain,static")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (0 = ORT default)")
    ap.add_argument("--seconds", type=float, default=1.0, help="measuring time per variant and batch size")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    from elastiserve.serving.builder import build_model
    from elastiserve.serving.compare import compare_variants, format_table
    from elastiserve.serving.quantize import quantize_model

    src = paths.model_dir(paths.DEFAULT_MODEL_NAME)
    if not (src / paths.VARIANT_FILES["fp32"]).exists():
        log(f"building fp32 model into {src}")
        build_model(src)
    threads = a.threads if a.threads > 0 else None
    result: dict = {"threads": a.threads, "cores": os.cpu_count(), "loadavg_at_start": list(os.getloadavg()),
                    "methods": {}}
    work = Path(tempfile.mkdtemp(prefix="es-int8-"))
    try:
        for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
            d = work / method
            d.mkdir()
            os.symlink(src / paths.VARIANT_FILES["fp32"], d / paths.VARIANT_FILES["fp32"])
            for f in (paths.TOKENIZER_FILE, paths.CONFIG_FILE):
                shutil.copyfile(src / f, d / f)
            kw = {"dynamic": {}, "dynamic-plain": {"smooth": False}, "static": {"method": "static"}}[method]
            log(f"quantising ({method})")
            q = quantize_model(d, **kw)
            log(f"measuring ({method})")
            rep = compare_variants(d, threads=threads, seconds_per_case=a.seconds)
            rep["quantize_seconds"] = q.seconds
            result["methods"][method] = rep
            print(f"== {method} ==\n{format_table(rep)}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for method, rep in result["methods"].items():
        v = rep["variants"]["int8"]
        q = v["quality_vs_fp32"]
        min_cos = min(q["batch1"]["min_cosine"], q["batch32"]["min_cosine"])
        summary[method] = {
            "size_ratio": v["size_ratio_vs_fp32"], "speedup_b1": v["speedup_vs_fp32"]["1"],
            "speedup_b8": v["speedup_vs_fp32"]["8"], "speedup_b32": v["speedup_vs_fp32"]["32"],
            "speedup_b32_min_latency": v["speedup_min_vs_fp32"]["32"],
            "throughput_b32_fp32": rep["variants"]["fp32"]["batches"]["32"]["throughput_per_s"],
            "throughput_b32_int8": v["batches"]["32"]["throughput_per_s"],
            "min_cosine": min_cos, "mean_cosine_b32": q["batch32"]["mean_cosine"],
            "int8_load_s": v["load_seconds"], "fp32_load_s": rep["variants"]["fp32"]["load_seconds"],
            "targets": {"size_ge_3.9x": v["size_ratio_vs_fp32"] >= 3.9, "speedup_b32_ge_1.7x": v["speedup_vs_fp32"]["32"] >= 1.7,
                        "min_cosine_ge_0.99": min_cos >= 0.99},
        }
    result["summary"] = summary
    result["loadavg_at_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
