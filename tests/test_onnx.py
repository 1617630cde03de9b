"""ONNX export: parity with PyTorch, the int8 variant, stale exports refused, search.py on ONNX Runtime."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import search as search_cli  # noqa: E402
from clipita.catalogue import generate_catalogue  # noqa: E402
from clipita.onnx_encoder import OnnxEncoder, distinct_attributes, load_encoder  # noqa: E402
from clipita.onnx_export import (  # noqa: E402
    add_int8,
    export_onnx,
    mixed_float_nodes,
    parity,
    random_products,
    tower_linears,
)
from tests.conftest import tiny_model  # noqa: E402
from tests.test_card import save_tiny_release  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx") / "clip-ita"
    save_tiny_release(folder)
    return folder, export_onnx(folder, int8="dynamic")  # the fastest int8, the others are compared with it


def test_float_export_matches_pytorch_on_200_products_and_categories(exported):
    folder, manifest = exported
    assert set(manifest["files"]) == {"fp32", "int8"}
    result = parity(folder, count=200, variant="fp32")
    assert result["products_max_abs_diff"] <= 1e-4, result
    assert result["categories_max_abs_diff"] <= 1e-4, result


def test_graphs_run_the_last_layer_at_the_pooled_token_only(exported):
    """As `encode_*` do (config.pooled_last_layer): each tower's last MLP sees one row per item, a matrix
    product (Gemm), where a whole tower's sees every token (a batched MatMul)."""
    import onnx

    folder, _ = exported
    for name, towers in (("product_encoder.onnx", {"vision", "text"}), ("category_encoder.onnx", {"text"})):
        linears = tower_linears(onnx.load(str(folder / "onnx" / name)))
        last_mlp = {node: tower for node, (tower, layer, linear) in linears.items() if linear == "fc1"}
        assert set(last_mlp.values()) == towers and all(node.endswith("/Gemm") for node in last_mlp), last_mlp


def test_mixed_keeps_exactly_the_first_text_layer_float_in_a_fresh_model(tmp_path):
    """A fresh model's biases are all zero, which the exporter merges into one initializer: the nodes are told
    apart by the inputs that reach them and their names, so two layers per tower give 6 float linears for each
    of the two text passes (title, attributes) and none in the vision tower."""
    import onnx

    from clipita.bootstrap import build_default_model
    from tests.conftest import TINY_TEXTS

    model, processor = build_default_model(TINY_TEXTS, hidden_size=32, layers=2, image_size=32)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    export_onnx(tmp_path, int8=None)
    graph = onnx.load(str(tmp_path / "onnx" / "product_encoder.onnx"))
    linears = tower_linears(graph)
    assert sorted({(tower, layer) for tower, layer, _ in linears.values()}) == [
        ("text", 0),
        ("text", 1),
        ("vision", 0),
        ("vision", 1),
    ]
    kept = set(mixed_float_nodes(graph))
    assert sorted(linears[name] for name in kept if name in linears) == sorted(
        [("text", 0, linear) for linear in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")] * 2
    )
    # the image is traced first: its layers' nodes are the ones without a call suffix (`q_proj` not `q_proj_1`)
    assert not [name for name in kept & set(linears) if not re.search(r"_\d+/(MatMul|Gemm)$", name)]


def test_int8_variant_is_smaller_and_close(exported):
    folder, manifest = exported
    sizes = manifest["sizes"]
    assert sizes["product_encoder_int8.onnx"] < sizes["product_encoder.onnx"]
    assert sizes["category_encoder_int8.onnx"] < sizes["category_encoder.onnx"]
    images, titles, attributes = random_products(40, seed=1)
    fp32, int8 = OnnxEncoder(folder, "fp32"), OnnxEncoder(folder, "int8")
    a = fp32.encode_products(images, titles, attributes, batch_size=16)
    b = int8.encode_products(images, titles, attributes, batch_size=16)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
    assert 0 < np.abs(a - b).max() and (a * b).sum(axis=1).min() > 0.98  # quantised, yet the same direction


def test_products_without_attributes_and_one_at_a_time(exported):
    folder, _ = exported
    model, _ = load_encoder(folder, "torch")
    onnx, _ = load_encoder(folder, "onnx")
    images, titles, _ = random_products(3, seed=2)
    empty = [[], [], []]
    expected = model.encode_products(images, titles, empty)
    np.testing.assert_allclose(onnx.encode_products(images, titles, empty), expected, atol=1e-5)
    np.testing.assert_allclose(onnx.encode_products(images, titles, empty, batch_size=1), expected, atol=1e-5)
    assert onnx.logit_scale == pytest.approx(float(model.logit_scale))


def test_repeated_attributes_are_fed_once_and_encode_as_in_pytorch(exported):
    folder, _ = exported
    model, processor = load_encoder(folder, "torch")
    onnx, _ = load_encoder(folder, "onnx")
    images, titles, _ = random_products(4, seed=3)
    attributes = [["colour: red", "material: glass"], [], ["colour: red"], ["material: glass", "colour: red"]]
    batch = processor(images=images, titles=titles, attributes=attributes, return_tensors="np")
    fed = distinct_attributes(batch)
    assert fed["attribute_input_ids"].shape[0] == 2 and int(batch["attribute_mask"].sum()) == 5
    real = batch["attribute_mask"].astype(bool)
    np.testing.assert_array_equal(  # each slot's row is its own string
        fed["attribute_input_ids"][fed["attribute_index"][real]], batch["attribute_input_ids"][real]
    )
    expected = model.encode_products(images, titles, attributes)
    np.testing.assert_allclose(onnx.encode_products(images, titles, attributes), expected, atol=1e-5)


def test_an_export_with_other_inputs_is_refused(exported, monkeypatch):
    import clipita.onnx_encoder as onnx_encoder

    folder, _ = exported
    monkeypatch.setitem(onnx_encoder.PRODUCT_INPUTS, "attributes", ("attribute_input_ids", "attribute_mask"))
    with pytest.raises(ValueError, match="exported by another version.*onnx_export"):
        OnnxEncoder(folder, "fp32")


def test_an_export_of_other_weights_is_refused(exported, tmp_path):
    folder = shutil.copytree(exported[0], tmp_path / "retrained")
    model, _ = tiny_model()
    with torch.no_grad():
        model.product_head.layers[0].bias.add_(1.0)
    model.save_pretrained(folder)
    with pytest.raises(ValueError, match="exported from other weights"):
        OnnxEncoder(folder)
    shutil.rmtree(folder / "onnx")
    with pytest.raises(FileNotFoundError, match="clipita.onnx_export"):
        OnnxEncoder(folder)


def test_search_builds_and_queries_on_onnx_like_on_torch(exported, tmp_path, capsys):
    folder, _ = exported
    generate_catalogue(tmp_path / "catalogue", num_products=120, progress=False)
    hits = {}
    for encoder in ("torch", "onnx"):
        build = ["build", "--model", str(folder), "--dataset", str(tmp_path / "catalogue"), "--split", "test"]
        out = tmp_path / f"index-{encoder}"
        assert (
            search_cli.main([*build, "--output", str(out), "--encoder", encoder, "--batch_size", "16"]) == 0
        )
        capsys.readouterr()
        query = [
            "query",
            "--index",
            str(out),
            "--json",
            "--k",
            "5",
            "--encoder",
            encoder,
            "Mugs",
            "Kids T-Shirts",
        ]
        assert search_cli.main(query) == 0
        hits[encoder] = [
            [(h["product_id"], h["score"]) for h in a["hits"]] for a in json.loads(capsys.readouterr().out)
        ]
    for torch_hits, onnx_hits in zip(hits["torch"], hits["onnx"]):
        assert [pid for pid, _ in onnx_hits] == [pid for pid, _ in torch_hits]
        np.testing.assert_allclose([s for _, s in onnx_hits], [s for _, s in torch_hits], atol=1e-4)


def test_weight_only_int8_is_closer_to_the_float_export(exported, tmp_path):
    folder = shutil.copytree(exported[0], tmp_path / "weight-only")
    manifest = add_int8(folder, "weight-only")
    assert manifest["int8_method"] == "weight-only" and "parity" not in manifest
    images, titles, attributes = random_products(40, seed=3)
    fp32 = OnnxEncoder(folder, "fp32").encode_products(images, titles, attributes)
    weight_only = OnnxEncoder(folder, "int8").encode_products(images, titles, attributes)
    dynamic = OnnxEncoder(exported[0], "int8").encode_products(images, titles, attributes)
    assert 0 < np.abs(weight_only - fp32).max() < np.abs(dynamic - fp32).max()


def test_mixed_int8_keeps_the_sensitive_nodes_float_and_is_closer_than_dynamic(exported, tmp_path):
    import onnx

    folder = shutil.copytree(exported[0], tmp_path / "mixed")
    manifest = add_int8(folder, "mixed")
    assert manifest["int8_method"] == "mixed" and "parity" not in manifest
    assert manifest["sizes"]["product_encoder_int8.onnx"] < manifest["sizes"]["product_encoder.onnx"]
    linears = tower_linears(onnx.load(str(folder / "onnx" / "product_encoder.onnx")))
    nodes = onnx.load(str(folder / "onnx" / "product_encoder_int8.onnx")).graph.node
    quantised = [
        node.name.removesuffix("_quant").removesuffix("_MatMul")
        for node in nodes
        if node.op_type == "MatMulInteger"
    ]
    assert any(linears.get(name, ("",))[0] == "vision" for name in quantised)  # the vision tower is int8
    float_kept = ("text_projection", "attribute_projection", "product_head")
    assert not [name for name in quantised if linears.get(name, ("",))[0:2] == ("text", 0)], quantised
    assert not [name for name in quantised if any(part in name for part in float_kept)], quantised
    assert not [node.name for node in nodes if node.op_type == "Gemm" and "_quant" in node.name]
    images, titles, attributes = random_products(40, seed=4)
    fp32 = OnnxEncoder(folder, "fp32").encode_products(images, titles, attributes)
    mixed = OnnxEncoder(folder, "int8").encode_products(images, titles, attributes)
    dynamic = OnnxEncoder(exported[0], "int8").encode_products(images, titles, attributes)
    assert 0 < np.abs(mixed - fp32).max() < 0.5 * np.abs(dynamic - fp32).max()


def test_release_cli_exports_onnx_into_the_folder_and_still_passes_its_checks(exported, tmp_path, capsys):
    import release as release_cli
    from clipita.card import render_model_card
    from tests.test_card import fake_eval_file, fake_training

    folder = tmp_path / "clip-ita"
    model, _ = save_tiny_release(folder)
    training_args, metrics = fake_training()
    render_model_card(folder, model_config=model.config, training_args=training_args, metrics=metrics)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(fake_eval_file(model=str(folder))))
    args = ["--model", str(folder), "--eval_results", str(results), "--onnx", "--skip_load_check"]
    assert release_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "onnx/product_encoder_int8.onnx" in out and "ready for the Hub" in out
    assert OnnxEncoder(folder, "int8").encode_categories(["Mugs"]).shape == (1, model.config.projection_dim)


def test_the_space_loads_and_answers_on_onnx_like_on_torch(exported, tmp_path):
    from space import answers, variants

    folder, _ = exported
    generate_catalogue(tmp_path / "catalogue", num_products=120, progress=False)
    build = ["build", "--model", str(folder), "--dataset", str(tmp_path / "catalogue"), "--split", "test"]
    assert search_cli.main([*build, "--output", str(tmp_path / "index"), "--batch_size", "16"]) == 0
    loaded = {
        encoder: variants.load_variants(
            [str(folder)], [str(tmp_path / "index")], cache_dir=tmp_path / encoder, encoder=encoder
        )[0]
        for encoder in ("torch", "onnx")
    }
    assert type(loaded["onnx"].model).__name__ == "OnnxEncoder"
    np.testing.assert_allclose(loaded["onnx"].category_embeds, loaded["torch"].category_embeds, atol=1e-5)
    assert loaded["onnx"].logit_scale == pytest.approx(loaded["torch"].logit_scale)
    rows = {encoder: answers.search_category(variant, "Mugs", 5)[1] for encoder, variant in loaded.items()}
    assert len(rows["torch"]) == 5
    assert [r["product_id"] for r in rows["onnx"]] == [r["product_id"] for r in rows["torch"]]


def test_export_cli_names_a_missing_folder_in_one_line(tmp_path, capsys):
    from clipita.onnx_export import main

    assert main(["--model", str(tmp_path / "missing")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path / 'missing'} is not a model folder (the export is written into it)"
    )
