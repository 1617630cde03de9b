"""sentence-transformers support for CLIP-ITA: `SentenceTransformer(folder, trust_remote_code=True)`.

`model.encode(["Home > Kitchen > Mugs"])` embeds categories and `model.encode([{"image": pil, "title": ...,
"attributes": [...]}])` embeds products, with the model's own processor and `get_*_features`, so the
embeddings are `encode_categories` / `encode_products`'. A batch may mix both. This file ships to the Hub as
remote code (the folder's modules.json names it): it imports only torch, transformers and the standard
library, duck-typing the module interface sentence-transformers documents for custom modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoProcessor

PRODUCT_KEYS = {"image": "images", "title": "titles", "attributes": "attributes"}
CATEGORY_ROWS, PRODUCT_ROWS = "clipita_category_rows", "clipita_product_rows"


class CLIPITASentenceTransformer(nn.Module):
    """The whole CLIP-ITA model as one sentence-transformers input module.

    A string ("Mugs" or "Home > Kitchen > Mugs") is a category; a dict with the keys of the
    model's product modalities ("image", "title", "attributes") is a product. The output
    `sentence_embedding` is L2-normalised, like `encode_categories` / `encode_products`.
    """

    save_in_root = True
    config_keys: list[str] = []
    forward_kwargs: set[str] = set()

    def __init__(self, model: nn.Module, processor: Any):
        super().__init__()
        self.model = model
        self.processor = processor

    @property
    def modalities(self) -> list[str]:
        return ["text", "image"]

    def get_embedding_dimension(self) -> int:
        return self.model.config.projection_dim

    def get_sentence_embedding_dimension(self) -> int:  # the name before sentence-transformers 6
        return self.get_embedding_dimension()

    def _product(self, item: Mapping) -> dict[str, Any]:
        modalities = self.model.config.product_modalities
        unknown = sorted(set(item) - set(PRODUCT_KEYS))
        missing = [m for m in modalities if item.get(m) is None and m != "attributes"]
        if unknown or missing:
            raise ValueError(
                f"a CLIP-ITA product is a dict with keys {modalities}; got keys {sorted(item)}"
                + (f" (unknown: {unknown})" if unknown else "")
                + (f" (missing: {missing})" if missing else "")
            )
        return {m: item.get(m) for m in modalities}

    def preprocess(self, inputs: Sequence, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        """Inputs -> the processor's tensors for the categories and the products, and where each row goes."""
        categories, category_rows, products, product_rows = [], [], [], []
        for row, item in enumerate(inputs):
            if isinstance(item, Mapping):
                products.append(self._product(item))
                product_rows.append(row)
            elif isinstance(item, str):
                categories.append(item)
                category_rows.append(row)
            else:
                raise TypeError(
                    "CLIP-ITA encodes a category (a string) or a product (a dict with "
                    f"{self.model.config.product_modalities}), got {type(item).__name__}"
                )
        features: dict[str, Any] = {
            CATEGORY_ROWS: torch.tensor(category_rows, dtype=torch.long),
            PRODUCT_ROWS: torch.tensor(product_rows, dtype=torch.long),
        }
        if categories:
            features.update(self.processor(categories=categories, return_tensors="pt"))
        if products:
            columns = {
                PRODUCT_KEYS[m]: [product[m] for product in products]
                for m in self.model.config.product_modalities
            }
            features.update(self.processor(**columns, return_tensors="pt"))
        return features

    def tokenize(self, texts: Sequence, **kwargs) -> dict[str, Any]:  # before sentence-transformers 5.2
        return self.preprocess(texts, **kwargs)

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        category_rows, product_rows = features[CATEGORY_ROWS], features[PRODUCT_ROWS]
        embeddings = None
        parts = []
        if len(category_rows):
            parts.append(
                (
                    category_rows,
                    self.model.get_category_features(
                        features["category_input_ids"], features["category_attention_mask"]
                    ),
                )
            )
        if len(product_rows):
            inputs = {  # the processor's product inputs: every model input that is not the category's
                name: features[name]
                for name in self.processor.model_input_names
                if not name.startswith("category_") and name in features
            }
            parts.append((product_rows, self.model.get_product_features(**inputs)))
        for rows, values in parts:
            if embeddings is None:
                size = len(category_rows) + len(product_rows)
                embeddings = values.new_zeros(size, values.shape[-1])
            embeddings[rows] = values
        features["sentence_embedding"] = embeddings
        return features

    def save(self, output_path: str, safe_serialization: bool = True, **kwargs) -> None:
        self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.processor.save_pretrained(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> CLIPITASentenceTransformer:
        """The folder's model and processor, through its remote code (hence `trust_remote_code=True`)."""
        hub = dict(
            subfolder=subfolder,
            token=token,
            cache_dir=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
        )
        model = AutoModel.from_pretrained(model_name_or_path, **hub, **(model_kwargs or {}))
        processor = AutoProcessor.from_pretrained(model_name_or_path, **hub)
        model.processor = processor
        return cls(model.eval(), processor)


__all__ = ["CLIPITASentenceTransformer"]
