"""The one chunked, failure-tolerant product encoder.

Training, validation, evaluation, the baselines and the index all read catalogue rows through here:
images stay undecoded until their chunk is encoded (one chunk in memory), a chunk that fails is retried
row by row, and a row that still fails (unreadable image, bad field) is skipped and reported with its
product id and reason, never ending a long run.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
from PIL import Image

from clipita.fileio import regular_file_problem
from clipita.progress import progress_bar
from clipita.schema import MODALITY_COLUMNS

logger = logging.getLogger(__name__)

EncodeBatch = Callable[[list[dict]], np.ndarray]  # rows (images decoded) -> [len(rows), d]


def decode_image(value: Any) -> Image.Image:
    """A canonical-schema image cell (PIL image, `{"bytes", "path"}` dict or path) -> loaded RGB image."""
    if value is None:
        raise ValueError("no image")
    if isinstance(value, Image.Image):
        value.load()
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        if value.get("path"):
            return Image.open(value["path"]).convert("RGB")
        raise ValueError("image cell has neither bytes nor path")
    if isinstance(value, (str, os.PathLike)):
        return Image.open(value).convert("RGB")
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


def prepare_row(row: dict) -> dict:
    """The row with its image decoded (when it has one); raises on an unreadable image or empty path."""
    if "category" in row and not row["category"]:
        raise ValueError("empty category path")
    return {**row, "image": decode_image(row["image"])} if "image" in row else row


# Why `row_problem` rejects a row (the loader counts rows per reason).
UNREADABLE, EMPTY_CATEGORY, TOO_LARGE = "unreadable image", "empty category", "image over pixel budget"
NOT_REGULAR = "image not a regular file"  # a FIFO, device or folder: opening it could block or never end


def row_problem(image: Any, category: Sequence[str], max_image_pixels: int) -> str:
    """Why a row cannot be used ("" when it can): the loader's cheap check, before any row is encoded.

    `image` is an undecoded `{"bytes", "path"}` cell. Only the header is parsed to get the size; JPEGs are
    then decoded at 1/8 scale (`draft`), which catches truncated files without a full decode.
    """
    if not category or not any(str(c).strip() for c in category):
        return EMPTY_CATEGORY
    if not image or not (image.get("bytes") or image.get("path")):
        return UNREADABLE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            local = not image.get("bytes") and os.path.lexists(image["path"])
            if local and regular_file_problem(image["path"]):
                return NOT_REGULAR if os.path.exists(image["path"]) else UNREADABLE
            if image.get("bytes") or local:
                src = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
                with Image.open(src) as img:
                    if img.width * img.height > max_image_pixels:
                        return TOO_LARGE
                    img.draft("RGB", (64, 64))
                    img.load()
            else:  # a remote path (hf://, zip://...): datasets knows how to open it
                import datasets

                img = datasets.Image().decode_example(image)
                if img.width * img.height > max_image_pixels:
                    return TOO_LARGE
    except Image.DecompressionBombError:
        return TOO_LARGE
    except Exception:  # any decoder or file error means the same for training: this row cannot be read
        return UNREADABLE
    return ""


def iter_rows(
    dataset: Any, start: int = 0, batch_size: int = 256, columns: Sequence[str] | None = None
) -> Iterator[dict]:
    """Rows from `start` on (a `datasets` Dataset / IterableDataset, or any iterable of dicts), with images
    left undecoded so one broken image costs one row, not a batch."""
    import datasets

    if isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        if columns is not None:
            dataset = dataset.select_columns([c for c in columns if c in (dataset.column_names or columns)])
        features = dataset.features
        if features is not None and isinstance(features.get("image"), datasets.Image):
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
        for batch in (dataset.skip(start) if start else dataset).iter(batch_size=batch_size):
            names = list(batch)
            yield from (dict(zip(names, values)) for values in zip(*batch.values()))
    else:
        yield from islice(iter(dataset), start, None)


@dataclass
class Failure:
    """A row that could not be encoded: its position, product id, the stage that failed and why."""

    row: int
    product_id: str
    stage: str  # "image" (decode) or "encode" (the model)
    reason: str

    def __str__(self) -> str:
        return f"{self.product_id}: {self.stage}: {self.reason}"


@dataclass
class EncodedChunk:
    """One chunk's result: the rows that were encoded (images decoded), their embeddings, the failures."""

    rows: list[dict]
    positions: list[int]
    embeddings: np.ndarray | None  # [len(rows), d]
    failures: list[Failure] = field(default_factory=list)


def _check(emb: Any, count: int) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != count:
        raise ValueError(f"the encoder returned shape {emb.shape} for {count} rows; expected [{count}, d]")
    if not np.isfinite(emb).all():
        raise ValueError("the encoder returned non-finite values")
    return emb


def encode_chunk(rows: Sequence[dict], encode_batch: EncodeBatch, first_position: int = 0) -> EncodedChunk:
    """Decode and encode one chunk; on failure retry row by row so only the broken rows are skipped."""
    ready, positions, failures = [], [], []
    for offset, row in enumerate(rows):
        pid = str(row.get("product_id", first_position + offset))
        try:
            ready.append(prepare_row(row))
            positions.append(first_position + offset)
        except Exception as err:  # a broken image is one skipped row, never a dead run
            failures.append(Failure(first_position + offset, pid, "image", f"{type(err).__name__}: {err}"))
    if not ready:
        return EncodedChunk([], [], None, failures)
    try:
        return EncodedChunk(ready, positions, _check(encode_batch(ready), len(ready)), failures)
    except Exception:
        logger.debug("chunk failed; retrying row by row", exc_info=True)
    kept, kept_positions, parts = [], [], []
    for row, position in zip(ready, positions):
        try:
            parts.append(_check(encode_batch([row]), 1))
            kept.append(row)
            kept_positions.append(position)
        except Exception as err:
            pid = str(row.get("product_id", position))
            failures.append(Failure(position, pid, "encode", f"{type(err).__name__}: {err}"))
    return EncodedChunk(kept, kept_positions, np.concatenate(parts) if parts else None, failures)


def encode_chunks(
    dataset: Any,
    encode_batch: EncodeBatch,
    chunk_size: int = 512,
    start: int = 0,
    columns: Sequence[str] | None = None,
) -> Iterator[EncodedChunk]:
    """`encode_chunk` over a dataset from row `start` on, one chunk of decoded images in memory at a time."""
    chunk: list[dict] = []
    position = start
    for row in iter_rows(dataset, start, batch_size=chunk_size, columns=columns):
        chunk.append(row)
        if len(chunk) == chunk_size:
            yield encode_chunk(chunk, encode_batch, position)
            position += len(chunk)
            chunk = []
    if chunk:
        yield encode_chunk(chunk, encode_batch, position)


def embed_dataset(
    dataset: Any,
    encode_batch: EncodeBatch,
    chunk_size: int = 512,
    columns: Sequence[str] | None = None,
    desc: str = "encoding products",
) -> tuple[np.ndarray, list[Failure]]:
    """Every row's embedding `[N, d]` (a NaN row where it failed) and the failures.

    If no row of the first chunk can be encoded the error is systematic (wrong model or columns): raised.
    """
    total = len(dataset)
    out: np.ndarray | None = None
    failures: list[Failure] = []
    with progress_bar(total=total, desc=desc, unit="product", disable=total <= chunk_size) as bar:
        for i, chunk in enumerate(encode_chunks(dataset, encode_batch, chunk_size, columns=columns)):
            failures += chunk.failures
            if chunk.embeddings is None:
                if i == 0:
                    raise ValueError(f"no product of the first chunk could be encoded: {chunk.failures[0]}")
            else:
                if out is None:
                    out = np.full((total, chunk.embeddings.shape[1]), np.nan, dtype=np.float32)
                out[chunk.positions] = chunk.embeddings
            bar.update(len(chunk.rows) + len(chunk.failures))
    if out is None:
        raise ValueError("no product could be encoded")
    if failures:
        logger.warning(
            "%d of %d products could not be encoded and are left out (first: %s)",
            len(failures),
            total,
            failures[0],
        )
    return out, failures


def product_encoder(model, processor=None, batch_size: int = 64) -> EncodeBatch:
    """rows -> `model.encode_products` over the model's modalities (CLIP-ITA's own batching and no_grad)."""
    modalities = model.config.product_modalities

    def encode(rows: list[dict]) -> np.ndarray:
        inputs = {
            MODALITY_COLUMNS[m][1]: [
                row[MODALITY_COLUMNS[m][0]] or ([] if m == "attributes" else "") for row in rows
            ]
            if m != "image"
            else [row["image"] for row in rows]
            for m in modalities
        }
        return model.encode_products(
            **inputs, batch_size=batch_size, processor=processor, show_progress_bar=False
        )

    return encode


def softmax_temperature(model) -> float:
    """The temperature of a CLIP-ITA model's contrastive softmax, 1 / exp(logit_scale) clamped as the loss
    clamps it: what "tree" and "marginal" node scoring (`clipita.tree.node_scores`) read the category softmax
    at.
    `model.logit_scale`: a tensor (PyTorch) or a float (`clipita.onnx_encoder.OnnxEncoder`)."""
    from modeling_clipita import MAX_LOGIT_SCALE

    scale = model.logit_scale
    scale = float(scale.detach().float()) if hasattr(scale, "detach") else float(scale)
    return float(1.0 / np.exp(min(scale, MAX_LOGIT_SCALE)))
