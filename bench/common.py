"""The benchmarks' shared workload: synthetic products and the two model configurations they time.

Both sides of every comparison get the same products, so a ratio measures the models, not the data.
Weights are random (the Hub is out of reach); they do not change speed or FLOPs.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipita.bootstrap import build_default_model, image_processor_for, train_clip_tokenizer
from configuration_clipita import CLIPITAConfig
from modeling_clipita import CLIPITAModel
from processing_clipita import CLIPITAProcessor

CONFIGS = ("default", "vit-b-32")
IMAGE_PIXELS = 256  # raw product photos are resized by the processor, as real shop images are
TITLE_WORDS = 15
ATTRIBUTES_PER_PRODUCT = 5

_ADJECTIVES = "red blue green black white premium organic cotton ceramic steel wooden leather vintage large small".split()
_NOUNS = "mug shirt lamp chair sneaker bottle jacket helmet clock vase kettle backpack pillow watch".split()
_EXTRA = "for kids women men home office travel gift set pack with lid handle zip pocket 12 oz xl".split()
_ATTRIBUTES = {
    "colour": ["red", "blue", "green", "black", "white", "navy blue"],
    "material": ["ceramic", "stainless steel", "organic cotton", "oak wood", "leather"],
    "size": ["small", "medium", "large", "xl", "12 x 8 inches"],
    "brand": ["acme", "northwind", "globex", "initech", "umbrella"],
    "audience": ["kids", "women", "men", "unisex"],
    "pattern": ["stripes", "solid", "floral", "checked"],
    "care": ["machine wash", "hand wash only", "dishwasher safe"],
}
_TREE = {
    "Home": {"Kitchen": ["Mugs", "Kettles", "Bottles"], "Decor": ["Clocks", "Vases", "Pillows"]},
    "Fashion": {"Tops": ["T-Shirts", "Jackets"], "Shoes": ["Sneakers", "Boots"]},
    "Sports": {"Cycling": ["Helmets", "Helmet Liners"], "Outdoor": ["Backpacks", "Watches"]},
}
CATEGORY_PATHS = [
    [root, mid, leaf] for root, mids in _TREE.items() for mid, leaves in mids.items() for leaf in leaves
]


@dataclass
class Products:
    """Columns of the canonical catalogue schema, as lists (one entry per product)."""

    images: list[Image.Image]
    titles: list[str]
    attributes: list[list[str]]
    categories: list[list[str]]

    def __len__(self) -> int:
        return len(self.titles)

    def slice(self, start: int, stop: int) -> Products:
        return Products(
            self.images[start:stop],
            self.titles[start:stop],
            self.attributes[start:stop],
            self.categories[start:stop],
        )


def synthetic_products(count: int, seed: int = 0) -> Products:
    """Products shaped like a shop's: a 256 px photo (a coloured object on a background), a ~15-word
    title, 5 "key: value" attributes and a 3-level category path."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    images, titles, attributes, categories = [], [], [], []
    for _ in range(count):
        image = Image.new(
            "RGB", (IMAGE_PIXELS, IMAGE_PIXELS), tuple(int(c) for c in np_rng.integers(0, 256, 3))
        )
        box = sorted(np_rng.integers(16, IMAGE_PIXELS - 16, 2).tolist())
        ImageDraw.Draw(image).ellipse(
            (box[0], box[0], box[1] + 8, box[1] + 8), fill=tuple(int(c) for c in np_rng.integers(0, 256, 3))
        )
        images.append(image)
        words = rng.sample(_ADJECTIVES, 3) + [rng.choice(_NOUNS)] + rng.choices(_EXTRA, k=TITLE_WORDS - 4)
        titles.append(" ".join(words))
        keys = rng.sample(sorted(_ATTRIBUTES), ATTRIBUTES_PER_PRODUCT)
        attributes.append([f"{key}: {rng.choice(_ATTRIBUTES[key])}" for key in keys])
        categories.append(rng.choice(CATEGORY_PATHS))
    return Products(images, titles, attributes, categories)


def synthetic_category_names(count: int, seed: int = 0) -> list[str]:
    """Category names like a shop's leaves ("Vintage Lamps"), `count` of them (repeats once exhausted)."""
    rng = random.Random(seed)
    leaves = [path[-1] for path in CATEGORY_PATHS]
    made = [f"{a.title()} {n.title()}s" for a in _ADJECTIVES for n in _NOUNS]
    rng.shuffle(made)
    names = leaves + made
    return [names[i % len(names)] for i in range(count)]


def tokenizer_texts(products: Products) -> list[str]:
    """The catalogue text a tokenizer is trained on: titles, attributes and category names."""
    return (
        products.titles
        + [a for product in products.attributes for a in product]
        + [" > ".join(path) for path in CATEGORY_PATHS]
    )


def build_model(
    config: str, seed: int = 0, texts: list[str] | None = None
) -> tuple[CLIPITAModel, CLIPITAProcessor]:
    """A CLIP-ITA model and processor for one of CONFIGS, random weights.

    `default`: the project's small from-scratch model (`clipita.bootstrap.build_default_model`:
    hidden 128, 3 layers per tower, 64 px images). `vit-b-32`: `CLIPConfig()` defaults (the
    openai/clip-vit-base-patch32 architecture: ViT-B/32 at 224 px, 12-layer 512-wide text tower,
    vocabulary 49408) under `CLIPITAConfig(projection_dim=512)`. Its tokenizer is trained locally
    (a few thousand ids, all inside the 49408-row embedding); only token counts depend on it (they
    may differ somewhat from OpenAI's BPE, which cannot be downloaded here). `texts`: the tokenizer's
    corpus (default: synthetic products' text).
    """
    if texts is None:
        texts = tokenizer_texts(synthetic_products(400, seed=seed + 1))
    if config == "default":
        return build_default_model(texts, seed=seed)
    if config != "vit-b-32":
        raise ValueError(f"unknown config {config!r}; choose one of {CONFIGS}")
    from transformers import CLIPConfig

    tokenizer = train_clip_tokenizer(texts)
    clip_config = CLIPConfig(
        text_config={
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    if len(tokenizer) > clip_config.text_config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} ids, more than ViT-B/32's {clip_config.text_config.vocab_size}"
        )
    torch.manual_seed(seed)
    model = CLIPITAModel(CLIPITAConfig(clip_config=clip_config, projection_dim=512))
    processor = CLIPITAProcessor(image_processor_for(clip_config.vision_config.image_size), tokenizer)
    return model, processor


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every benchmark takes: what to run, where, and in quick mode or not."""
    parser.add_argument(
        "--config", choices=CONFIGS, default="default", help="model size (see bench/common.py)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--quick", action="store_true", help="a small run, under a minute on 2 CPU cores")
    parser.add_argument("--seed", type=int, default=0)


def apply_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
