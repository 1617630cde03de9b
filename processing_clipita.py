"""CLIPITAProcessor: raw products and categories -> CLIP-ITA model inputs.

Wraps a CLIP image processor and a CLIP tokenizer (the same class serves openai/clip-* checkpoints
and the project's locally trained tokenizer). Ships to the Hub as remote code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

CATEGORY_FORMATS = ("leaf", "path")


def to_rgb(image) -> Image.Image:
    """Any PIL mode (L, P, RGBA, LA, CMYK, I;16, ...) or an HxWxC uint8 array -> RGB; transparency over white."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        span = array.max() - array.min()
        array = (array - array.min()) / span * 255.0 if span > 0 else np.zeros_like(array)
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def attribute_strings(attributes) -> list[str]:
    """A product's attributes as "key: value" strings, from a list of strings, a dict, or None."""
    if attributes is None:
        return []
    if isinstance(attributes, Mapping):
        return [
            f"{key}: {value}" for key, value in attributes.items() if value is not None and str(value).strip()
        ]
    if isinstance(attributes, str):
        raise TypeError(
            f'attributes must be a list of "key: value" strings or a dict, got the string {attributes!r}'
        )
    return [str(a).strip() for a in attributes if a is not None and str(a).strip()]


class CLIPITAProcessor(ProcessorMixin):
    r"""One call turns products and categories into the tensors `CLIPITAModel` takes.

    Args:
        image_processor: a CLIP image processor.
        tokenizer: a CLIP tokenizer.
        max_attributes (`int`): attributes kept per product (the rest are dropped).
        category_format (`str`): how a category path becomes text: `"leaf"` ("Mugs", the paper's
            category name) or `"path"` ("Home > Kitchen > Mugs").
        category_separator (`str`): separator of category paths given as one string.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_attributes: int = 16,
        category_format: str = "leaf",
        category_separator: str = " > ",
        **kwargs,
    ):
        if category_format not in CATEGORY_FORMATS:
            raise ValueError(f"category_format must be one of {CATEGORY_FORMATS}, got {category_format!r}")
        self.max_attributes = max_attributes
        self.category_format = category_format
        self.category_separator = category_separator
        super().__init__(image_processor, tokenizer, **kwargs)

    def category_text(self, category: str | Sequence[str]) -> str:
        """A category name, a path list or an "A > B > C" string -> the text the model encodes."""
        if isinstance(category, str):
            path = [part.strip() for part in category.split(self.category_separator.strip())]
        else:
            path = [str(part).strip() for part in category]
        path = [part for part in path if part]
        if not path:
            raise ValueError(f"empty category: {category!r}")
        return path[-1] if self.category_format == "leaf" else " > ".join(path)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # model_max_length is the text tower's positions (77 for CLIP), set when the tokenizer is built.
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _tokenize_attributes(self, attributes: Sequence) -> dict[str, torch.Tensor]:
        per_product = [attribute_strings(a)[: self.max_attributes] for a in attributes]
        batch, width = len(per_product), max(1, max((len(a) for a in per_product), default=0))
        flat = [text for product in per_product for text in product]
        encoded = self._tokenize(flat) if flat else None
        length = encoded["input_ids"].shape[1] if flat else 2
        input_ids = torch.full((batch, width, length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width, length), dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        if flat:
            rows = [(i, j) for i, product in enumerate(per_product) for j in range(len(product))]
            index_i = torch.tensor([i for i, _ in rows])
            index_j = torch.tensor([j for _, j in rows])
            input_ids[index_i, index_j] = encoded["input_ids"]
            attention_mask[index_i, index_j] = encoded["attention_mask"]
            mask[index_i, index_j] = 1
        return {
            "attribute_input_ids": input_ids,
            "attribute_attention_mask": attention_mask,
            "attribute_mask": mask,
        }

    def __call__(
        self,
        images=None,
        titles: Sequence[str | None] | str | None = None,
        attributes: Sequence | None = None,
        categories: Sequence | str | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Products (`images`, `titles`, `attributes`, one entry per product) and/or `categories`."""
        if images is None and titles is None and attributes is None and categories is None:
            raise ValueError("nothing to process: give images, titles, attributes and/or categories")
        data: dict[str, torch.Tensor] = {}
        if images is not None:
            images = [images] if isinstance(images, (Image.Image, np.ndarray)) else list(images)
            rgb = [to_rgb(image) for image in images]
            data["pixel_values"] = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        if titles is not None:
            titles = [titles] if isinstance(titles, str) else list(titles)
            encoded = self._tokenize([" ".join(str(t or "").split()) for t in titles])
            data["title_input_ids"], data["title_attention_mask"] = (
                encoded["input_ids"],
                encoded["attention_mask"],
            )
        if attributes is not None:
            if isinstance(attributes, Mapping):
                attributes = [attributes]
            data.update(self._tokenize_attributes(list(attributes)))
        if categories is not None:
            categories = [categories] if isinstance(categories, str) else list(categories)
            encoded = self._tokenize([self.category_text(c) for c in categories])
            data["category_input_ids"] = encoded["input_ids"]
            data["category_attention_mask"] = encoded["attention_mask"]
        sizes = {k: v.shape[0] for k, v in data.items() if not k.startswith("category")}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"images, titles and attributes must have one entry per product, got batch sizes {sizes}"
            )
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return [
            "pixel_values",
            "title_input_ids",
            "title_attention_mask",
            "attribute_input_ids",
            "attribute_attention_mask",
            "attribute_mask",
            "category_input_ids",
            "category_attention_mask",
        ]


__all__ = ["CLIPITAProcessor"]
