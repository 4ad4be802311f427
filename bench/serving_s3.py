"""Cold start of a sub-model from S3, split into its parts, and an evicted model's reload from the disk cache
vs from the bucket - fp32 and INT8 MiniLM, side by side in one run.

    hack/s3.sh build && python bench/serving_s3.py [--repeats 7] [--out bench-s3.json]

Starts SeaweedFS on loopback with ``hack/s3.sh up`` (its own state folder, stopped with ``down`` at the end),
uploads the MiniLM folder (built into the model cache if needed) to ``s3://bench/minilm/v1/``, then for each
variant, ``--repeats`` times, with the server's real code (``ArtifactCache`` + ``ModelSource.load``):

* ``download_s``: the three files (model, tokenizer, manifest) fetched into an EMPTY disk cache (cold disk;
  the bucket's data is in the S3 server's page cache after the upload: a best case for the bucket);
* ``cache_hit_s``: the same fetch against the warm disk cache (a HEAD per file, no body);
* ``session_s``: ONNX Runtime session (graph optimized online, as without the cache) + tokenizer from the
  local files; ``derive_s``: writing ORT's optimized graph next to the artifact (what the server does in the
  background after a first load); ``session_optimized_s``: tokenizer + the session from that optimized graph
  with graph optimizations off (what a reload does) - its embeddings are checked to be identical to the
  online session's;
* ``first_inference_s``: one request of 8 sentences on the new session;
* ``reload_from_bucket_s`` / ``reload_from_disk_s``: what an evicted sub-model costs to come back, end to end
  (``ModelSource.load``) with an empty disk cache (download, session) vs a warm one (HEADs, the optimized graph
  the first load had written in the background: the bench waits for that job, ``background_derive_s``, before
  the reload); ``reload_*_online_s``: the same without the optimized graph (the session optimizes online
  from the artifact every time: the design before it was cached), side by side; ``reload_in_memory_s``: the
  pre-cache path (the whole artifact read into memory from S3, session from bytes), for reference.

Ratios (medians) compare within this run. Pod start (image pull, container start) is not included: this
runs on the local server process; real pods are another piece of work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from elastiserve.serving.builder import ensure_model

REPO = Path(__file__).resolve().parents[1]
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[serving_s3 {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def s3_up(state: Path) -> dict[str, str]:
    env = {**os.environ, "ELASTISERVE_S3_DIR": str(state)}
    subprocess.run([str(REPO / "hack" / "s3.sh"), "up"], check=True, env=env)
    out = subprocess.run([str(REPO / "hack" / "s3.sh"), "env"], check=True, env=env, capture_output=True, text=True)
    values = {}
    for line in out.stdout.splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        values[k] = v.strip("'\"")
    return values


def s3_down(state: Path) -> None:
    subprocess.run([str(REPO / "hack" / "s3.sh"), "down"], check=False,
                   env={**os.environ, "ELASTISERVE_S3_DIR": str(state)})


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from elastiserve.serving import paths
    from elastiserve.serving.diskcache import ArtifactCache
    from elastiserve.serving.remote import Remote, S3Settings
    from elastiserve.serving.runtime import Embedder, make_session, open_optimized, optimized_graph_name, write_optimized
    from elastiserve.serving.sentences import eval_sentences
    from elastiserve.serving.store import ModelStore
    from elastiserve.serving.textproc import load_tokenizer

    model_dir = ensure_model("int8", log)
    work = Path(tempfile.mkdtemp(prefix="es-bench-s3-"))
    state = work / "s3"
    try:
        aws = s3_up(state)
        os.environ.update(aws)  # the no-cache reference path reads them (plain fsspec/s3fs)
        settings = S3Settings(endpoint_url=aws["AWS_ENDPOINT_URL"], region=aws["AWS_REGION"],
                              access_key_id=aws["AWS_ACCESS_KEY_ID"], secret_access_key=aws["AWS_SECRET_ACCESS_KEY"])
        remote = Remote(settings)
        fs = remote.fs("s3://bench")
        if not fs.exists("bench"):
            fs.mkdir("bench")
        files = [paths.VARIANT_FILES["fp32"], paths.VARIANT_FILES["int8"], paths.TOKENIZER_FILE, paths.CONFIG_FILE]
        for f in files:
            fs.put_file(str(model_dir / f), f"bench/minilm/v1/{f}")
        log(f"uploaded {', '.join(files)} to s3://bench/minilm/v1/ at {settings.endpoint_url}")
        texts = eval_sentences(8)

        def fresh_cache(tag: str, keep_derived: bool = True) -> ArtifactCache:
            root = work / f"cache-{tag}"
            shutil.rmtree(root, ignore_errors=True)
            return ArtifactCache(root, budget_bytes=4 << 30, remote=remote, keep_derived=keep_derived)

        result: dict = {"endpoint": "SeaweedFS on 127.0.0.1 (hack/s3.sh)", "repeats": args.repeats,
                        "ort_threads": args.threads, "cpu_count": os.cpu_count(), "variants": {}}
        for variant in ("fp32", "int8"):
            art = f"s3://bench/minilm/v1/{paths.VARIANT_FILES[variant]}"
            uris = [art, f"s3://bench/minilm/v1/{paths.TOKENIZER_FILE}", f"s3://bench/minilm/v1/{paths.CONFIG_FILE}"]
            identical = True
            t: dict[str, list[float]] = {k: [] for k in ("download_s", "cache_hit_s", "session_s",
                                                         "derive_s", "session_optimized_s", "background_derive_s",
                                                         "first_inference_s",
                                                         "reload_from_bucket_s", "reload_from_disk_s",
                                                         "reload_from_bucket_online_s", "reload_from_disk_online_s",
                                                         "reload_in_memory_s")}
            for i in range(args.repeats):
                disk = fresh_cache(f"{variant}-{i}")
                t0 = time.perf_counter()
                local = [disk.fetch(u) for u in uris]
                t["download_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                local = [disk.fetch(u) for u in uris]
                t["cache_hit_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                manifest = json.loads(local[2].read_text())
                tok = load_tokenizer(local[1].read_text(), int(manifest.get("max_length", 256)), from_string=True)
                emb = Embedder(make_session(local[0], args.threads), tok, name="minilm", variant=variant,
                               manifest=manifest)
                t["session_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ref = emb.embed(texts)
                t["first_inference_s"].append(time.perf_counter() - t0)
                del emb
                opt = disk.derived_path(local[0], optimized_graph_name())
                t0 = time.perf_counter()
                assert write_optimized(local[0], opt)
                t["derive_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                tok = load_tokenizer(local[1].read_text(), int(manifest.get("max_length", 256)), from_string=True)
                emb = Embedder(open_optimized(opt, args.threads), tok, name="minilm", variant=variant, manifest=manifest)
                t["session_optimized_s"].append(time.perf_counter() - t0)
                got = emb.embed(texts)
                del emb
                identical = identical and bool(np.array_equal(got, ref))

                # an evicted sub-model coming back: empty disk cache (bucket) vs warm (disk), end to end
                cold = fresh_cache(f"{variant}-{i}-cold")
                src = ModelStore(["s3://bench/"], artifacts=cold).resolve("minilm", "minilm/v1")
                t0 = time.perf_counter()
                src.load(variant, args.threads)
                t["reload_from_bucket_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert cold.wait_derived(300) and cold.stats.derived == 1
                t["background_derive_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                src.load(variant, args.threads)
                t["reload_from_disk_s"].append(time.perf_counter() - t0)
                online = fresh_cache(f"{variant}-{i}-online", keep_derived=False)
                src = ModelStore(["s3://bench/"], artifacts=online).resolve("minilm", "minilm/v1")
                for key in ("reload_from_bucket_online_s", "reload_from_disk_online_s"):
                    t0 = time.perf_counter()
                    src.load(variant, args.threads)
                    t[key].append(time.perf_counter() - t0)
                nocache = ModelStore(["s3://bench/"], artifacts=None).resolve("minilm", "minilm/v1")
                t0 = time.perf_counter()
                nocache.load(variant, args.threads)
                t["reload_in_memory_s"].append(time.perf_counter() - t0)
                log(f"{variant} #{i + 1}: download {t['download_s'][-1]:.3f}s, hit {t['cache_hit_s'][-1]:.4f}s, "
                    f"session {t['session_s'][-1]:.3f}s (optimized graph {t['session_optimized_s'][-1]:.3f}s), "
                    f"reload bucket {t['reload_from_bucket_s'][-1]:.3f}s "
                    f"vs disk {t['reload_from_disk_s'][-1]:.3f}s (online: bucket {t['reload_from_bucket_online_s'][-1]:.3f}s "
                    f"vs disk {t['reload_from_disk_online_s'][-1]:.3f}s)")
            med = {k: median(v) for k, v in t.items()}
            size = (model_dir / paths.VARIANT_FILES[variant]).stat().st_size
            result["variants"][variant] = {
                "artifact_bytes": size,
                "median": med,
                "samples": {k: [round(x, 4) for x in v] for k, v in t.items()},
                "download_MBps": round(size / 1e6 / med["download_s"], 1),
                "cold_start_from_bucket_s": round(med["download_s"] + med["session_s"] + med["first_inference_s"], 4),
                "cold_start_from_disk_s": round(med["cache_hit_s"] + med["session_optimized_s"]
                                                + med["first_inference_s"], 4),
                "ratio_fetch_bucket_vs_disk": round(med["download_s"] / med["cache_hit_s"], 1),
                "ratio_reload_bucket_vs_disk": round(med["reload_from_bucket_s"] / med["reload_from_disk_s"], 2),
                # without the optimized graph (the design before it), same run
                "ratio_reload_bucket_vs_disk_online": round(med["reload_from_bucket_online_s"]
                                                            / med["reload_from_disk_online_s"], 2),
                "ratio_session_online_vs_optimized": round(med["session_s"] / med["session_optimized_s"], 2),
                "optimized_outputs_identical": identical,
                "ratio_reload_in_memory_vs_disk": round(med["reload_in_memory_s"] / med["reload_from_disk_s"], 2),
            }
        result["target_reload_ratio"] = 5.0
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
    finally:
        s3_down(state)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
