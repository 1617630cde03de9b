"""Fixed contrastive batches from the tiny catalogue, and splitting them into micro-batches."""

from __future__ import annotations

import torch

from clipita.schema import modality_columns
from clipita.training.collate import PairCollator, TrainingPairs
from clipita.tree import NodeVocabulary
from tests.helpers.tiny_catalogue import tiny_catalogue


def fixed_batch(
    model, processor, size: int = 8, level: str = "general", broad_dropout: dict | None = None
) -> dict[str, torch.Tensor]:
    """`size` pairs at `level` ("general": 3 roots, so categories repeat and multi-positive matters)."""
    rows = tiny_catalogue(num_train=size, num_validation=1)["train"]
    modalities = model.config.product_modalities
    pairs = TrainingPairs(
        rows, level, seed=0, columns=modality_columns(modalities), broad_dropout=broad_dropout
    )
    batch = PairCollator(processor, NodeVocabulary(rows["category"]), modalities)(
        [pairs[i] for i in range(size)]
    )
    batch.pop("num_skipped")
    return batch


def rows_of(batch: dict, start: int, stop: int) -> dict[str, torch.Tensor]:
    return {key: value[start:stop] for key, value in batch.items()}


def split(batch: dict, parts: int) -> list[dict[str, torch.Tensor]]:
    size = len(batch["category_ids"]) // parts
    return [rows_of(batch, i * size, (i + 1) * size) for i in range(parts)]


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
