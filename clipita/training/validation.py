"""Validation during training: the paper's retrieval metrics at the training's category level.

Products of the validation split are ranked for every category node of that level with
`clipita.evaluation` (exact FAISS search, P@k / mAP@k / R-precision, seen and unseen categories).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from clipita.encoding import prepare_row
from clipita.evaluation import DenseRanker, evaluate_rankings
from clipita.results import GROUPS
from clipita.schema import modality_columns, path_text

logger = logging.getLogger(__name__)

PRIMARY_METRIC = "mAP@10"
CACHE_BYTES = 256 * 2**20  # processed validation tensors are kept in memory below this size


class Validator:
    """Scores a model on (at most `max_products` of) the validation split; call `evaluate(model)`."""

    def __init__(
        self,
        split,
        processor,
        modalities: Sequence[str],
        level: str,
        train_paths: Sequence[Sequence[str]],
        max_products: int | None = 1000,
        max_queries: int | None = None,
        batch_size: int = 128,
        seed: int = 0,
    ):
        if max_products and len(split) > max_products:
            keep = np.sort(np.random.default_rng(seed).choice(len(split), max_products, replace=False))
            split = split.select(keep)
        self.rows, self.skipped = _readable_rows(
            split.select_columns(["category", *modality_columns(modalities)])
        )
        if len(self.rows) == 0:
            raise ValueError(
                "the validation split has no usable product (all images unreadable or paths empty)"
            )
        self.paths = [list(path) for path in self.rows["category"]]
        self.processor = processor
        self.modalities = list(modalities)
        self.level = level
        self.train_paths = train_paths
        self.max_queries = max_queries
        self.batch_size = batch_size
        self.seed = seed
        self._cache: list | None = None

    def _product_batches(self):
        if self._cache is not None:
            yield from self._cache
            return
        batches = []
        for start in range(0, len(self.rows), self.batch_size):
            rows = self.rows[start : start + self.batch_size]
            inputs = {"images": rows["image"]}
            if "title" in self.modalities:
                inputs["titles"] = [t or "" for t in rows["title"]]
            if "attributes" in self.modalities:
                inputs["attributes"] = [a or [] for a in rows["attributes"]]
            batch = self.processor(**inputs, return_tensors="pt")
            batches.append(batch)
            yield batch
        pixels = sum(b["pixel_values"].numel() * b["pixel_values"].element_size() for b in batches)
        if pixels < CACHE_BYTES:
            self._cache = batches

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        """{"overall" | "seen" | "unseen": {metric: value or None}, "num_queries": {...}} at the level."""
        was_training = model.training
        model.eval()
        try:
            embeds = [
                model.get_product_features(**batch.to(model.device)).float().cpu()
                for batch in self._product_batches()
            ]
            ranker = DenseRanker(
                torch.cat(embeds).numpy(),
                lambda texts: model.encode_categories(
                    texts, batch_size=self.batch_size, processor=self.processor, show_progress_bar=False
                ),
            )
            results = evaluate_rankings(
                ranker,
                self.paths,
                self.train_paths,
                settings=[self.level],
                query_text=path_text,
                max_queries_per_setting=self.max_queries,
                seed=self.seed,
            )[self.level]
        finally:
            model.train(was_training)
        return {key: results[key] for key in (*GROUPS, "num_queries")}


def _readable_rows(rows):
    """Rows with a non-empty category path and a decodable image; returns them and how many were dropped."""
    keep = []
    for i in range(len(rows)):
        try:
            prepare_row(rows[i])
        except Exception as error:  # one broken product must not stop the run
            logger.warning("validation row %d skipped: %s", i, error)
            continue
        keep.append(i)
    return (rows if len(keep) == len(rows) else rows.select(keep)), len(rows) - len(keep)


def flatten_metrics(results: dict, prefix: str = "eval") -> dict[str, float]:
    """{"eval/mAP@10": ..., "eval/seen/mAP@10": ...} for trackers; overall metrics without a group."""
    flat = {}
    for group in GROUPS:
        for name, value in (results.get(group) or {}).items():
            if value is not None:
                flat[f"{prefix}/{name}" if group == "overall" else f"{prefix}/{group}/{name}"] = float(value)
    return flat
