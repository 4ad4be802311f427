"""The ONNX graph builder and runtime, on tiny random encoders (no real weights needed)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from elastiserve.serving import paths
from elastiserve.serving.builder import BertConfig, build_graph, build_tiny_model, random_weights
from elastiserve.serving.runtime import Embedder, cosine_rows, make_session
from elastiserve.serving.sentences import calibration_sentences, eval_sentences


def test_graph_uses_opset_17_ops_and_checks(tiny_template):
    m = onnx.load(str(tiny_template / "model.onnx"))
    onnx.checker.check_model(m)
    assert {o.domain: o.version for o in m.opset_import}[""] >= 17
    ops = {n.op_type for n in m.graph.node}
    assert {"LayerNormalization", "Erf", "Softmax", "Gather", "ReduceSum"} <= ops
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in m.graph.output] == ["embeddings"]


def test_embeddings_are_unit_norm_and_batch_invariant(tiny_template):
    e = Embedder.from_dir(tiny_template)
    texts = ["the cat", "a quick brown fox jumps over the lazy dog and the cat", "", "zzz unknownword"]
    batched = e.embed(texts)
    assert batched.shape == (4, 8) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, rtol=1e-5)
    singles = np.concatenate([e.embed([t]) for t in texts])
    # mean pooling must ignore the padding added for the longest sentence
    assert cosine_rows(batched, singles).min() > 0.99999


def test_truncation_keeps_long_inputs_within_positions(tiny_template):
    e = Embedder.from_dir(tiny_template)
    out = e.embed(["the model " * 500])  # far more tokens than max_length=32 positions
    assert out.shape == (1, 8) and np.isfinite(out).all()


def test_empty_batch(tiny_template):
    e = Embedder.from_dir(tiny_template)
    assert e.embed([]).shape == (0, 8)


def test_graph_matches_numpy_reference():
    """The ONNX graph computes exactly a BERT encoder + mean pooling + L2 norm."""
    cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                     max_position_embeddings=10)
    w = random_weights(cfg, seed=3)
    sess = make_session(build_graph(cfg, w).SerializeToString())
    ids = np.array([[2, 5, 7, 3, 0], [2, 9, 3, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    tt = np.zeros_like(ids)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt})[0]

    def ln(x, g, b, eps=1e-12):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * g + b

    from math import erf, sqrt

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][np.arange(5)][None] \
        + w["embeddings.token_type_embeddings.weight"][tt]
    x = ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    ext = (1.0 - mask[:, None, None, :]) * -10000.0
    for i in range(2):
        p = f"encoder.layer.{i}."

        def lin(v, k):
            return v @ w[p + k + ".weight"].T + w[p + k + ".bias"]

        def heads(v):
            return v.reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)

        q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / 2.0 + ext
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(2, 5, 8)
        x = ln(lin(ctx, "attention.output.dense") + x, w[p + "attention.output.LayerNorm.weight"],
               w[p + "attention.output.LayerNorm.bias"])
        h = gelu(lin(x, "intermediate.dense"))
        x = ln(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    m = mask[..., None].astype(np.float64)
    mean = (x * m).sum(1) / m.sum(1)
    want = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_missing_weight_is_reported():
    cfg = BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                     max_position_embeddings=8)
    w = random_weights(cfg)
    del w["encoder.layer.0.output.dense.weight"]
    with pytest.raises(KeyError, match="output.dense.weight"):
        build_graph(cfg, w)


def test_manifest_lists_variants(tiny_template):
    man = json.loads((tiny_template / paths.CONFIG_FILE).read_text())
    assert man["hidden_size"] == 8 and man["variants"]["fp32"]["file"] == "model.onnx"
    assert len(man["variants"]["fp32"]["sha256"]) == 64


def test_int8_rewrite_is_exact_in_fp32_and_quantizes(tmp_path):
    """prepare_for_int8 is an exact rewrite; the quantised tiny model is smaller and close."""
    from elastiserve.serving.quantize import prepare_for_int8, quantize_model
    from elastiserve.serving.textproc import load_tokenizer

    d = build_tiny_model(tmp_path / "m", hidden=32, layers=2, heads=4)
    tok = load_tokenizer(str(d / "tokenizer.json"), 32)
    model = onnx.load(str(d / "model.onnx"))
    rewritten, keep_fp32, report = prepare_for_int8(model, tok, calibration_sentences(16), alpha=0.6, outliers=2)
    kinds = {r["rewrite"].split("(")[0] for r in report}
    assert {"smooth", "outliers"} <= kinds and any("folded" in r["rewrite"] for r in report)
    assert len(keep_fp32) == 2  # one outlier MatMul per layer's FFN output
    sents = eval_sentences(24)
    a = Embedder(make_session(model.SerializeToString()), tok).embed(sents)
    b = Embedder(make_session(rewritten.SerializeToString()), tok).embed(sents)
    assert cosine_rows(a, b).min() > 0.99999
    res = quantize_model(d)
    assert (d / "model.int8.onnx").exists() and res.output_bytes < res.input_bytes
    q = Embedder.from_dir(d, "int8").embed(sents)
    assert q.shape == a.shape and np.isfinite(q).all()
    man = json.loads((d / paths.CONFIG_FILE).read_text())
    assert set(man["variants"]) == {"fp32", "int8"} and man["int8"]["method"] == "dynamic"


def test_sentence_sets_are_varied_and_deterministic():
    ev = eval_sentences()
    assert len(ev) >= 36 and len(set(ev)) == len(ev) and ev == eval_sentences()
    assert "" in ev and any(len(s) > 2000 for s in ev)  # empty input and one beyond the token limit
    assert not set(calibration_sentences()) & set(ev)
