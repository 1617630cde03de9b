"""Matryoshka sizes: the config records them, the loss covers each, embeddings cut to them, eval and the index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configuration_clipita import CLIPITAConfig
from modeling_clipita import MAX_LOGIT_SCALE, clipita_contrastive_loss
from tests.conftest import tiny_model


def test_config_records_sizes_and_refuses_impossible_ones():
    config = CLIPITAConfig(projection_dim=64, matryoshka_dims=[16, 32, 16])
    assert config.matryoshka_dims == [32, 16]
    assert CLIPITAConfig.from_dict(config.to_dict()).matryoshka_dims == [32, 16]
    assert CLIPITAConfig(projection_dim=64).matryoshka_dims == []
    for bad in ([64], [0], [128]):
        with pytest.raises(ValueError, match="matryoshka_dims"):
            CLIPITAConfig(projection_dim=64, matryoshka_dims=bad)


def test_loss_is_the_mean_over_the_full_and_each_nested_size():
    model, _ = tiny_model(matryoshka_dims=[16, 8])
    generator = torch.Generator().manual_seed(0)
    categories = F.normalize(torch.randn(6, 32, generator=generator), dim=-1)
    products = F.normalize(torch.randn(6, 32, generator=generator), dim=-1)
    scale = model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    expected = [
        clipita_contrastive_loss(
            F.normalize(categories[:, :d], dim=-1), F.normalize(products[:, :d], dim=-1), scale
        )
        for d in (32, 16, 8)
    ]
    torch.testing.assert_close(model.contrastive_loss(categories, products), torch.stack(expected).mean())
    plain, _ = tiny_model()
    torch.testing.assert_close(
        plain.contrastive_loss(categories, products), clipita_contrastive_loss(categories, products, scale)
    )


def test_encode_cuts_and_renormalises(tiny):
    model, processor = tiny
    names = ["Ceramic Mugs", "Home > Kitchen", "Kids T-Shirts"]
    full = model.encode_categories(names, processor=processor)
    cut = model.encode_categories(names, processor=processor, dim=8)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-6)
    with pytest.raises(ValueError, match="dim must lie"):
        model.encode_categories(names, processor=processor, dim=33)


def test_eval_reports_each_size_and_the_index_takes_a_nested_size(tmp_path, capsys):
    from clipita.bootstrap import add_sentence_transformers_files, build_default_model, register_auto_classes
    from clipita.catalogue import generate_catalogue
    from clipita.data import load_catalogue
    from eval import main as eval_main
    from search import main as search_main

    catalogue = generate_catalogue(tmp_path / "catalogue", num_products=160, progress=False)
    train = load_catalogue(str(catalogue), "train")
    texts = [*train["title"], *(c for p in train["category"] for c in p)]
    model, processor = build_default_model(texts, hidden_size=32, layers=1, matryoshka_dims=[16, 8])
    register_auto_classes()
    model.save_pretrained(tmp_path / "clip-ita")
    processor.save_pretrained(tmp_path / "clip-ita")
    add_sentence_transformers_files(tmp_path / "clip-ita")

    args = ["--model", str(tmp_path / "clip-ita"), "--dataset", str(catalogue), "--split", "test"]
    results = eval_main(
        [*args, "--output", str(tmp_path / "r.json"), "--max_queries", "10", "--baselines", "none"]
    )
    nested = {run["name"]: run for run in results["baselines"]}
    assert set(nested) == {"clip-ita@16", "clip-ita@8"} and nested["clip-ita@8"]["dim"] == 8
    assert nested["clip-ita@16"]["settings"]["all"]["overall"]["P@10"] is not None

    build = ["build", "--model", str(tmp_path / "clip-ita"), "--dataset", str(catalogue), "--split", "test"]
    assert search_main([*build, "--output", str(tmp_path / "index16"), "--dim", "16"]) == 0
    manifest = json.loads((tmp_path / "index16" / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 16
    capsys.readouterr()
    assert search_main(["query", "--index", str(tmp_path / "index16"), "--json", "--k", "3", "Mugs"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    query = model.eval().encode_categories(["Mugs"], processor=processor, dim=16)
    best = float((np.load(tmp_path / "index16" / "embeddings.npy") @ query[0]).max())
    assert len(hits) == 3 and hits[0]["score"] == pytest.approx(best, abs=1e-4)  # the query was cut to 16 too
    not_trained = search_main([*build, "--output", str(tmp_path / "index12"), "--dim", "12"])
    assert not_trained == 2  # 12 is not one of the model's nested sizes

    from space import answers, variants

    (variant,) = variants.load_variants([None], [str(tmp_path / "index16")], cache_dir=tmp_path / "space")
    assert variant.dim == 16 and variant.category_embeds.shape[1] == 16
    rows = answers.search_category(variant, "Mugs", 3)[1]
    assert [r["product_id"] for r in rows] == [h["product_id"] for h in hits]
