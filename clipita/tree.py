"""The category tree: nodes of a path, the paper's three levels, seen / unseen, and node ids per depth.

A node is a path prefix, `("Home", "Kitchen")`: two leaves named "Mugs" under different parents are
different nodes. Training draws nodes with `node_at_level`, evaluation asks `query_nodes`, the card
describes `LEVELS`, the Space browses `CategoryTree`: one definition for all of them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

Node = tuple[str, ...]

# The paper's settings: which node of a product's path is its category.
LEVELS = {
    "all": "a random category on each product's path (all)",
    "general": "each product's root category (general)",
    "specific": "each product's leaf category (specific)",
}


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"unknown category level {level!r}; choose one of {tuple(LEVELS)}")
    return level


def category_nodes(path: Sequence[str]) -> list[Node]:
    """Every node on a path, as path prefixes: ["Home", "Kitchen"] -> [("Home",), ("Home", "Kitchen")]."""
    return [tuple(path[: k + 1]) for k in range(len(path))]


def seen_nodes(train_paths: Iterable[Sequence[str]]) -> set[Node]:
    """Every node that some training product has on its path."""
    return {node for path in train_paths for node in category_nodes(path)}


def is_unseen(node: Sequence[str], seen: set[Node]) -> bool:
    """A category is unseen when no training product has it on its path."""
    return tuple(node) not in seen


def node_at_level(path: Sequence[str], level: str, rng: np.random.Generator | None = None) -> Node:
    """The root ("general"), the leaf path ("specific"), or a node drawn uniformly from the path's
    prefixes ("all", needs `rng`)."""
    if not path:
        raise ValueError("empty category path")
    check_level(level)
    if level == "general":
        return (path[0],)
    if level == "specific":
        return tuple(path)
    if rng is None:
        raise ValueError('category level "all" draws a node at random: pass rng')
    return tuple(path[: int(rng.integers(1, len(path) + 1))])


def query_nodes(paths: Iterable[Sequence[str]], level: str) -> list[Node]:
    """Distinct query nodes of a level: roots ("general"), full paths ("specific") or every prefix ("all")."""
    check_level(level)
    nodes: set[Node] = set()
    for path in paths:
        if not path:
            continue
        if level == "general":
            nodes.add((path[0],))
        elif level == "specific":
            nodes.add(tuple(path))
        else:
            nodes.update(category_nodes(path))
    return sorted(nodes)


class NodeVocabulary:
    """Integer id for every node of the training tree, in first-seen order (labels for the loss)."""

    def __init__(self, paths: Iterable[Sequence[str]]):
        self.ids: dict[Node, int] = {}
        for path in paths:
            for node in category_nodes(path):
                self.ids.setdefault(node, len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, node: Sequence[str]) -> int:
        # A node outside the training tree still gets a stable id.
        return self.ids.setdefault(tuple(node), len(self.ids))


class CategoryTree:
    """The catalogue's tree, root -> leaf, from its products' paths: children of a node, every node."""

    def __init__(self, paths: Iterable[Sequence[str]]):
        children: dict[Node, set[str]] = defaultdict(set)
        for path in paths:
            parts = tuple(str(p).strip() for p in path if str(p).strip())
            for depth in range(len(parts)):
                children[parts[:depth]].add(parts[depth])
        self._children = {prefix: sorted(names) for prefix, names in children.items()}

    def children(self, prefix: Sequence[str] = ()) -> list[str]:
        return self._children.get(tuple(prefix), [])

    def nodes(self) -> list[Node]:
        """Every category, inner and leaf, as its path, in depth-first order."""
        out: list[Node] = []

        def visit(prefix: Node) -> None:
            for name in self.children(prefix):
                out.append(prefix + (name,))
                visit(prefix + (name,))

        visit(())
        return out

    def nodes_named(self, text: str, separator: str = ">") -> list[Node]:
        """The nodes a query names, case-insensitively: a path ("Home > Kitchen > Mugs") names that node,
        a single name ("Mugs") every node ending in it; [] when it names none of this tree's nodes."""
        wanted = tuple(part.strip().casefold() for part in text.split(separator) if part.strip())
        if not wanted:
            return []
        if len(wanted) > 1:
            return [n for n in self.nodes() if tuple(p.casefold() for p in n) == wanted]
        return [n for n in self.nodes() if n[-1].casefold() == wanted[0]]

    @property
    def depth(self) -> int:
        return max((len(prefix) + 1 for prefix in self._children), default=0)


class PathIndex:
    """Product paths encoded as node ids per depth, so relevance and tree distance are array lookups."""

    def __init__(self, paths: Sequence[Sequence[str]]):
        self.node_ids: dict[Node, int] = {}
        depth = max((len(p) for p in paths), default=0)
        self.at_depth = np.full((len(paths), max(depth, 1)), -1, dtype=np.int64)
        empty = 0
        for row, path in enumerate(paths):
            if isinstance(path, str) or not all(isinstance(name, str) and name for name in path):
                raise ValueError(
                    f"product {row}: category path must be a list of non-empty strings, got {path!r}"
                )
            empty += not path
            for d, node in enumerate(category_nodes(path)):
                self.at_depth[row, d] = self.node_ids.setdefault(node, len(self.node_ids))
        if empty:
            logger.warning("%d of %d products have an empty category path: never relevant", empty, len(paths))
        self.counts = np.bincount(self.at_depth[self.at_depth >= 0], minlength=len(self.node_ids))

    def __len__(self) -> int:
        return self.at_depth.shape[0]

    def ancestors(self, nodes: Sequence[Node]) -> np.ndarray:
        """[Q, D] node ids of each query's prefixes; -2 past its depth (never equal to a product's -1)."""
        out = np.full((len(nodes), self.at_depth.shape[1]), -2, dtype=np.int64)
        for q, node in enumerate(nodes):
            for d, prefix in enumerate(category_nodes(node)):
                out[q, d] = self.node_ids[prefix]
        return out
