"""ONNX Runtime inference for the sentence encoder: text in, L2-normalised embeddings out."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from . import paths
from .textproc import encode, load_tokenizer

log = logging.getLogger("elastiserve.serving.runtime")
PROVIDERS = ["CPUExecutionProvider"]


def session_options(intra_op_threads: int | None = None, *, optimize: bool = True) -> ort.SessionOptions:
    """``optimize=False``: the graph is taken as it is (an already optimized graph, see :func:`open_optimized`)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    threads = intra_op_threads
    if threads is None:
        env = os.environ.get("ELASTISERVE_INTRA_OP_THREADS")
        threads = int(env) if env else 0
    so.intra_op_num_threads = threads  # 0 = one per physical core
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # Idle ORT worker threads spin by default, which shows up as CPU use between requests and
    # would mislead a CPU-based autoscaler; off unless ELASTISERVE_ORT_SPINNING=1.
    spin = os.environ.get("ELASTISERVE_ORT_SPINNING", "0") == "1"
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


@functools.lru_cache(maxsize=1)
def _cpu_tag() -> str:
    """The instruction sets ORT's kernels and layout choices depend on (the ``flags`` of /proc/cpuinfo)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:12]


def optimized_graph_name() -> str:
    """Folder name of an optimized graph saved by :func:`write_optimized`, keyed by what the optimized graph is
    only valid for: the ONNX Runtime version (fused contrib ops change between versions), the execution
    providers, the optimization level and the CPU's instruction sets (ORT documents optimized models as
    hardware specific). A folder written by another ORT, provider or CPU has another name and is never opened."""
    eps = "+".join(p.removesuffix("ExecutionProvider").lower() for p in PROVIDERS)
    return f"ort-{ort.__version__}-{eps}-all-{_cpu_tag()}"


OPTIMIZED_GRAPH = "model.onnx"
OPTIMIZED_WEIGHTS = "weights.bin"


def make_session(model: str | bytes | Path, intra_op_threads: int | None = None) -> ort.InferenceSession:
    """An ORT session for ``model`` (a path or the serialized bytes), its graph optimized online."""
    src = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(src, sess_options=session_options(intra_op_threads), providers=PROVIDERS)


def open_optimized(folder: Path, intra_op_threads: int | None = None) -> ort.InferenceSession | None:
    """A session from the optimized graph :func:`write_optimized` left in ``folder``, with graph optimizations
    off (ORT's "offline" mode: the fusions are already in the graph), which skips both the optimization passes
    and the weights' copy (ORT maps ``weights.bin``). None when there is none; a folder ORT cannot open is
    removed (and None returned) so the caller falls back to the artifact."""
    graph = Path(folder) / OPTIMIZED_GRAPH
    if not graph.exists():
        return None
    try:
        return ort.InferenceSession(str(graph), sess_options=session_options(intra_op_threads, optimize=False),
                                    providers=PROVIDERS)
    except Exception as e:  # noqa: BLE001 - a damaged derived file: rebuilt from the verified artifact
        log.warning("optimized graph %s unusable (%s): removed", folder,
                    str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def write_optimized(model: Path, folder: Path) -> bool:
    """Have ONNX Runtime optimize ``model`` and save the result in ``folder`` (named by
    :func:`optimized_graph_name`): the graph in ``model.onnx``, initializers of 1 KiB and more in
    ``weights.bin`` (external data, which ORT maps instead of copying). Written under a temporary name next to
    ``folder`` and renamed into place once complete. Returns whether ``folder`` now holds a graph."""
    folder = Path(folder)
    tmp = folder.with_name(f".{uuid.uuid4().hex}.part")
    tmp.mkdir(parents=True)
    so = session_options(1)
    so.optimized_model_filepath = str(tmp / OPTIMIZED_GRAPH)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", OPTIMIZED_WEIGHTS)
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(model), sess_options=so, providers=PROVIDERS)
        if (tmp / OPTIMIZED_GRAPH).exists():
            try:
                os.rename(tmp, folder)  # atomic: the optimized graph appears complete or not at all
            except OSError:  # another process sharing the cache put it there first
                pass
        return (folder / OPTIMIZED_GRAPH).exists()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_manifest(model_dir: Path) -> dict:
    p = Path(model_dir) / paths.CONFIG_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def dir_tokenizer(model_dir: Path, max_length: int | None = None):
    """The tokenizer of a model folder, truncating at the manifest's ``max_length``."""
    ml = max_length or int(read_manifest(model_dir).get("max_length", 256))
    return load_tokenizer(str(Path(model_dir) / paths.TOKENIZER_FILE), ml)


@dataclass
class Embedder:
    """One loaded sub-model: an ORT session plus its tokenizer."""

    session: ort.InferenceSession
    tokenizer: object
    name: str = ""
    variant: str = "fp32"
    nbytes: int = 0
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._inputs = {i.name for i in self.session.get_inputs()}
        out = self.session.get_outputs()[0]
        self._output = out.name
        dim = out.shape[-1] if out.shape else None
        self.dim = int(dim) if isinstance(dim, int) else int(self.manifest.get("hidden_size", -1))

    @classmethod
    def from_dir(cls, model_dir: Path, variant: str = "fp32", *, intra_op_threads: int | None = None,
                 max_length: int | None = None, name: str = "") -> "Embedder":
        model_dir = Path(model_dir)
        fname = paths.VARIANT_FILES[variant]
        manifest = read_manifest(model_dir)
        tok = dir_tokenizer(model_dir, max_length)
        model_path = model_dir / fname
        return cls(make_session(model_path, intra_op_threads), tok, name or model_dir.name, variant,
                   model_path.stat().st_size, manifest)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        feeds = {k: v for k, v in encode(self.tokenizer, texts).items() if k in self._inputs}
        return self.session.run([self._output], feeds)[0]

    def embed_batched(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        parts = [self.embed(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)
