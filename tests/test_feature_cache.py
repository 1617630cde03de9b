"""Frozen towers with cached features: the same training as without the cache, the features read back by a
repeated run, recomputed when the weights change, and the combinations it cannot support refused; and the
training images' processed pixels kept between epochs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from clipita.training import parse_args, train
from clipita.training.feature_cache import FOLDER, TowerFeatureCache, check_cacheable
from clipita.training.model_setup import freeze_towers
from clipita.training.pixel_cache import with_pixel_memo
from tests.conftest import tiny_model
from tests.helpers.batches import fixed_batch, gradients
from tests.helpers.tiny_catalogue import tiny_catalogue
from tests.helpers.train_tiny import tiny_args


def frozen_tiny(**overrides):
    model, processor = tiny_model(**overrides)
    freeze_towers(model, vision=True, text=True)
    return model, processor


def step(model, batch) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(**{k: v for k, v in batch.items() if k != "category_ids"}, return_loss=True).loss
    loss.backward()
    return loss.item(), gradients(model)


def test_cached_features_give_the_uncached_step_and_are_read_back(tmp_path):
    model, processor = frozen_tiny()
    batch = fixed_batch(model, processor)
    expected_loss, expected = step(copy.deepcopy(model), batch)

    cache = TowerFeatureCache(model, tmp_path, check_cacheable(model))
    cache.install()
    for _ in range(2):  # the first step computes the features, the second reads them
        loss, grads = step(model, batch)
        assert loss == pytest.approx(expected_loss, abs=1e-6)
        assert grads.keys() == expected.keys() and not any(k.startswith("clip.") for k in grads)
        for name in expected:
            torch.testing.assert_close(grads[name], expected[name], rtol=1e-5, atol=1e-6)
    computed = dict(cache.computed)
    assert computed["image"] == 8 and 0 < computed["text"] < 8 + 8 + int(batch["attribute_mask"].sum())
    cache.save()
    cache.uninstall()

    again = TowerFeatureCache(model, tmp_path, ["image", "text"])  # a repeated run: same data, same weights
    again.install()
    assert step(model, batch)[0] == pytest.approx(expected_loss, abs=1e-6)
    assert again.computed == {"image": 0, "text": 0}
    again.uninstall()

    with torch.no_grad():
        model.clip.visual_projection.weight.add_(0.01)  # other weights: other features, another folder
    changed = TowerFeatureCache(model, tmp_path, ["image", "text"])
    changed.install()
    step(model, batch)
    assert changed.computed["image"] == 8 and changed.folder != cache.folder
    shards = sorted((tmp_path / FOLDER / cache.folder.name).glob("*.safetensors"))
    assert [p.name.split("-")[0] for p in shards] == ["image", "text"]
    assert load_file(shards[0])["features"].shape[0] == 8


def test_only_the_frozen_tower_is_cached(tmp_path):
    model, processor = tiny_model()
    freeze_towers(model, vision=True, text=False)
    assert check_cacheable(model) == ["image"]
    cache = TowerFeatureCache(model, tmp_path, check_cacheable(model))
    cache.install()
    _, grads = step(model, fixed_batch(model, processor))
    assert any(k.startswith("clip.text_model.") for k in grads)  # the text tower still trains
    assert not any(k.startswith("clip.vision_model.") for k in grads)


def test_refuses_what_it_cannot_cache():
    model, _ = tiny_model()
    freeze_towers(model, vision=False, text=False)
    with pytest.raises(ValueError, match="needs a frozen tower"):
        check_cacheable(model)
    model, _ = frozen_tiny()
    model.config.clip_config.vision_config.attention_dropout = 0.1
    with pytest.raises(ValueError, match="image tower draws dropout"):
        check_cacheable(model)
    with pytest.raises(SystemExit):
        parse_args(tiny_args("unused", "--cache_tower_features"))


@pytest.mark.slow  # two tiny trainings
def test_cached_frozen_run_equals_the_uncached_one(tmp_path):
    flags = ("--freeze_towers", "--max_steps", "6", "--eval_steps", "3", "--save_steps", "3")
    data = tiny_catalogue()
    train(parse_args(tiny_args(tmp_path / "plain", *flags)), dataset=data)
    train(parse_args(tiny_args(tmp_path / "cached", *flags, "--cache_tower_features")), dataset=data)
    expected, actual = (load_file(tmp_path / run / "model.safetensors") for run in ("plain", "cached"))
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5)
    plain, cached = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("plain", "cached"))
    assert [s for s, _ in cached["history"]["loss"]] == [s for s, _ in plain["history"]["loss"]]
    assert [loss for _, loss in cached["history"]["loss"]] == pytest.approx(
        [loss for _, loss in plain["history"]["loss"]], abs=1e-4
    )
    assert cached["validation"]["last"]["overall"] == pytest.approx(plain["validation"]["last"]["overall"])
    assert any((tmp_path / "cached" / FOLDER).glob("*/image-*.safetensors"))


def test_pixel_memo_gives_the_processors_pixels_once_per_image():
    _, processor = tiny_model()
    images = tiny_catalogue(num_train=6, num_validation=1)["train"]["image"]
    batch = [images[0], images[1], images[0], images[2]]
    expected = processor(images=batch)["pixel_values"]
    memoised = with_pixel_memo(processor, max_bytes=2**30)
    assert memoised is not processor and processor.image_processor is not memoised.image_processor
    for _ in range(2):
        torch.testing.assert_close(memoised(images=batch)["pixel_values"], expected, rtol=0, atol=0)
    memo = memoised.image_processor
    assert (memo.misses, memo.hits, len(memo.rows)) == (3, 5, 3)

    one_row = with_pixel_memo(processor, max_bytes=expected[0].numel() * 4)  # room for one image only
    for _ in range(2):
        torch.testing.assert_close(one_row(images=batch)["pixel_values"], expected, rtol=0, atol=0)
    assert len(one_row.image_processor.rows) == 1
    assert with_pixel_memo(processor, max_bytes=0) is processor
