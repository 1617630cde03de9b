"""Encode with a folder's ONNX export (`onnx/`, written by `python -m clipita.onnx_export`) instead of torch.

`OnnxEncoder` has the model's `encode_categories` / `encode_products` and `config`, so the index, search.py
(`--encoder onnx`) and the Space take it where they take the model. The processor still tokenises and
preprocesses; ONNX Runtime runs the towers and heads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipita.loading import check_model_folder, weights_sha256

ONNX_DIR = "onnx"
MANIFEST = "manifest.json"
VARIANT_FILES = {
    "fp32": ("category_encoder.onnx", "product_encoder.onnx"),
    "int8": ("category_encoder_int8.onnx", "product_encoder_int8.onnx"),
}
ENCODERS = ("torch", "onnx", "onnx-int8")  # search.py's and the Space's --encoder choices
CATEGORY_INPUTS = ("category_input_ids", "category_attention_mask")
PRODUCT_INPUTS = {
    "image": ("pixel_values",),
    "title": ("title_input_ids", "title_attention_mask"),
    # attribute_input_ids / _attention_mask [U, L]: a batch's distinct attribute strings once each (as
    # `encode_products` encodes them); attribute_index [B, A]: each slot's row there; attribute_mask [B, A]
    "attributes": ("attribute_input_ids", "attribute_attention_mask", "attribute_index", "attribute_mask"),
}
ARGUMENTS = {"image": "images", "title": "titles", "attributes": "attributes"}


def product_inputs_of(modalities: Sequence[str]) -> list[str]:
    """The product encoder's input names for these modalities, in the model's order."""
    return [
        name for modality in PRODUCT_INPUTS if modality in modalities for name in PRODUCT_INPUTS[modality]
    ]


def distinct_attributes(batch: dict) -> dict:
    """The processor's product arrays with the attribute slots (`[B, A, L]`) as the product graph takes them:
    each distinct attribute string once (`[U, L]`, U >= 1) and every slot's row in `attribute_index`
    (`[B, A]`; padding slots point at row 0 and are masked out). A batch without attributes is returned as is."""
    if "attribute_mask" not in batch:
        return dict(batch)
    ids, mask, real = batch["attribute_input_ids"], batch["attribute_attention_mask"], batch["attribute_mask"]
    real = real.astype(bool)
    index = np.zeros(real.shape, dtype=np.int64)
    if real.any():
        length = ids.shape[-1]
        rows = np.concatenate([ids[real], mask[real].astype(ids.dtype)], axis=1)
        unique, inverse = np.unique(rows, axis=0, return_inverse=True)
        index[real] = inverse.reshape(-1)
    else:  # no attribute in the batch: one placeholder string (one attended token) the graph can encode
        length = max(ids.shape[-1], 1)
        unique = np.zeros((1, 2 * length), dtype=ids.dtype)
        unique[0, length] = 1
    return {
        **batch,
        "attribute_input_ids": unique[:, :length],
        "attribute_attention_mask": unique[:, length:].astype(mask.dtype),
        "attribute_index": index,
    }


class OnnxEncoder:
    """A CLIP-ITA folder's ONNX encoders with the model's `encode_*` interface (numpy out, L2-normalised)."""

    def __init__(self, folder: str | os.PathLike, variant: str = "fp32", threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoConfig, AutoProcessor

        if variant not in VARIANT_FILES:
            raise ValueError(f"ONNX variant must be one of {sorted(VARIANT_FILES)}, got {variant!r}")
        folder = Path(folder)
        check_model_folder(folder)
        manifest_path = folder / ONNX_DIR / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{folder} has no ONNX export ({manifest_path} missing): run python -m clipita.onnx_export --model {folder}"
            )
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if variant not in self.manifest.get("files", {}):
            raise FileNotFoundError(
                f"{folder / ONNX_DIR} has no {variant} export (it has {sorted(self.manifest['files'])})"
            )
        if self.manifest.get("weights_sha256") != weights_sha256(folder):
            raise ValueError(
                f"{folder / ONNX_DIR} was exported from other weights than {folder}'s: run python -m clipita.onnx_export again"
            )
        self.logit_scale = float(
            self.manifest["logit_scale"]
        )  # as CLIPITAModel.logit_scale (the Space's softmax)
        self.name_or_path = str(folder)
        self.variant = variant
        self.config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        self.processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        category_file, product_file = VARIANT_FILES[variant]
        providers = ["CPUExecutionProvider"]
        self.category_session = ort.InferenceSession(
            str(folder / ONNX_DIR / category_file), options, providers=providers
        )
        self.product_session = ort.InferenceSession(
            str(folder / ONNX_DIR / product_file), options, providers=providers
        )
        self.product_inputs = [i.name for i in self.product_session.get_inputs()]
        expected = product_inputs_of(self.config.product_modalities)
        if self.product_inputs != expected:
            raise ValueError(
                f"{folder / ONNX_DIR / product_file} takes {self.product_inputs}, this clipita feeds {expected}: "
                f"it was exported by another version; run python -m clipita.onnx_export --model {folder} again"
            )

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, variant: str = "fp32", threads: int | None = None
    ) -> OnnxEncoder:
        return cls(folder, variant=variant, threads=threads)

    def _run(self, session, batch, names) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(batch[name]) for name in names}
        return session.run(["embeddings"], feeds)[0]

    def _batches(self, count: int, batch_size: int, make, session, names, dim: int | None) -> np.ndarray:
        full = self.config.projection_dim
        if dim is not None and not 0 < dim <= full:
            raise ValueError(f"dim must lie between 1 and projection_dim={full}, got {dim}")
        outputs = [self._run(session, make(i, i + batch_size), names) for i in range(0, count, batch_size)]
        embeds = np.concatenate(outputs).astype(np.float32) if outputs else np.zeros((0, full), np.float32)
        if dim is not None and dim < full:  # a Matryoshka size: the first dims, renormalised
            embeds = embeds[:, :dim] / np.maximum(
                np.linalg.norm(embeds[:, :dim], axis=1, keepdims=True), 1e-12
            )
        return embeds

    def encode_categories(
        self, categories: Sequence, batch_size: int = 64, processor=None, dim: int | None = None, **ignored
    ) -> np.ndarray:
        """Category names or paths -> `[N, d]` normalised embeddings (as `CLIPITAModel.encode_categories`)."""
        processor = processor or self.processor
        categories = [categories] if isinstance(categories, str) else list(categories)
        return self._batches(
            len(categories),
            batch_size,
            lambda i, j: processor(categories=categories[i:j], return_tensors="np"),
            self.category_session,
            CATEGORY_INPUTS,
            dim,
        )

    def encode_products(
        self,
        images: Sequence | None = None,
        titles: Sequence[str] | None = None,
        attributes: Sequence | None = None,
        batch_size: int = 32,
        processor=None,
        dim: int | None = None,
        **ignored,
    ) -> np.ndarray:
        """Products -> `[N, d]` normalised embeddings (as `CLIPITAModel.encode_products`)."""
        processor = processor or self.processor
        given = {"images": images, "titles": titles, "attributes": attributes}
        columns = {ARGUMENTS[m]: given[ARGUMENTS[m]] for m in self.config.product_modalities}
        missing = [name for name, value in columns.items() if value is None]
        if missing:
            raise ValueError(
                f"this CLIP-ITA model builds products from {self.config.product_modalities}; "
                f"encode_products lacks {', '.join(missing)}"
            )
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"images, titles and attributes must have one entry per product, got {lengths}")

        def make(i: int, j: int) -> dict:
            batch = processor(**{k: list(v[i:j]) for k, v in columns.items()}, return_tensors="np")
            return distinct_attributes(batch)

        return self._batches(
            lengths.pop(),
            batch_size,
            make,
            self.product_session,
            self.product_inputs,
            dim,
        )


def load_encoder(name_or_path: str | os.PathLike, encoder: str = "torch", device: str | None = None):
    """`(model or OnnxEncoder, processor)` for search.py's and the Space's `--encoder`."""
    if encoder not in ENCODERS:
        raise ValueError(f"--encoder must be one of {ENCODERS}, got {encoder!r}")
    if encoder == "torch":
        from clipita.loading import load_model

        return load_model(name_or_path, device)
    onnx = OnnxEncoder(name_or_path, variant="int8" if encoder == "onnx-int8" else "fp32")
    return onnx, onnx.processor
