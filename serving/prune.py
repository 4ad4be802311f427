"""A structurally pruned variant of the encoder: fewer encoder layers and/or attention heads.

``model.pruned.onnx`` is built from the same safetensors weights as ``model.onnx`` with the
same torch-free graph builder (``builder.build_graph``), after removing

* whole encoder layers: ``layers`` of the model's layers are kept, chosen by ``strategy``
  (``first-top``, the default: the first layer plus the top N-1; ``even``: evenly spaced,
  always keeping the first and the last; ``first``: the bottom N; ``last``: the top N) or given explicitly (``keep_layers``). The kept layers are renumbered
  0..N-1; embeddings, pooling and normalisation are unchanged, so the output dimension is too.
* whole attention heads (``heads`` per kept layer): the head's rows of the Q/K/V projections
  (weights and biases) and its columns of the attention-output projection. Heads are ranked
  per layer by a weight-norm importance score (``head_scores``):
  ``||W_V[h]||_F * ||W_O[:, h]||_F`` -- the size of the path through which head h can write
  into the residual stream (Q/K only decide *where* a head looks, V·O *what* it adds).
  Removing a head is exact up to what the head contributed: the attention-output bias and the
  remaining heads are untouched.

There is no retraining here (no distillation): see docs/pruning.md for what that would add.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from . import paths
from .builder import BertConfig, build_graph, load_safetensors

STRATEGIES = ("first-top", "even", "first", "last")
#: Default layer-selection strategy: the best of STRATEGIES on cosine vs fp32 for 3, 4 and 5 of
#: MiniLM's 6 layers (docs/pruning.md: 3 layers keep mean cosine 0.72 with first-top, 0.67 even,
#: 0.63 last, 0.33 first on the 48 evaluation sentences).
DEFAULT_STRATEGY = "first-top"
DEFAULT_LAYERS = 3


class PruneError(ValueError):
    """A pruning option is invalid; the message names the option (``--layers``, ``--heads``, ...)."""


@dataclass
class PruneResult:
    input_path: str
    output_path: str
    input_bytes: int
    output_bytes: int
    seconds: float
    layers_kept: list[int]
    heads_per_layer: int
    source_layers: int
    source_heads: int
    heads_kept: dict[str, list[int]] = field(default_factory=dict)
    strategy: str = DEFAULT_STRATEGY

    @property
    def ratio(self) -> float:
        return self.input_bytes / max(1, self.output_bytes)


def select_layers(total: int, keep: int, strategy: str = DEFAULT_STRATEGY) -> list[int]:
    """Indices of the ``keep`` layers (of ``total``) that ``strategy`` keeps, ascending."""
    if not 1 <= keep <= total:
        raise PruneError(f"--layers must be between 1 and {total} (the model's layers), not {keep}")
    if strategy == "first":
        return list(range(keep))
    if strategy == "last":
        return list(range(total - keep, total))
    if strategy == "first-top":
        return [0] + list(range(total - keep + 1, total))
    if strategy == "even":
        if keep == 1:
            return [0]
        return sorted({int(math.floor(i * (total - 1) / (keep - 1) + 0.5)) for i in range(keep)})
    raise PruneError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")


def head_scores(cfg: BertConfig, weights: Mapping[str, np.ndarray], layer: int) -> np.ndarray:
    """Importance of each head of ``layer``: ||W_V[h]||_F * ||W_O[:, h]||_F (HF [out, in] layout)."""
    p = f"encoder.layer.{layer}."
    nh = cfg.num_attention_heads
    hd = cfg.hidden_size // nh
    wv = np.asarray(weights[p + "attention.self.value.weight"], np.float64).reshape(nh, hd, -1)
    wo = np.asarray(weights[p + "attention.output.dense.weight"], np.float64).reshape(-1, nh, hd)
    return np.linalg.norm(wv, axis=(1, 2)) * np.linalg.norm(wo, axis=(0, 2))


def prune_weights(cfg: BertConfig, weights: Mapping[str, np.ndarray], keep_layers: Sequence[int],
                  heads: int | None = None) -> tuple[BertConfig, dict[str, np.ndarray], dict[str, list[int]]]:
    """Return (config with the kept layer count, renumbered/pruned weights, heads kept per new layer).

    ``heads`` = heads kept per layer (None = all). The returned config keeps the original
    ``num_attention_heads`` (it fixes the head size); pass ``heads`` to ``build_graph`` as
    ``attention_heads``.
    """
    total, nh = cfg.num_hidden_layers, cfg.num_attention_heads
    keep_layers = list(keep_layers)
    if not keep_layers:
        raise PruneError("--layers must keep at least one layer")
    bad = [i for i in keep_layers if not 0 <= i < total]
    if bad:
        raise PruneError(f"--keep-layers: layer indices {bad} out of range 0..{total - 1}")
    if len(set(keep_layers)) != len(keep_layers):
        raise PruneError(f"--keep-layers: repeated layer indices in {keep_layers}")
    if heads is not None and not 1 <= heads <= nh:
        raise PruneError(f"--heads must be between 1 and {nh} (the model's heads per layer), not {heads}")
    hd = cfg.hidden_size // nh
    out: dict[str, np.ndarray] = {k: np.asarray(v, np.float32) for k, v in weights.items()
                                  if not k.startswith("encoder.layer.")}
    kept_heads: dict[str, list[int]] = {}
    for new, old in enumerate(keep_layers):
        src, dst = f"encoder.layer.{old}.", f"encoder.layer.{new}."
        for k, v in weights.items():
            if k.startswith(src):
                out[dst + k[len(src):]] = np.asarray(v, np.float32)
        if heads is not None and heads < nh:
            idx = np.sort(np.argsort(-head_scores(cfg, weights, old), kind="stable")[:heads])
            cols = (idx[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)  # the kept heads' channels
            for proj in ("query", "key", "value"):
                key = dst + f"attention.self.{proj}"
                out[key + ".weight"] = np.ascontiguousarray(out[key + ".weight"][cols, :])
                out[key + ".bias"] = np.ascontiguousarray(out[key + ".bias"][cols])
            key = dst + "attention.output.dense.weight"
            out[key] = np.ascontiguousarray(out[key][:, cols])
            kept_heads[str(new)] = idx.tolist()
        else:
            kept_heads[str(new)] = list(range(nh))
    return replace(cfg, num_hidden_layers=len(keep_layers)), out, kept_heads


def build_pruned_graph(cfg: BertConfig, weights: Mapping[str, np.ndarray], keep_layers: Sequence[int],
                       heads: int | None = None, *, doc: str = "") -> tuple[onnx.ModelProto, dict[str, list[int]]]:
    pcfg, pw, kept = prune_weights(cfg, weights, keep_layers, heads)
    return build_graph(pcfg, pw, doc=doc, attention_heads=heads), kept


def _source(model_dir: Path, source_dir: Path | None) -> tuple[Path, BertConfig, dict[str, np.ndarray]]:
    src = Path(source_dir) if source_dir else paths.source_model_dir()
    for f in ("config.json", "model.safetensors"):
        if not (src / f).exists():
            raise FileNotFoundError(f"{src / f} not found (--source must hold config.json and model.safetensors)")
    cfg = BertConfig.from_json(src / "config.json")
    man_path = model_dir / paths.CONFIG_FILE
    built = json.loads(man_path.read_text()).get("config") if man_path.exists() else None
    if built:
        mismatch = {k: (v, built.get(k)) for k, v in asdict(cfg).items() if k in built and built[k] != v}
        if mismatch:
            raise PruneError(f"--source config differs from the one {model_dir / paths.VARIANT_FILES['fp32']} was "
                             f"built from: {mismatch}")
    return src, cfg, load_safetensors(src / "model.safetensors")


def prune_model(model_dir: Path | None = None, *, layers: int | None = DEFAULT_LAYERS, heads: int | None = None,
                strategy: str = DEFAULT_STRATEGY, keep_layers: Sequence[int] | None = None,
                source_dir: Path | None = None, output: Path | None = None) -> PruneResult:
    """Write ``model.pruned.onnx`` next to ``model.onnx`` in ``model_dir`` (or to ``output``).

    ``keep_layers`` (explicit indices) overrides ``layers``/``strategy``. Records what was kept
    under ``pruned`` in the folder's manifest.
    """
    from .builder import write_manifest

    model_dir = Path(model_dir) if model_dir else paths.model_dir()
    fp32 = model_dir / paths.VARIANT_FILES["fp32"]
    if not fp32.exists():
        raise FileNotFoundError(f"{fp32} not found: run `elastiserve model build` first")
    t0 = time.perf_counter()
    src, cfg, weights = _source(model_dir, source_dir)
    if keep_layers:
        kl = sorted(int(i) for i in keep_layers)
        strategy = "explicit"
    else:
        kl = select_layers(cfg.num_hidden_layers, cfg.num_hidden_layers if layers is None else int(layers), strategy)
    if heads is not None and not 1 <= heads <= cfg.num_attention_heads:
        raise PruneError(f"--heads must be between 1 and {cfg.num_attention_heads} "
                         f"(the model's heads per layer), not {heads}")
    nh = cfg.num_attention_heads if heads is None else int(heads)
    doc = (f"{model_dir.name} encoder pruned by elastiserve: layers {kl} of {cfg.num_hidden_layers}, "
           f"{nh} of {cfg.num_attention_heads} heads per layer")
    model, kept = build_pruned_graph(cfg, weights, kl, heads, doc=doc)
    dst = Path(output) if output else model_dir / paths.VARIANT_FILES["pruned"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="es-prune-", dir=dst.parent) as td:
        tmp = Path(td) / "p.onnx"
        onnx.save_model(model, str(tmp))
        tmp.replace(dst)
    res = PruneResult(str(fp32), str(dst), fp32.stat().st_size, dst.stat().st_size, time.perf_counter() - t0,
                      kl, nh, cfg.num_hidden_layers, cfg.num_attention_heads, kept, strategy)
    if dst.parent.resolve() == model_dir.resolve() and dst.name == paths.VARIANT_FILES["pruned"]:
        write_manifest(model_dir, pruned={
            "layers_kept": kl, "source_layers": cfg.num_hidden_layers, "strategy": strategy,
            "heads_per_layer": nh, "source_heads": cfg.num_attention_heads,
            "heads_kept": kept, "head_score": "||W_V[h]||_F * ||W_O[:, h]||_F",
            "source": str(src), "distilled": False,
        })
    return res


def quality_vs_fp32(model_dir: Path, sentences: Sequence[str], variant: str = "pruned", batch: int = 32) -> dict:
    """Cosine of ``variant``'s embeddings against ``model.onnx``'s on ``sentences``."""
    from .runtime import Embedder, cosine_rows

    f = Embedder.from_dir(model_dir, "fp32").embed_batched(list(sentences), batch)
    p = Embedder.from_dir(model_dir, variant).embed_batched(list(sentences), batch)
    cos = cosine_rows(f, p)
    i = int(np.argmin(cos))
    return {"sentences": len(cos), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "worst_sentence": list(sentences)[i][:60]}
