"""fp32 vs INT8 vs structurally pruned MiniLM: size and latency ratios, quality, in one process.

    python bench/pruned.py [--configs L3,L4,L5,L6H8] [--threads 1] [--seconds 1.0] [--sweep] [--out FILE]

Builds the fp32 model into the cache if needed. INT8 is taken from the cache (quantised there
if missing). For every pruning config (``L<layers>`` with the default layer choice, optional
``H<heads>`` per layer, e.g. ``L3``, ``L6H8``, ``L3H8``) a temporary folder gets fp32 + INT8
(symlinks) + its ``model.pruned.onnx``, and ``elastiserve.serving.compare`` measures the three
with interleaved runs (median latency, and the min-latency ratio that background load disturbs
least). ``--sweep`` adds the cosine vs fp32 of every layer-selection strategy for 1..5 layers and
of head pruning (quality only, no timing): the figures behind the default strategy.

Prints one JSON document; the summary holds ratios against fp32 (no absolute targets).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from elastiserve.serving import paths

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[pruned {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_config(text: str) -> tuple[int, int | None]:
    m = re.fullmatch(r"L(\d+)(?:H(\d+))?", text.strip())
    if not m:
        raise SystemExit(f"bad config {text!r}: expected L<layers>[H<heads>], e.g. L3 or L6H8")
    return int(m.group(1)), (int(m.group(2)) if m.group(2) else None)


def sweep(src: Path) -> dict:
    """Cosine vs fp32 of each layer strategy (1..5 layers) and of head pruning, on eval + reference sentences."""
    from elastiserve.serving.builder import BertConfig, load_safetensors
    from elastiserve.serving.prune import STRATEGIES, build_pruned_graph, select_layers
    from elastiserve.serving.runtime import Embedder, cosine_rows, dir_tokenizer, make_session
    from elastiserve.serving.sentences import eval_sentences

    cfg = BertConfig.from_json(paths.source_model_dir() / "config.json")
    w = load_safetensors(paths.source_model_dir() / "model.safetensors")
    tok = dir_tokenizer(src)
    sets = {"eval": eval_sentences()}
    ref = paths.reference_embeddings_path()
    if ref.exists():
        sets["reference"] = json.loads(ref.read_text())["sentences"]
    fp32 = Embedder.from_dir(src)
    base = {k: fp32.embed_batched(s, 32) for k, s in sets.items()}

    def quality(kl, heads=None) -> dict:
        m, _ = build_pruned_graph(cfg, w, kl, heads)
        e = Embedder(make_session(m.SerializeToString()), tok)
        out = {}
        for k, s in sets.items():
            cos = cosine_rows(base[k], e.embed_batched(s, 32))
            out[k] = {"mean_cosine": round(float(cos.mean()), 4), "min_cosine": round(float(cos.min()), 4)}
        return out

    res: dict = {"layers": {}, "heads": {}}
    for n in range(1, cfg.num_hidden_layers):
        res["layers"][str(n)] = {}
        seen: dict[tuple, dict] = {}
        for s in STRATEGIES:
            kl = tuple(select_layers(cfg.num_hidden_layers, n, s))
            if kl not in seen:
                log(f"sweep: {n} layers, {s} {list(kl)}")
                seen[kl] = quality(list(kl))
            res["layers"][str(n)][s] = {"layers_kept": list(kl), **seen[kl]}
    all_layers = list(range(cfg.num_hidden_layers))
    for h in (10, 8, 6, 4):
        log(f"sweep: all layers, {h} heads")
        res["heads"][str(h)] = quality(all_layers, h)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="L3", help="comma-separated L<layers>[H<heads>] (default L3)")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (0 = ORT default)")
    ap.add_argument("--seconds", type=float, default=1.0, help="measuring time per variant and batch size")
    ap.add_argument("--sweep", action="store_true", help="also the quality of every layer strategy / head count")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    configs = [parse_config(c) for c in a.configs.split(",") if c.strip()]

    from elastiserve.serving.builder import build_model
    from elastiserve.serving.compare import compare_variants, format_table
    from elastiserve.serving.prune import prune_model
    from elastiserve.serving.quantize import quantize_model

    src = paths.model_dir(paths.DEFAULT_MODEL_NAME)
    if not (src / paths.VARIANT_FILES["fp32"]).exists():
        log(f"building fp32 model into {src}")
        build_model(src)
    if not (src / paths.VARIANT_FILES["int8"]).exists():
        log(f"quantising into {src}")
        quantize_model(src)
    threads = a.threads if a.threads > 0 else None
    result: dict = {"threads": a.threads, "cores": os.cpu_count(), "loadavg_at_start": list(os.getloadavg()),
                    "configs": {}}
    work = Path(tempfile.mkdtemp(prefix="es-pruned-"))
    try:
        for layers, heads in configs:
            key = f"L{layers}" + (f"H{heads}" if heads else "")
            d = work / key
            d.mkdir()
            for v in ("fp32", "int8"):
                os.symlink(src / paths.VARIANT_FILES[v], d / paths.VARIANT_FILES[v])
            for f in (paths.TOKENIZER_FILE, paths.CONFIG_FILE):
                shutil.copyfile(src / f, d / f)
            log(f"pruning ({key})")
            p = prune_model(d, layers=layers, heads=heads)
            log(f"measuring ({key})")
            rep = compare_variants(d, threads=threads, seconds_per_case=a.seconds, variants=("fp32", "int8", "pruned"))
            rep["prune"] = {"layers_kept": p.layers_kept, "heads_per_layer": p.heads_per_layer, "seconds": p.seconds}
            result["configs"][key] = rep
            print(f"== {key} ==\n{format_table(rep)}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for key, rep in result["configs"].items():
        row = {"layers_kept": rep["prune"]["layers_kept"], "heads_per_layer": rep["prune"]["heads_per_layer"]}
        for v in ("int8", "pruned"):
            info = rep["variants"][v]
            q = info["quality_vs_fp32"]
            row[v] = {
                "size_ratio": round(info["size_ratio_vs_fp32"], 3),
                "speedup_p50": {bs: round(x, 2) for bs, x in info["speedup_vs_fp32"].items()},
                "speedup_min_latency": {bs: round(x, 2) for bs, x in info["speedup_min_vs_fp32"].items()},
                "load_ratio": round(rep["variants"]["fp32"]["load_seconds"] / info["load_seconds"], 2),
                "mean_cosine_b32": round(q["batch32"]["mean_cosine"], 4),
                "min_cosine": round(min(q["batch1"]["min_cosine"], q["batch32"]["min_cosine"]), 4),
                "quality_cost": round(1 - q["batch32"]["mean_cosine"], 4),
            }
        summary[key] = row
    result["summary"] = summary
    if a.sweep:
        result["sweep"] = sweep(src)
    result["loadavg_at_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
