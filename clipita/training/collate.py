"""Training pairs: each product paired with one node of its category path, batched through the processor.

The node is a function of (seed, epoch, product index) and the order of products a function of
(seed, epoch), so a resumed run sees exactly the pairs an uninterrupted one would, with no RNG state to save.
Broad dropout (`--broad_dropout title:P,image:P`) is too: for a pair whose node is broader than the
product's leaf, the title is dropped with probability P and the image greyed with probability P, decided by
(seed, epoch, index), so what a group's products share (attributes, shape) has to carry the broad category.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from clipita.encoding import prepare_row
from clipita.tree import Node, NodeVocabulary, check_level, node_at_level

logger = logging.getLogger(__name__)

MAX_REPLACEMENTS = 16  # consecutive unreadable rows tolerated before giving up
BROAD_DROPOUT_MODALITIES = ("title", "image")
GREY = (128, 128, 128)


def parse_broad_dropout(value: str) -> dict[str, float]:
    """ "title:0.5,image:0.5" -> {"title": 0.5, "image": 0.5}; a clear one-line error for anything else."""
    out: dict[str, float] = {}
    for part in str(value).split(","):
        name, _, probability = part.strip().partition(":")
        try:
            p = float(probability)
        except ValueError:
            p = -1.0
        if name not in BROAD_DROPOUT_MODALITIES or not 0.0 <= p <= 1.0 or name in out:
            raise ValueError(
                f"--broad_dropout: {part.strip()!r} is not MODALITY:P with MODALITY one of "
                f"{', '.join(BROAD_DROPOUT_MODALITIES)} (each once) and P in [0, 1], e.g. title:0.5,image:0.5"
            )
        out[name] = p
    return out


def broad_dropout_draws(seed: int, epoch: int, index: int) -> dict[str, bool]:
    """Whether pair `index` of `epoch` loses each modality, before the probabilities: uniform draws, one per
    modality, from their own stream of (seed, epoch, index) (the node's draw is another)."""
    u = np.random.default_rng([seed, epoch, index, 2]).random(len(BROAD_DROPOUT_MODALITIES))
    return dict(zip(BROAD_DROPOUT_MODALITIES, u.tolist()))


class TrainingPairs(Dataset):
    """(product, category node) pairs over a `datasets.Dataset` in the canonical schema.

    `set_epoch` (called by Accelerate's prepared dataloader) changes the node drawn for the "all" level.
    A row whose image cannot be decoded is replaced by the next readable row, so every process keeps the
    same batch size; each row reports in `skipped` how many rows it stands in for.
    """

    def __init__(
        self,
        rows,
        level: str,
        seed: int,
        columns: Sequence[str],
        broad_dropout: dict[str, float] | None = None,
        leaf_probability: float | None = None,
    ):
        self.level = check_level(level)
        self.leaf_probability = leaf_probability
        self.rows = rows.select_columns(list(dict.fromkeys(["category", *columns])))
        self.seed = seed
        self.epoch = 0
        self.broad_dropout = dict(broad_dropout or {})

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def node_for(self, index: int, path: Sequence[str]) -> Node:
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.level == "all" else None
        return node_at_level(path, self.level, rng, self.leaf_probability)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(MAX_REPLACEMENTS):
            row_index = (index + attempt) % len(self.rows)
            try:
                row = prepare_row(self.rows[row_index])
            except Exception as error:  # a broken image must not end a long run
                logger.warning("training row %d unreadable (%s); using the next row", row_index, error)
                continue
            row["node"] = self.node_for(index, row["category"])
            self.drop_broad(index, row)
            row["skipped"] = attempt
            return row
        raise RuntimeError(f"{MAX_REPLACEMENTS} consecutive unreadable training rows from row {index}")

    def drop_broad(self, index: int, row: dict) -> None:
        """Broad dropout, in place: a pair whose node is broader than its leaf loses its title (-> "") and /
        or its image (-> grey, same size) as `broad_dropout_draws` decides for (seed, epoch, index)."""
        if not self.broad_dropout or len(row["node"]) >= len(row["category"]):
            return
        draws = broad_dropout_draws(self.seed, self.epoch, index)
        if "title" in row and draws["title"] < self.broad_dropout.get("title", 0.0):
            row["title"] = ""
        if row.get("image") is not None and draws["image"] < self.broad_dropout.get("image", 0.0):
            row["image"] = Image.new("RGB", row["image"].size, GREY)


class EpochSampler(Sampler[int]):
    """A permutation of the rows that depends only on (seed, epoch)."""

    def __init__(self, num_rows: int, seed: int):
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[int]:
        yield from np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows).tolist()


class PairCollator:
    """Rows -> processor tensors for the model's modalities, plus `category_ids` (each pair's node),
    `path_ids` (each product's path nodes) and a skipped-row count."""

    def __init__(self, processor, vocabulary: NodeVocabulary, modalities: Sequence[str]):
        self.processor = processor
        self.vocabulary = vocabulary
        self.modalities = list(modalities)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        inputs = {"categories": [list(row["node"]) for row in rows]}
        if "image" in self.modalities:
            inputs["images"] = [row["image"] for row in rows]
        if "title" in self.modalities:
            inputs["titles"] = [row["title"] or "" for row in rows]
        if "attributes" in self.modalities:
            inputs["attributes"] = [row["attributes"] or [] for row in rows]
        batch = dict(self.processor(**inputs, return_tensors="pt"))
        batch["category_ids"] = torch.tensor([self.vocabulary[row["node"]] for row in rows])
        batch["path_ids"] = torch.tensor([self.vocabulary.path_ids(row["category"]) for row in rows])
        batch["num_skipped"] = torch.tensor(sum(row["skipped"] for row in rows))
        return batch
