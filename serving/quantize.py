"""INT8 variants of the encoder with ``onnxruntime.quantization``.

``dynamic`` (default): weights of every MatMul with a constant B and of the embedding
Gathers are stored as int8 (per output channel for MatMul when ``per_channel``), activations
are quantised on the fly (MatMulInteger / DynamicQuantizeMatMul on CPU).

``static``: QDQ format with activation ranges calibrated on a small sentence set.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import onnx

from . import paths


@dataclass
class QuantizeResult:
    method: str
    input_path: str
    output_path: str
    input_bytes: int
    output_bytes: int
    seconds: float
    details: dict | None = None

    @property
    def ratio(self) -> float:
        return self.input_bytes / max(1, self.output_bytes)


class _quiet:
    """The quantizer logs a pre-processing warning on every call; silence it for the call only."""

    def __enter__(self):
        self._root = logging.getLogger()
        self._level = self._root.level
        self._root.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._root.setLevel(self._level)


def quantize_dynamic_model(src: Path | onnx.ModelProto, dst: Path, *, per_channel: bool = True,
                           reduce_range: bool = False, op_types: Sequence[str] = ("MatMul", "Gather"),
                           exclude: Sequence[str] = ()) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            src if isinstance(src, onnx.ModelProto) else str(src), str(dst),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            extra_options={"MatMulConstBOnly": True},
        )


class _TextCalibrationReader:
    """Feeds tokenised calibration sentences to the static quantiser, one small batch at a time."""

    def __init__(self, tokenizer, sentences: Sequence[str], batch: int = 8, input_names: Iterable[str] = ()):
        from .textproc import encode

        names = set(input_names)
        self._batches = [
            {k: v for k, v in encode(tokenizer, sentences[i:i + batch]).items() if not names or k in names}
            for i in range(0, len(sentences), batch)
        ]
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._batches)


def quantize_static_model(src: Path, dst: Path, tokenizer, sentences: Sequence[str], *, per_channel: bool = True) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src), load_external_data=False)
    input_names = [i.name for i in model.graph.input]
    del model
    reader = _TextCalibrationReader(tokenizer, list(sentences), input_names=input_names)
    with _quiet():
        quantize_static(
            str(src), str(dst), reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gather"],
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False, "WeightSymmetric": True},
        )


def quantize_model(model_dir: Path | None = None, *, method: str = "dynamic", per_channel: bool = True,
                   reduce_range: bool = False, smooth: bool = True, alpha: float = 0.7, outliers: int = 2,
                   output: Path | None = None, calibration: Sequence[str] | None = None) -> QuantizeResult:
    """Write ``model.int8.onnx`` next to ``model.onnx`` in ``model_dir`` (or to ``output``).

    method ``dynamic`` (default) optionally preceded by the exact ``prepare_for_int8`` rewrite
    (``smooth``); method ``static`` is QDQ with MinMax calibration (kept for comparison: on this
    model it is both slower and less accurate than dynamic).
    """
    from .builder import write_manifest
    from .runtime import dir_tokenizer
    from .sentences import calibration_sentences

    model_dir = Path(model_dir) if model_dir else paths.model_dir()
    src = model_dir / paths.VARIANT_FILES["fp32"]
    if not src.exists():
        raise FileNotFoundError(f"{src} not found: run `elastiserve model build` first")
    dst = Path(output) if output else model_dir / paths.VARIANT_FILES["int8"]
    t0 = time.perf_counter()
    tok = dir_tokenizer(model_dir)
    cal = list(calibration or calibration_sentences())
    details: dict = {"method": method, "per_channel": per_channel, "reduce_range": reduce_range}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="es-quant-", dir=dst.parent) as td:
        tmp = Path(td) / "q.onnx"
        if method == "dynamic":
            exclude: list[str] = []
            model_in: Path | onnx.ModelProto = src
            if smooth:
                model_in, exclude, report = prepare_for_int8(onnx.load(str(src)), tok, cal, alpha=alpha, outliers=outliers)
                details.update(smooth_alpha=alpha, outlier_channels=outliers,
                               rewrites=[{"input": r["input"], "rewrite": r["rewrite"]} for r in report])
            quantize_dynamic_model(model_in, tmp, per_channel=per_channel, reduce_range=reduce_range, exclude=exclude)
        elif method == "static":
            quantize_static_model(src, tmp, tok, cal, per_channel=per_channel)
        else:
            raise ValueError(f"unknown quantisation method {method!r} (dynamic|static)")
        tmp.replace(dst)
    if dst.parent.resolve() == model_dir.resolve() and dst.name == paths.VARIANT_FILES["int8"]:
        write_manifest(model_dir, int8={k: v for k, v in details.items() if k != "rewrites"})
    res = QuantizeResult(method, str(src), str(dst), src.stat().st_size, dst.stat().st_size, time.perf_counter() - t0)
    res.details = details
    return res


# --------------------------------------------------------------------------------------
# Preparing the fp32 graph for dynamic INT8 (exact in fp32)
# --------------------------------------------------------------------------------------
#
# Dynamic quantisation gives each activation tensor a single uint8 range per batch. In this
# encoder a few channels carry "massive" activations, mostly on the [CLS] token (LayerNorm
# output channel 99 reaches ~28 while the median channel peaks at ~1.1; one GELU output
# channel reaches ~25 vs ~0.4), which wastes most of the 256 levels for everything else.
# Short inputs ("ok", "") are hit hardest since their embedding averages only 2-3 tokens:
# plain per-channel dynamic INT8 gives min cosine ~0.96 vs fp32 on our sentence set.
#
# Three exact rewrites of  Y = X @ W,  chosen by what produces X:
#   * LayerNorm output (Q/K/V and FFN-in):   SmoothQuant-style per-channel scale s:
#         Y = (X * 1/s) @ (s[:, None] * W),   s = amax^a / wmax^(1-a)    (one cheap Mul)
#   * attention context (attention-out):     the same scale, with 1/s folded into the value
#         projection's weights and bias (context = probs @ V is linear per channel): free
#   * GELU output (FFN-out):                 LLM.int8()-style decomposition: the k channels with
#         the largest calibration peaks are masked out of X and computed in fp32:
#         Y = (X * mask) @ W' + X[..., idx] @ W[idx]   (W' has those rows zeroed)
# amax comes from a small calibration set (generated sentences, incl. very short ones).


def _collect_activations(model: onnx.ModelProto, names: list[str], feeds_list: list[dict]) -> dict[str, list]:
    from onnx import TensorProto, helper

    from .runtime import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for n in names:
        probe.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    sess = make_session(probe.SerializeToString())
    out: dict[str, list] = {n: [] for n in names}
    for feeds in feeds_list:
        for n, v in zip(names, sess.run(names, feeds)):
            out[n].append(v.reshape(-1, v.shape[-1]))
    return out


def _value_projection_for(prod, producers, inits):
    """If ``prod`` is Reshape(Transpose(MatMul(probs, V_heads))) return V's (weight, bias) initializer names."""
    node = prod
    for op in ("Reshape", "Transpose", "MatMul"):
        if node is None or node.op_type != op:
            return None
        node = producers.get(node.input[1] if op == "MatMul" else node.input[0])
    # V_heads = Transpose(Reshape(Add(MatMul(x, Wv), bv)))
    for op in ("Transpose", "Reshape"):
        if node is None or node.op_type != op:
            return None
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Add" or node.input[1] not in inits:
        return None
    mm = producers.get(node.input[0])
    if mm is None or mm.op_type != "MatMul" or mm.input[1] not in inits:
        return None
    return mm.input[1], node.input[1]


def prepare_for_int8(model: onnx.ModelProto, tokenizer, sentences: Sequence[str], *, alpha: float = 0.7,
                     outliers: int = 2, batch: int = 8) -> tuple[onnx.ModelProto, list[str], list[dict]]:
    """Return (fp32-equivalent model, fp32 MatMul node names to keep unquantised, report)."""
    import numpy as np
    from onnx import helper, numpy_helper

    from .textproc import encode

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            groups.setdefault(n.input[0], []).append(n)
    inputs = {i.name for i in m.graph.input}
    feeds = [{k: v for k, v in encode(tokenizer, sentences[i:i + batch]).items() if k in inputs}
             for i in range(0, len(sentences), batch)]
    acts = _collect_activations(m, list(groups), feeds)

    def put(name: str, arr) -> None:
        t = numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)
        if name in inits:
            inits[name].CopyFrom(t)
        else:
            m.graph.initializer.append(t)
            inits[name] = m.graph.initializer[-1]

    before: dict[str, list] = {}  # node name -> nodes to insert before it
    after: dict[str, list] = {}   # node name -> nodes to insert after it
    keep_fp32: list[str] = []
    report: list[dict] = []
    for a, grp in groups.items():
        W = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in grp]
        amax = np.max([np.abs(x).max(axis=0) for x in acts[a]], axis=0)
        prod = producers.get(a)
        fold = _value_projection_for(prod, producers, inits) if prod is not None else None
        entry = {"input": a, "matmuls": [n.name for n in grp], "amax_max": float(amax.max()),
                 "amax_median": float(np.median(amax))}
        if prod is not None and (prod.op_type == "LayerNormalization" or fold is not None) and alpha > 0:
            wmax = np.max([np.abs(w).max(axis=1) for w in W], axis=0)
            s = np.clip(np.maximum(amax, 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-3, 1e3)
            inv = (1.0 / s).astype(np.float32)
            for n, w in zip(grp, W):
                put(n.input[1], w * s[:, None])
            if fold is not None:
                wv, bv = fold
                put(wv, numpy_helper.to_array(inits[wv]) * inv[None, :])
                put(bv, numpy_helper.to_array(inits[bv]) * inv)
                entry["rewrite"] = f"smooth(alpha={alpha}) folded into {wv}"
            else:
                sname, out = f"{a}__smooth_inv", f"{a}__smoothed"
                put(sname, inv)
                before.setdefault(grp[0].name, []).append(helper.make_node("Mul", [a, sname], [out], name=f"Smooth_{a}"))
                for n in grp:
                    n.input[0] = out
                entry["rewrite"] = f"smooth(alpha={alpha})"
        elif outliers > 0:
            idx = np.sort(np.argsort(amax)[::-1][:outliers]).astype(np.int64)
            mask = np.ones(amax.shape[0], np.float32)
            mask[idx] = 0.0
            mname, iname, xin, xout = f"{a}__inlier_mask", f"{a}__outlier_idx", f"{a}__inliers", f"{a}__outliers"
            put(mname, mask)
            m.graph.initializer.append(numpy_helper.from_array(idx, iname))
            before.setdefault(grp[0].name, []).extend([
                helper.make_node("Mul", [a, mname], [xin], name=f"InlierMask_{a}"),
                helper.make_node("Gather", [a, iname], [xout], axis=-1, name=f"OutlierGather_{a}"),
            ])
            for n, w in zip(grp, W):
                wo = n.input[1] + "__outlier_rows"
                put(wo, w[idx])
                w2 = w.copy()
                w2[idx] = 0.0
                put(n.input[1], w2)
                y = n.output[0]
                n.input[0] = xin
                n.output[0] = y + "__inl"
                mm = helper.make_node("MatMul", [xout, wo], [y + "__outl"], name=f"{n.name}_outliers_fp32")
                keep_fp32.append(mm.name)
                after.setdefault(n.name, []).extend([mm, helper.make_node("Add", [y + "__inl", y + "__outl"], [y],
                                                                          name=f"{n.name}_outliers_add")])
            entry["rewrite"] = f"outliers(k={outliers}) channels {idx.tolist()} in fp32"
        else:
            entry["rewrite"] = "none"
        report.append(entry)

    if before or after:
        ordered = []
        for n in m.graph.node:
            ordered.extend(before.get(n.name, []))
            ordered.append(n)
            ordered.extend(after.get(n.name, []))
        del m.graph.node[:]
        m.graph.node.extend(ordered)
    onnx.checker.check_model(m)
    return m, keep_fp32, report
