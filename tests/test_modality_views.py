"""Auxiliary per-modality losses (issue 13): what the views are, the loss they add, and that feature-cache
accumulation still equals one big batch with them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from configuration_clipita import CLIPITAConfig
from modeling_clipita import MAX_LOGIT_SCALE, clipita_contrastive_loss
from tests.conftest import tiny_model
from tests.helpers.batches import fixed_batch, split
from tests.test_training_gradients import assert_same_gradients, step_gradients


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_views_per_setting():
    single, _ = tiny_model(modality_loss_weight=0.5)
    assert single.modality_views() == [["image"], ["title"], ["attributes"]]
    loo, _ = tiny_model(modality_loss_weight=0.5, modality_views="leave_one_out")
    assert loo.modality_views() == [["title", "attributes"], ["image", "attributes"], ["image", "title"]]
    assert tiny_model()[0].modality_views() == []  # off by weight 0: the paper
    assert tiny_model("clip-i", modality_loss_weight=0.5)[0].modality_views() == []  # one modality: no view
    for bad in ({"modality_loss_weight": -1.0}, {"modality_views": "pairs"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CLIPITAConfig(**bad)
    config = CLIPITAConfig(modality_loss_weight=0.25, modality_views="leave_one_out")
    again = CLIPITAConfig.from_dict(config.to_dict())
    assert (again.modality_loss_weight, again.modality_views) == (0.25, "leave_one_out")


@pytest.mark.parametrize("views", ["single", "leave_one_out"])
def test_loss_adds_the_weighted_mean_of_the_view_losses(views):
    model, processor = tiny_model(modality_loss_weight=0.5, modality_views=views)
    model.eval()
    batch = fixed_batch(model, processor)
    batch.pop("category_ids")
    out = model(**batch, return_loss=True)
    assert out.product_view_embeds.shape == (8, 3, model.config.projection_dim)
    # unit length, except a view with nothing in it (the attributes of a product without any pool to 0)
    parts = {"image": out.image_embeds, "title": out.title_embeds, "attributes": out.attribute_embeds}
    empty = torch.stack(
        [torch.stack([parts[m].abs().sum(-1) == 0 for m in view]).all(0) for view in model.modality_views()],
        1,
    )
    torch.testing.assert_close(out.product_view_embeds.norm(dim=-1), (~empty).float())

    # by hand: each view is the product head on the modality inputs with the others zeroed
    scale = model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    view_losses = []
    for view in model.modality_views():
        head_input = torch.cat([e if m in view else torch.zeros_like(e) for m, e in parts.items()], dim=-1)
        products = F.normalize(model.product_head(head_input), dim=-1)
        view_losses.append(clipita_contrastive_loss(out.category_embeds, products, scale))
    fused = clipita_contrastive_loss(out.category_embeds, out.product_embeds, scale)
    torch.testing.assert_close(out.loss, fused + 0.5 * torch.stack(view_losses).mean())
    assert not torch.allclose(out.loss, fused)

    # the views train only: embeddings (what is served) are the fused product alone
    assert model(**batch).product_view_embeds is None


@pytest.mark.parametrize("views", ["single", "leave_one_out"])
def test_feature_cache_accumulation_equals_one_big_batch_with_views(views):
    model, processor = tiny_model(loss_type="multi_positive", modality_loss_weight=0.5, modality_views=views)
    batch = fixed_batch(model, processor)
    big_loss, big = step_gradients(model, [batch])
    cached_loss, cached = step_gradients(model, split(batch, 4))
    assert cached_loss == pytest.approx(big_loss, abs=1e-5)
    assert_same_gradients(big, cached)
    plain_loss, _ = step_gradients(tiny_model(loss_type="multi_positive")[0], [batch])
    assert big_loss != pytest.approx(plain_loss, abs=1e-4)  # the views did add to the loss
