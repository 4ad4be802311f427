"""The structurally pruned variant (serving/prune.py) on tiny random encoders.

Each tiny model folder gets a "source" folder holding the same random weights as safetensors +
config.json, so pruning goes through the real code path (safetensors -> prune -> build_graph).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import numpy_helper
from typer.testing import CliRunner

from elastiserve.serving import cli, paths
from elastiserve.serving.builder import BertConfig, build_graph, build_tiny_model, random_weights
from elastiserve.serving.prune import (PruneError, head_scores, prune_model, prune_weights, quality_vs_fp32,
                                       select_layers)
from elastiserve.serving.runtime import Embedder, cosine_rows, make_session
from elastiserve.serving.sentences import eval_sentences

TEXTS = ["the cat", "a quick brown fox jumps over the lazy dog and the cat", "", "zzz unknownword", "the model"]


def tiny_with_source(tmp_path: Path, *, hidden: int = 16, layers: int = 3, heads: int = 4, seed: int = 0):
    """A tiny model folder plus a source folder with its weights as safetensors."""
    from safetensors.numpy import save_file

    d = build_tiny_model(tmp_path / "m", hidden=hidden, layers=layers, heads=heads, seed=seed)
    cfg = BertConfig(**json.loads((d / paths.CONFIG_FILE).read_text())["config"])
    src = tmp_path / "src"
    src.mkdir()
    save_file(random_weights(cfg, seed), str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(asdict(cfg)))
    return d, src, cfg


def layer_indices(model: onnx.ModelProto) -> set[int]:
    return {int(t.name.split(".")[2]) for t in model.graph.initializer if t.name.startswith("encoder.layer.")}


def test_select_layers_strategies():
    assert select_layers(6, 3, "first-top") == [0, 4, 5]
    assert select_layers(6, 3, "even") == [0, 3, 5]
    assert select_layers(6, 3, "first") == [0, 1, 2]
    assert select_layers(6, 3, "last") == [3, 4, 5]
    for s in ("first-top", "even", "first", "last"):
        assert select_layers(6, 6, s) == list(range(6))
        assert len(select_layers(6, 1, s)) == 1
        for n in range(1, 7):
            kept = select_layers(6, n, s)
            assert len(kept) == n and kept == sorted(set(kept))
    for bad in (0, 7):
        with pytest.raises(PruneError, match="--layers"):
            select_layers(6, bad)
    with pytest.raises(PruneError, match="--strategy"):
        select_layers(6, 3, "random")


def test_fewer_layers_same_output_shape(tmp_path):
    d, src, cfg = tiny_with_source(tmp_path, layers=4)
    res = prune_model(d, layers=2, source_dir=src)
    assert res.layers_kept == [0, 3] and res.strategy == "first-top"
    out = d / paths.VARIANT_FILES["pruned"]
    assert Path(res.output_path) == out and res.output_bytes == out.stat().st_size < res.input_bytes
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert layer_indices(m) == {0, 1}
    assert layer_indices(onnx.load(str(d / "model.onnx"))) == {0, 1, 2, 3}
    # embeddings LayerNorm + 2 per kept layer
    assert sum(n.op_type == "LayerNormalization" for n in m.graph.node) == 1 + 2 * 2
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    f, p = Embedder.from_dir(d, "fp32").embed(TEXTS), Embedder.from_dir(d, "pruned").embed(TEXTS)
    assert p.shape == f.shape == (len(TEXTS), 16) and p.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-5)
    assert cosine_rows(f, p).min() < 0.9999  # really a different model


def test_kept_layers_are_the_source_layers(tmp_path):
    """Keeping layers [0, 2] of 3 = building a 2-layer model from exactly those layers' weights."""
    d, src, cfg = tiny_with_source(tmp_path, layers=3)
    prune_model(d, keep_layers=[2, 0], source_dir=src)
    w = random_weights(cfg, 0)
    manual = {k: v for k, v in w.items() if not k.startswith("encoder.layer.")}
    for new, old in enumerate([0, 2]):
        manual.update({k.replace(f"encoder.layer.{old}.", f"encoder.layer.{new}."): v for k, v in w.items()
                       if k.startswith(f"encoder.layer.{old}.")})
    from dataclasses import replace

    want = Embedder(make_session(build_graph(replace(cfg, num_hidden_layers=2), manual).SerializeToString()),
                    Embedder.from_dir(d).tokenizer).embed(TEXTS)
    np.testing.assert_allclose(Embedder.from_dir(d, "pruned").embed(TEXTS), want, atol=1e-6)
    man = json.loads((d / paths.CONFIG_FILE).read_text())
    assert man["pruned"]["layers_kept"] == [0, 2] and man["pruned"]["strategy"] == "explicit"


def test_one_layer_of_one_equals_the_original(tmp_path):
    d, src, cfg = tiny_with_source(tmp_path, layers=1, heads=2, hidden=8)
    res = prune_model(d, layers=1, heads=2, source_dir=src)
    assert res.layers_kept == [0] and res.heads_per_layer == 2
    sents = eval_sentences(24)
    f = Embedder.from_dir(d, "fp32").embed_batched(sents, 8)
    p = Embedder.from_dir(d, "pruned").embed_batched(sents, 8)
    np.testing.assert_allclose(p, f, atol=1e-6)
    q = quality_vs_fp32(d, sents)
    assert q["min_cosine"] > 0.99999 and q["sentences"] == 24


def test_head_pruning_keeps_shapes_and_equals_zeroed_heads(tmp_path):
    """Removing heads = the original model with those heads' output-projection columns zeroed."""
    d, src, cfg = tiny_with_source(tmp_path, hidden=16, layers=2, heads=4)
    res = prune_model(d, layers=2, heads=2, source_dir=src)
    w = random_weights(cfg, 0)
    hd = 4
    for layer in range(2):
        want = sorted(np.argsort(-head_scores(cfg, w, layer))[:2].tolist())
        assert res.heads_kept[str(layer)] == want
    m = onnx.load(str(d / "model.pruned.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for layer in range(2):
        p = f"encoder.layer.{layer}."
        for proj in ("query", "key", "value"):
            assert inits[p + f"attention.self.{proj}.weight_t"].shape == (16, 2 * hd)
            assert inits[p + f"attention.self.{proj}.bias"].shape == (2 * hd,)
        assert inits[p + "attention.output.dense.weight_t"].shape == (2 * hd, 16)
        assert inits[p + "intermediate.dense.weight_t"].shape == (16, 32)  # FFN untouched
    pruned = Embedder.from_dir(d, "pruned").embed(TEXTS)
    assert pruned.shape == (len(TEXTS), 16) and np.isfinite(pruned).all()
    # reference: the full graph with the dropped heads silenced in W_O
    zeroed = dict(w)
    for layer in range(2):
        key = f"encoder.layer.{layer}.attention.output.dense.weight"
        wo = zeroed[key].copy()
        for h in set(range(4)) - set(res.heads_kept[str(layer)]):
            wo[:, h * hd:(h + 1) * hd] = 0.0
        zeroed[key] = wo
    want = Embedder(make_session(build_graph(cfg, zeroed).SerializeToString()),
                    Embedder.from_dir(d).tokenizer).embed(TEXTS)
    np.testing.assert_allclose(pruned, want, atol=1e-5)


def test_prune_weights_validates():
    cfg = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                     max_position_embeddings=8)
    w = random_weights(cfg)
    with pytest.raises(PruneError, match="--heads"):
        prune_weights(cfg, w, [0], heads=3)
    with pytest.raises(PruneError, match="--heads"):
        prune_weights(cfg, w, [0], heads=0)
    with pytest.raises(PruneError, match="--keep-layers"):
        prune_weights(cfg, w, [0, 2])
    with pytest.raises(PruneError, match="--keep-layers"):
        prune_weights(cfg, w, [1, 1])
    with pytest.raises(ValueError, match="attention_heads"):
        build_graph(cfg, w, attention_heads=3)


def test_manifest_records_what_was_kept(tmp_path):
    d, src, cfg = tiny_with_source(tmp_path, layers=3, heads=4)
    prune_model(d, layers=2, heads=3, strategy="last", source_dir=src)
    man = json.loads((d / paths.CONFIG_FILE).read_text())
    assert set(man["variants"]) == {"fp32", "pruned"}
    v = man["variants"]["pruned"]
    assert v["file"] == "model.pruned.onnx" and v["bytes"] == (d / "model.pruned.onnx").stat().st_size
    assert len(v["sha256"]) == 64
    pr = man["pruned"]
    assert pr["layers_kept"] == [1, 2] and pr["source_layers"] == 3 and pr["strategy"] == "last"
    assert pr["heads_per_layer"] == 3 and pr["source_heads"] == 4 and pr["distilled"] is False
    assert sorted(pr["heads_kept"]) == ["0", "1"] and all(len(h) == 3 for h in pr["heads_kept"].values())
    assert man["config"]["num_hidden_layers"] == 3  # the fp32 model's config is left as it was


def test_source_that_does_not_match_the_model_is_refused(tmp_path):
    d, _, _ = tiny_with_source(tmp_path, hidden=16, layers=2)
    other, src2, _ = tiny_with_source(tmp_path / "other", hidden=8, layers=2, heads=2)
    with pytest.raises(PruneError, match="--source"):
        prune_model(d, layers=1, source_dir=src2)
    assert not (d / "model.pruned.onnx").exists()


def test_pruned_variant_is_servable_and_compared(tmp_path):
    from elastiserve.serving.compare import compare_variants, format_table
    from elastiserve.serving.server import ServerConfig

    assert paths.VARIANT_FILES["pruned"] == "model.pruned.onnx"
    ServerConfig(variant="pruned")  # the server's validation reads VARIANT_FILES
    d, src, _ = tiny_with_source(tmp_path, layers=2)
    prune_model(d, layers=2, source_dir=src)  # all layers kept: identical outputs
    res = compare_variants(d, batch_sizes=(1, 2), seconds_per_case=0.05, min_reps=2, sentences=eval_sentences(8))
    assert list(res["variants"]) == ["fp32", "pruned"]
    p = res["variants"]["pruned"]
    assert p["file"] == "model.pruned.onnx" and p["quality_vs_fp32"]["batch32"]["min_cosine"] > 0.99999
    assert set(p["batches"]) == {"1", "2"} and p["size_ratio_vs_fp32"] > 0
    assert "pruned" in format_table(res)


# ------------------------------------------------------------------------------------ CLI


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(cli.model_app, name="model")
    app.command("serve")(cli.serve)
    return app


def test_prune_command_is_listed():
    r = CliRunner().invoke(_app(), ["model", "--help"])
    assert r.exit_code == 0 and "prune" in r.output
    r = CliRunner().invoke(_app(), ["model", "prune", "--help"])
    assert r.exit_code == 0
    for opt in ("--layers", "--heads", "--strategy", "--keep-layers", "--dir"):
        assert opt in r.output


def test_cli_prune_reports_size_and_quality(tmp_path, monkeypatch):
    d, src, _ = tiny_with_source(tmp_path, layers=3)
    shared = tmp_path / "shared"
    (shared / "reference").mkdir(parents=True)
    (shared / "reference" / "minilm_embeddings.json").write_text(json.dumps({"sentences": TEXTS}))
    monkeypatch.setenv("ELASTISERVE_SHARED", str(shared))
    r = CliRunner().invoke(_app(), ["model", "prune", "--dir", str(d), "--source", str(src), "--layers", "2",
                                    "--heads", "2"])
    assert r.exit_code == 0, r.output
    assert "model.pruned.onnx" in r.output and "layers [0, 2] of 3" in r.output and "2 of 4 heads" in r.output
    assert "x smaller" in r.output
    assert "quality vs fp32 (reference, 5 sentences): mean cosine" in r.output
    assert "qualityCost" in r.output and "(evaluation" in r.output
    assert (d / "model.pruned.onnx").exists()


@pytest.mark.parametrize("args, option", [
    (["--layers", "0"], "--layers"),
    (["--layers", "4"], "--layers"),
    (["--heads", "5"], "--heads"),
    (["--heads", "0"], "--heads"),
    (["--strategy", "middle"], "--strategy"),
    (["--keep-layers", "0,x"], "--keep-layers"),
    (["--keep-layers", "0,3"], "--keep-layers"),
    (["--keep-layers", ","], "--keep-layers"),
])
def test_cli_prune_rejects_bad_options(tmp_path, args, option):
    d, src, _ = tiny_with_source(tmp_path, layers=3, heads=4)
    r = CliRunner().invoke(_app(), ["model", "prune", "--dir", str(d), "--source", str(src), "--no-verify", *args])
    assert r.exit_code == 2, r.output
    assert option in r.output and "Traceback" not in r.output
    assert isinstance(r.exception, SystemExit)
    assert not (d / "model.pruned.onnx").exists()


def test_cli_prune_without_model_says_build_first(tmp_path):
    r = CliRunner().invoke(_app(), ["model", "prune", "--dir", str(tmp_path / "nothing"), "--no-verify"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert "model.onnx not found" in r.output and "elastiserve model build" in r.output


def test_cli_compare_variant_option(tmp_path):
    d, src, _ = tiny_with_source(tmp_path, layers=2)
    r = CliRunner().invoke(_app(), ["model", "compare", "--dir", str(d), "--variant", "fp32", "--variant", "fp16"])
    assert r.exit_code == 2 and "--variant" in r.output
    r = CliRunner().invoke(_app(), ["model", "compare", "--dir", str(d), "--variant", "fp32", "--variant", "pruned"])
    assert r.exit_code == 1 and "model.pruned.onnx" in r.output and "prune" in r.output
    prune_model(d, layers=1, source_dir=src)
    r = CliRunner().invoke(_app(), ["model", "compare", "--dir", str(d), "--variant", "fp32", "--variant", "pruned",
                                    "--batch", "1", "--seconds", "0.05", "--json", "-"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert list(rep["variants"]) == ["fp32", "pruned"]
    assert 0 < rep["variants"]["pruned"]["quality_vs_fp32"]["batch1"]["mean_cosine"] < 0.99999
