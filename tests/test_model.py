"""CLIPITAModel, CLIPITAConfig, CLIPITAProcessor: shapes, loss, loading as remote code, bad input, and the
training setup's freezing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from clipita.bootstrap import register_auto_classes
from clipita.training.arguments import parse_args
from clipita.training.model_setup import build_model, enable_activation_checkpointing
from configuration_clipita import DEFAULT_LEARNABLE_TEMPERATURE, DEFAULT_TEMPERATURE, CLIPITAConfig
from modeling_clipita import CLIPITAModel, clipita_contrastive_loss
from tests.conftest import run_clean_python, tiny_model


def products(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]
    titles = [" ".join(["red ceramic mug premium"] * int(rng.integers(1, 4))) for _ in range(n)]
    attributes = [
        ["colour: red", "material: ceramic", "audience: kids"][: int(rng.integers(0, 4))] for _ in range(n)
    ]
    return images, titles, attributes


@pytest.mark.parametrize(
    ("variant", "modalities"),
    [
        ("clip-i", ["image"]),
        ("clip-ia", ["image", "attributes"]),
        ("clip-ita", ["image", "title", "attributes"]),
    ],
)
def test_output_shapes_per_variant(variant, modalities):
    model, processor = tiny_model(variant)
    assert model.config.product_modalities == modalities and model.config.variant == variant
    images, titles, attributes = products(5)
    batch = processor(images=images, titles=titles, attributes=attributes, categories=["Mugs"] * 5)
    out = model(**batch, return_loss=True)
    d = model.config.projection_dim
    assert out.product_embeds.shape == (5, d) and out.category_embeds.shape == (5, d)
    assert out.logits_per_category.shape == (5, 5)
    assert torch.allclose(out.logits_per_product, out.logits_per_category.t())
    assert torch.allclose(out.product_embeds.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert (out.title_embeds is not None) == ("title" in modalities)
    assert (out.attribute_embeds is not None) == ("attributes" in modalities)
    in_features = model.product_head.layers[0].in_features
    assert in_features == len(modalities) * model.config.clip_config.projection_dim


DISTINCT = ["Ceramic Mugs", "Kids T-Shirts", "Glass Mugs", "Lamps", "Red Cups", "Chairs", "Shoes", "Watches"]


@pytest.mark.parametrize(
    ("overrides", "categories"),
    [
        ({}, DISTINCT),
        # repeated categories: only the multi-positive loss can drive the loss towards zero
        ({"attribute_pooling": "attention", "loss_type": "multi_positive"}, DISTINCT[:4] * 2),
    ],
)
def test_loss_falls_when_overfitting_one_batch(overrides, categories):
    torch.manual_seed(0)
    model, processor = tiny_model(**overrides)
    images, titles, attributes = products(8)
    batch = processor(images=images, titles=titles, attributes=attributes, categories=categories)
    category_ids = torch.tensor([DISTINCT.index(c) for c in categories])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(30):
        loss = model(**batch, return_loss=True, category_ids=category_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_loss_matches_the_paper_formula():
    torch.manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    sims = c @ p.t()  # t = 1 (paper)
    l_cp = -torch.log(torch.exp(sims.diag()) / torch.exp(sims).sum(1))
    l_pc = -torch.log(torch.exp(sims.diag()) / torch.exp(sims).sum(0))
    expected = (0.3 * l_pc + 0.7 * l_cp).mean()
    assert torch.allclose(clipita_contrastive_loss(c, p, 1.0, loss_lambda=0.3), expected, atol=1e-6)


def test_multi_positive_loss_drops_same_category_negatives():
    torch.manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([0, 0, 1, 2])
    sims = c @ p.t()
    keep = ~((ids[:, None] == ids[None, :]) & ~torch.eye(4, dtype=torch.bool))
    e = torch.exp(sims) * keep
    l_cp = -torch.log(torch.exp(sims.diag()) / e.sum(1))
    l_pc = -torch.log(torch.exp(sims.diag()) / e.sum(0))
    expected = (0.5 * l_pc + 0.5 * l_cp).mean()
    got = clipita_contrastive_loss(c, p, 1.0, category_ids=ids)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, clipita_contrastive_loss(c, p, 1.0))


def test_path_positive_loss_drops_the_negatives_on_each_products_path():
    torch.manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    # nodes: 0 Home, 1 Home>Kitchen, 2 Home>Kitchen>Mugs, 3 Fashion, 4 Fashion>Shoes
    paths = torch.tensor([[0, 1, 2], [0, 1, -1], [3, 4, -1], [0, 1, 2]])
    ids = torch.tensor([2, 0, 4, 1])  # pair 1 is Home, pair 3 Home>Kitchen: on products 0's and 3's paths
    sims = c @ p.t()
    on_path = torch.tensor(
        [
            [False, False, False, True],
            [True, False, False, True],
            [False, False, False, False],
            [True, True, False, False],
        ]
    )  # category j on product k's path, k != j
    e = torch.exp(sims) * ~on_path
    l_cp = -torch.log(torch.exp(sims.diag()) / e.sum(1))
    l_pc = -torch.log(torch.exp(sims.diag()) / e.sum(0))
    expected = (0.5 * l_pc + 0.5 * l_cp).mean()
    got = clipita_contrastive_loss(c, p, 1.0, category_ids=ids, path_ids=paths)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, clipita_contrastive_loss(c, p, 1.0, category_ids=ids))


def test_path_positive_loss_needs_the_paths():
    model, _ = tiny_model(loss_type="path_positive")
    c = torch.nn.functional.normalize(torch.randn(2, model.config.projection_dim), dim=-1)
    with pytest.raises(ValueError, match="path_ids"):
        model.contrastive_loss(c, c, torch.tensor([0, 1]))


@pytest.mark.slow  # a fresh interpreter
def test_save_and_load_as_remote_code_in_a_clean_process(tmp_path):
    model, processor = tiny_model()
    folder = tmp_path / "clip-ita"
    register_auto_classes()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_clipita.CLIPITAModel"
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    for name in ("configuration_clipita.py", "modeling_clipita.py", "processing_clipita.py"):
        assert (folder / name).exists()
    images, titles, attributes = products(3)
    categories = ["Ceramic Mugs", "Home > Kitchen", "マグカップ"]
    expected_c = model.encode_categories(categories, processor=processor)
    expected_p = model.encode_products(
        images=images, titles=titles, attributes=attributes, processor=processor
    )
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    np.save(tmp_path / "expected_c.npy", expected_c)
    np.save(tmp_path / "expected_p.npy", expected_p)
    code = f"""
import numpy as np
from PIL import Image
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
assert type(model).__name__ == "CLIPITAModel" and type(processor).__name__ == "CLIPITAProcessor"
images = [Image.open({str(tmp_path)!r} + f"/{{i}}.png") for i in range(3)]
c = model.encode_categories({categories!r})
p = model.encode_products(images=images, titles={titles!r}, attributes={attributes!r})
np.testing.assert_allclose(c, np.load({str(tmp_path)!r} + "/expected_c.npy"), atol=1e-5)
np.testing.assert_allclose(p, np.load({str(tmp_path)!r} + "/expected_p.npy"), atol=1e-5)
print("same embeddings")
"""
    assert "same embeddings" in run_clean_python(code, cwd=tmp_path).stdout


def test_from_clip_copies_clip_weights_exactly(tmp_path):
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    clip_config = CLIPConfig(
        text_config={**tiny, "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**tiny, "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )
    torch.manual_seed(1)
    clip = CLIPModel(clip_config).eval()
    clip.save_pretrained(tmp_path / "clip")
    model = CLIPITAModel.from_clip(str(tmp_path / "clip"), product_modalities=["image"]).eval()
    assert model.config.base_clip_model == str(tmp_path / "clip")
    assert model.config.projection_dim == 24
    pixels = torch.randn(3, 3, 32, 32)
    ids = torch.tensor([[0, 5, 6, 1], [0, 7, 1, 1]])
    with torch.no_grad():
        plain_image = clip.get_image_features(pixel_values=pixels).pooler_output
        plain_text = clip.get_text_features(input_ids=ids).pooler_output
        # same names, same meaning as transformers' CLIPModel: output objects, projected, not normalised
        image, text = model.get_image_features(pixels), model.get_text_features(ids)
        assert isinstance(image, BaseModelOutputWithPooling) and isinstance(text, BaseModelOutputWithPooling)
        assert torch.equal(image.pooler_output, plain_image)
        assert torch.equal(text.pooler_output, plain_text)
    for name, tensor in clip.state_dict().items():
        assert torch.equal(model.clip.state_dict()[name], tensor), name


def test_embeddings_do_not_depend_on_the_batch(tiny):
    model, processor = tiny
    images, titles, attributes = products(6, seed=3)
    titles[2] = "a much longer title " * 10  # changes the batch's padding length
    attributes[4] = [f"key{i}: value {i}" for i in range(7)]  # and its attribute count
    together = model.encode_products(images=images, titles=titles, attributes=attributes, processor=processor)
    alone = np.concatenate(
        [
            model.encode_products(images=[im], titles=[t], attributes=[a], processor=processor)
            for im, t, a in zip(images, titles, attributes)
        ]
    )
    np.testing.assert_allclose(together, alone, atol=1e-5)
    cats = ["Mugs", "a very long category name " * 5, "Lamps"]
    np.testing.assert_allclose(
        model.encode_categories(cats, processor=processor),
        np.concatenate([model.encode_categories([c], processor=processor) for c in cats]),
        atol=1e-5,
    )


def test_processor_handles_awkward_products(tiny):
    model, processor = tiny
    palette = Image.new("P", (20, 30))
    palette.putpalette([i % 256 for i in range(768)])
    images = [
        Image.new("L", (50, 40), 128),
        Image.new("RGBA", (33, 33), (255, 0, 0, 0)),
        palette,
        Image.new("CMYK", (64, 80), (0, 255, 255, 0)),
        Image.new("I;16", (16, 16)),
    ]
    titles = ["word " * 500, "", "陶瓷马克杯 红色", "Кружка керамическая", None]
    attributes = [[], {"colour": "red", "material": "ceramic"}, ["colour: 赤"], None, ["a: b"] * 40]
    batch = processor(images=images, titles=titles, attributes=attributes, categories=["Mugs"] * 5)
    assert batch["pixel_values"].shape == (5, 3, 32, 32)
    assert batch["title_input_ids"].shape[1] <= 77  # the 500-word title is truncated
    # to the text tower's positions, which the tokenizer's limit comes from
    positions = model.config.clip_config.text_config.max_position_embeddings
    assert processor.tokenizer.model_max_length == positions == batch["title_input_ids"].shape[1]
    assert batch["attribute_input_ids"].shape[:2] == (5, processor.max_attributes)
    assert batch["attribute_mask"].sum(1).tolist() == [0, 2, 1, 0, processor.max_attributes]
    transparent_red = processor.image_processor(images=[Image.new("RGB", (33, 33), (255, 255, 255))])
    assert torch.allclose(batch["pixel_values"][1], torch.as_tensor(transparent_red["pixel_values"][0]))
    out = model(**batch)
    assert torch.isfinite(out.product_embeds).all()


def test_category_formats(tiny):
    _, processor = tiny
    assert processor.category_text("Home > Kitchen > Mugs") == "Mugs"
    assert processor.category_text(["Home", "Kitchen"]) == "Kitchen"
    processor.category_format = "path"
    assert processor.category_text(["Home", "Kitchen"]) == "Home > Kitchen"
    with pytest.raises(ValueError, match="empty category"):
        processor.category_text(" > ")


def test_empty_attribute_lists_pool_to_the_no_attributes_embedding(tiny):
    model, processor = tiny
    with torch.no_grad():
        model.attribute_pooler.empty_embedding.fill_(0.25)
    batch = processor(attributes=[[], ["colour: red"], []])
    pooled = model.encode_attributes(
        batch["attribute_input_ids"], batch["attribute_attention_mask"], batch["attribute_mask"]
    )
    assert torch.isfinite(pooled).all()
    assert torch.allclose(pooled[0], torch.full_like(pooled[0], 0.25)) and torch.allclose(
        pooled[0], pooled[2]
    )
    assert not torch.allclose(pooled[1], pooled[0])
    all_empty = processor(attributes=[[], []])
    assert torch.isfinite(model.encode_attributes(**{k: v for k, v in all_empty.items()})).all()


def test_missing_modality_is_a_clear_error(tiny):
    model, processor = tiny
    images, titles, _ = products(2)
    batch = processor(images=images, titles=titles, categories=["Mugs", "Lamps"])
    with pytest.raises(ValueError, match="attributes.*attribute_input_ids"):
        model(**batch)
    with pytest.raises(ValueError, match="lacks titles"):
        model.encode_products(images=images, attributes=[[], []], processor=processor)
    with pytest.raises(ValueError, match="one entry per product"):
        processor(images=images, titles=["only one"])


def test_config_validates_its_knobs():
    with pytest.raises(ValueError, match="product_modalities"):
        CLIPITAConfig(product_modalities=["image", "price"])
    with pytest.raises(ValueError, match="attribute_pooling"):
        CLIPITAConfig(attribute_pooling="max")
    with pytest.raises(ValueError, match="unknown variant"):
        CLIPITAConfig.for_variant("clip-x")
    assert CLIPITAConfig.for_variant("clip-ia").product_modalities == ["image", "attributes"]


def test_training_setup_freezes_what_the_args_say_also_on_resume(tmp_path):
    from datasets import Dataset

    rows = Dataset.from_dict(
        {
            "title": ["red ceramic mug"] * 4,
            "attributes": [["colour: red"]] * 4,
            "category": [["Home", "Mugs"]] * 4,
        }
    )
    tiny = ["--hidden_size", "32", "--num_hidden_layers", "1", "--image_size", "32"]

    def assert_frozen(model, vision, text):
        clip = model.clip
        for modules, frozen in (
            ((clip.vision_model, clip.visual_projection), vision),
            ((clip.text_model, clip.text_projection), text),
        ):
            assert all(p.requires_grad != frozen for m in modules for p in m.parameters())
        assert not clip.logit_scale.requires_grad  # unused: CLIP-ITA has its own temperature
        assert all(p.requires_grad for p in model.product_head.parameters())
        assert all(p.requires_grad for p in model.attribute_projection.parameters())

    for flags, vision, text in (
        (["--freeze_towers"], True, True),
        (["--freeze_vision"], True, False),
        ([], False, False),
    ):
        args = parse_args([*tiny, *flags])
        model, _ = build_model(args, rows)
        assert_frozen(model, vision, text)
        # a resumed run builds its model the same way, then loads the checkpoint's weights into it
        state = {k: v + 1 for k, v in model.state_dict().items()}
        resumed, _ = build_model(args, rows)
        resumed.load_state_dict(state)
        assert_frozen(resumed, vision, text)
        if vision and text:
            resumed.save_pretrained(tmp_path)
    # freezing is the run's choice, not the model's: a saved model loads with everything trainable
    assert "freeze" not in (tmp_path / "config.json").read_text()
    reloaded = CLIPITAModel.from_pretrained(tmp_path)
    assert all(p.requires_grad for name, p in reloaded.named_parameters() if name != "clip.logit_scale")


def test_one_temperature_default_for_config_command_line_and_default_model():
    config = CLIPITAConfig()
    args = parse_args([])
    model, _ = tiny_model()
    assert config.contrastive_temperature == args.temperature == DEFAULT_TEMPERATURE
    assert config.learnable_temperature == args.learnable_temperature == DEFAULT_LEARNABLE_TEMPERATURE
    assert model.config.contrastive_temperature == DEFAULT_TEMPERATURE
    assert torch.allclose(model.logit_scale, torch.tensor(math.log(1 / DEFAULT_TEMPERATURE)))
    assert model.logit_scale.requires_grad == DEFAULT_LEARNABLE_TEMPERATURE


def test_a_fixed_temperature_stays_fixed_after_reload(tmp_path):
    model, _ = tiny_model(contrastive_temperature=1.0, learnable_temperature=False)
    model.save_pretrained(tmp_path)
    reloaded = CLIPITAModel.from_pretrained(tmp_path)
    for m in (model, reloaded):
        assert not m.logit_scale.requires_grad and m.logit_scale.item() == 0.0


@pytest.mark.slow  # a fresh interpreter
def test_importing_bootstrap_registers_no_auto_class(tmp_path):
    code = """
import clipita.bootstrap
from configuration_clipita import CLIPITAConfig
from modeling_clipita import CLIPITAModel
from processing_clipita import CLIPITAProcessor
assert CLIPITAModel._auto_class is None and CLIPITAConfig._auto_class is None
assert CLIPITAProcessor._auto_class is None
clipita.bootstrap.register_auto_classes()
assert CLIPITAModel._auto_class == "AutoModel" and CLIPITAProcessor._auto_class == "AutoProcessor"
print("explicit")
"""
    assert "explicit" in run_clean_python(code, cwd=tmp_path).stdout


def test_encode_helpers_leave_the_model_trainable(tiny):
    model, processor = tiny
    model.train()
    categories = model.encode_categories(["Mugs", "Lamps"], convert_to_numpy=False, processor=processor)
    assert isinstance(categories, torch.Tensor) and not categories.is_inference()
    assert model.training  # restored after encoding
    categories.requires_grad_(True)  # impossible on an inference-mode tensor
    batch = processor(categories=["Mugs", "Lamps"])
    loss = (
        model.get_category_features(batch["category_input_ids"], batch["category_attention_mask"])
        * categories
    ).sum()
    loss.backward()
    assert model.category_head.layers[0].weight.grad is not None


def test_forward_passes_transformers_kwargs_on_to_the_towers(tiny):
    model, processor = tiny
    model.set_attn_implementation("eager")  # attention weights need eager attention
    images, titles, attributes = products(3)
    attributes[0] = ["colour: red"]
    batch = processor(images=images, titles=titles, attributes=attributes, categories=["a", "b", "c"])
    out = model(**batch, output_attentions=True, output_hidden_states=True)
    layers = model.config.clip_config.text_config.num_hidden_layers
    towers = ("vision_model_output", "title_model_output", "attribute_model_output", "category_model_output")
    for name in towers:
        tower = getattr(out, name)
        assert len(tower.attentions) == layers and len(tower.hidden_states) == layers + 1, name
    assert out.attribute_model_output.pooler_output.shape[0] == int(batch["attribute_mask"].sum())
    plain = model(**batch)
    assert plain.vision_model_output.attentions is None
    assert torch.allclose(out.product_embeds, plain.product_embeds, atol=1e-6)
    as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], plain.logits_per_category)


def test_gradient_checkpointing_and_attention_pass_through():
    model, processor = tiny_model(attn_implementation="eager")
    assert model.clip.text_model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    assert model.clip.vision_model.config._attn_implementation == "sdpa"
    enable_activation_checkpointing(model)  # the current name, warning-free on every transformers 5
    assert model.clip.vision_model.encoder.gradient_checkpointing
    assert model.clip.text_model.encoder.gradient_checkpointing
    model.train()
    images, titles, attributes = products(3)
    batch = processor(images=images, titles=titles, attributes=attributes, categories=["a", "b", "c"])
    model(**batch, return_loss=True).loss.backward()
    assert model.clip.vision_model.encoder.layers[0].mlp.fc1.weight.grad is not None
