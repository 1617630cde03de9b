"""Training pairs: each product paired with one node of its category path, batched through the processor.

The node is a function of (seed, epoch, product index) and the order of products a function of
(seed, epoch), so a resumed run sees exactly the pairs an uninterrupted one would, with no RNG state to save.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

logger = logging.getLogger(__name__)

Node = tuple[str, ...]
CATEGORY_LEVELS = ("all", "general", "specific")
MAX_REPLACEMENTS = 16  # consecutive unreadable rows tolerated before giving up


def category_node(path: Sequence[str], level: str, rng: np.random.Generator | None = None) -> Node:
    """The paper's three settings: the root ("general"), the leaf path ("specific"), or a node drawn
    uniformly from the path's prefixes ("all", needs `rng`)."""
    if not path:
        raise ValueError("empty category path")
    if level == "general":
        return (path[0],)
    if level == "specific":
        return tuple(path)
    if level == "all":
        if rng is None:
            raise ValueError('category level "all" draws a node at random: pass rng')
        return tuple(path[: int(rng.integers(1, len(path) + 1))])
    raise ValueError(f"unknown category level {level!r}; choose one of {CATEGORY_LEVELS}")


class CategoryVocabulary:
    """Integer id for every node (path prefix) of the training tree: the multi-positive loss's labels."""

    def __init__(self, paths: Iterable[Sequence[str]]):
        self.ids: dict[Node, int] = {}
        for path in paths:
            for depth in range(1, len(path) + 1):
                self.ids.setdefault(tuple(path[:depth]), len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, node: Node) -> int:
        # A node outside the training tree (never drawn from training rows) still gets a stable id.
        return self.ids.setdefault(tuple(node), len(self.ids))


class TrainingPairs(Dataset):
    """(product, category node) pairs over a `datasets.Dataset` in the canonical schema.

    `set_epoch` (called by Accelerate's prepared dataloader) changes the node drawn for the "all" level.
    A row whose image cannot be decoded is replaced by the next readable row, so every process keeps the
    same batch size; each row reports in `skipped` how many rows it stands in for.
    """

    def __init__(self, rows, level: str, seed: int, columns: Sequence[str]):
        if level not in CATEGORY_LEVELS:
            raise ValueError(f"unknown category level {level!r}; choose one of {CATEGORY_LEVELS}")
        self.rows = rows.select_columns(list(dict.fromkeys(["category", *columns])))
        self.level = level
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def node_for(self, index: int, path: Sequence[str]) -> Node:
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.level == "all" else None
        return category_node(path, self.level, rng)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(MAX_REPLACEMENTS):
            row_index = (index + attempt) % len(self.rows)
            try:
                row = self.rows[row_index]
                if "image" in row:
                    row["image"].load()
            except Exception as error:  # a broken image must not end a long run
                logger.warning("training row %d unreadable (%s); using the next row", row_index, error)
                continue
            row["node"] = self.node_for(index, row["category"])
            row["skipped"] = attempt
            return row
        raise RuntimeError(f"{MAX_REPLACEMENTS} consecutive unreadable training rows from row {index}")


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
    """Rows -> processor tensors for the model's modalities, plus `category_ids` and a skipped-row count."""

    def __init__(self, processor, vocabulary: CategoryVocabulary, modalities: Sequence[str]):
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
        batch["num_skipped"] = torch.tensor(sum(row["skipped"] for row in rows))
        return batch


def dataset_columns(modalities: Sequence[str]) -> list[str]:
    """Columns of the canonical schema that a model with these modalities reads."""
    names = {"image": "image", "title": "title", "attributes": "attributes"}
    return [names[m] for m in modalities]
