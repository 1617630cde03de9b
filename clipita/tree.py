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


def _check_choice(value: str, allowed: dict[str, str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {tuple(allowed)}")
    return value


def check_level(level: str) -> str:
    return _check_choice(level, LEVELS, "category level")


def category_nodes(path: Sequence[str]) -> list[Node]:
    """Every node on a path, as path prefixes: ["Home", "Kitchen"] -> [("Home",), ("Home", "Kitchen")]."""
    return [tuple(path[: k + 1]) for k in range(len(path))]


def seen_nodes(train_paths: Iterable[Sequence[str]]) -> set[Node]:
    """Every node that some training product has on its path."""
    return {node for path in train_paths for node in category_nodes(path)}


def is_unseen(node: Sequence[str], seen: set[Node]) -> bool:
    """A category is unseen when no training product has it on its path."""
    return tuple(node) not in seen


def node_at_level(
    path: Sequence[str],
    level: str,
    rng: np.random.Generator | None = None,
    leaf_probability: float | None = None,
) -> Node:
    """The root ("general"), the leaf path ("specific"), or a node drawn from the path's prefixes ("all",
    needs `rng`): uniformly (the paper), or with `leaf_probability` the leaf with that probability and
    otherwise one of the broader prefixes uniformly."""
    if not path:
        raise ValueError("empty category path")
    check_level(level)
    if level == "general":
        return (path[0],)
    if level == "specific":
        return tuple(path)
    if rng is None:
        raise ValueError('category level "all" draws a node at random: pass rng')
    if leaf_probability is None:
        return tuple(path[: int(rng.integers(1, len(path) + 1))])
    if len(path) == 1 or rng.random() < leaf_probability:
        return tuple(path)
    return tuple(path[: int(rng.integers(1, len(path)))])


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
        self.max_depth = 0  # the deepest path: the width of every batch's `path_ids`, on every process
        for path in paths:
            nodes = category_nodes(path)
            self.max_depth = max(self.max_depth, len(nodes))
            for node in nodes:
                self.ids.setdefault(node, len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, node: Sequence[str]) -> int:
        # A node outside the training tree still gets a stable id.
        return self.ids.setdefault(tuple(node), len(self.ids))

    def path_ids(self, path: Sequence[str]) -> list[int]:
        """The ids of a path's nodes, root first, padded with -1 to `max_depth`."""
        ids = [self[node] for node in category_nodes(path)]
        if len(ids) > self.max_depth:
            raise ValueError(
                f"category path {list(path)} is deeper than the training tree ({self.max_depth})"
            )
        return ids + [-1] * (self.max_depth - len(ids))


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


# --- depths, hierarchy-consistent node scores, category paths (issue 13) ----------------------------------

# How a node's score for a product is read at query time. "node": the node's own score (the paper).
# "max_leaf": the max of the node's own score and its seen descendant leaves' scores, so a broad node ranks
# a product at least as high as the best leaf of its subtree that training taught. "tree": max_leaf, then a
# broad node's score is read against the other nodes of its depth, per product (`tree_posterior`): a product
# that scores high for every broad node (a hub) no longer tops them all. "marginal": a broad node's probability
# for the product, the mean of two readings of the same softmax the loss trains (`marginal_posterior`): the node
# among the nodes of its depth, and the summed probability of its subtree's leaves among all leaves. Unlike a
# max, the sum counts every leaf below, new ones too. Leaves keep their own score.
NODE_SCORINGS = {
    "node": "a node's own score (the paper)",
    "max_leaf": "max of a node's own score and its seen descendant leaves' scores",
    "tree": "max_leaf, then for a broad node the product's log-probability of that node among the nodes of "
    "its depth (the model's temperature); leaves keep their own score",
    "marginal": "for a broad node the product's log-probability of it: the mean of its softmax among the "
    "nodes of its depth and its leaves' summed softmax among all leaves (the model's temperature); leaves "
    "keep their own score",
}
DEFAULT_NODE_SCORING = "marginal"
# The scorings that read a broad node against every node of the tree at the model's temperature.
POSTERIOR_SCORINGS = ("tree", "marginal")


def check_node_scoring(scoring: str) -> str:
    return _check_choice(scoring, NODE_SCORINGS, "node scoring")


def depth_name(depth: int, max_depth: int) -> str:
    """The name a depth's metrics go under: "root" (1), "leaf" (the tree's deepest), else "depth{d}"."""
    if depth == 1:
        return "root"
    return "leaf" if depth == max_depth else f"depth{depth}"


def leaves_of(nodes: Iterable[Node]) -> list[Node]:
    """The nodes with no child among `nodes`."""
    nodes = [tuple(n) for n in nodes]
    parents = {n[:-1] for n in nodes if len(n) > 1}
    return [n for n in nodes if n not in parents]


def scoring_nodes(
    node: Sequence[str], nodes: Iterable[Node], scoring: str, seen: set[Node] | None = None
) -> list[Node]:
    """The nodes a node's score reads: itself, and its descendant leaves among `nodes`: under "max_leaf" and
    "tree" those in `seen` (None: every one), under "marginal" every one."""
    node = tuple(node)
    if check_node_scoring(scoring) == "node":
        return [node]
    below = [
        leaf
        for leaf in leaves_of(nodes)
        if len(leaf) > len(node)
        and leaf[: len(node)] == node
        and (seen is None or scoring == "marginal" or leaf in seen)
    ]
    return [node, *below]


def node_scores(
    scores: np.ndarray,
    nodes: Sequence[Node],
    scoring: str,
    seen: set[Node] | None = None,
    temperature: float | None = None,
) -> np.ndarray:
    """Hierarchy-consistent scores [len(nodes), N] from raw scores [len(nodes), N] (row i: node i's score of
    each product): each row the max over its `scoring_nodes`, under "tree" then `tree_posterior`; under
    "marginal" `marginal_posterior`. Both need the model's softmax `temperature`."""
    nodes = [tuple(n) for n in nodes]
    if check_node_scoring(scoring) == "node":
        return scores
    if scoring in POSTERIOR_SCORINGS and (temperature is None or not temperature > 0):
        raise ValueError(
            f'node scoring "{scoring}" needs the model\'s temperature (> 0), got {temperature!r}'
        )
    if scoring == "marginal":
        return marginal_posterior(scores, nodes, temperature)
    position = {n: i for i, n in enumerate(nodes)}
    out = np.array(scores, copy=True)
    for i, node in enumerate(nodes):
        rows = [position[m] for m in scoring_nodes(node, nodes, scoring, seen)]
        if len(rows) > 1:
            out[i] = np.max(scores[rows], axis=0)
    if scoring == "tree":
        out = tree_posterior(out, nodes, temperature)
    return out


def _rows_by_depth(nodes: Sequence[Node]) -> list[list[int]]:
    """The row indices of `nodes`, grouped by depth: the nodes a product's softmax at one depth runs over."""
    by_depth: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        by_depth[len(n)].append(i)
    return list(by_depth.values())


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0, in float64 (cosines over a temperature >= 0.01 stay well inside its range)."""
    x = np.exp(logits - logits.max(axis=0))
    return x / x.sum(axis=0)


def marginal_posterior(scores: np.ndarray, nodes: Sequence[Node], temperature: float) -> np.ndarray:
    """Broad nodes' rows [len(nodes), N] -> temperature * log P(node | product), P the mean of the node's
    softmax among the nodes of its depth and the summed softmax of its descendant leaves among all leaves
    (every leaf of `nodes`, seen in training or not), both at the model's temperature; leaves' rows
    unchanged. Each reading is a posterior the loss trains (broad pairs, leaf pairs); a product that no
    leaf of a node claims cannot top that node on the node's own score alone, and a new leaf's products
    count for its parent as soon as the tree holds it."""
    nodes = [tuple(n) for n in nodes]
    position = {n: i for i, n in enumerate(nodes)}
    raw = np.asarray(scores, dtype=np.float64) / temperature
    leaves = leaves_of(nodes)
    leaf_probability = _softmax(raw[[position[leaf] for leaf in leaves]])  # [L, N]
    # row i: the summed probability of node i's leaves; each leaf adds to its ancestors (leaves x depth steps)
    mass = np.zeros_like(raw)
    for k, leaf in enumerate(leaves):
        for ancestor in category_nodes(leaf)[:-1]:
            if ancestor in position:
                mass[position[ancestor]] += leaf_probability[k]
    depth_probability = np.empty_like(raw)
    for rows in _rows_by_depth(nodes):
        depth_probability[rows] = _softmax(raw[rows])
    broad = sorted({position[n[:-1]] for n in nodes if len(n) > 1 and n[:-1] in position})
    out = np.array(scores, dtype=np.float64, copy=True)
    out[broad] = temperature * np.log(0.5 * depth_probability[broad] + 0.5 * mass[broad])
    return out.astype(np.asarray(scores).dtype, copy=False)


def tree_posterior(scores: np.ndarray, nodes: Sequence[Node], temperature: float) -> np.ndarray:
    """Broad nodes' rows [len(nodes), N] -> temperature * log P(node | product), the softmax over the
    nodes of the same depth at the model's temperature (the product -> category side of the training
    loss); leaves' rows unchanged. Per product it subtracts one constant per depth, so a product's best
    node at a depth, and its best root -> leaf path, stay the same: only the ranking of products changes."""
    nodes = [tuple(n) for n in nodes]
    broad = {n[:-1] for n in nodes if len(n) > 1}
    out = np.array(scores, dtype=np.float64, copy=True)
    for rows in _rows_by_depth(nodes):
        x = out[rows] / temperature
        top = x.max(axis=0)
        log_z = temperature * (top + np.log(np.exp(x - top).sum(axis=0)))  # [N]
        for i in rows:
            if nodes[i] in broad:
                out[i] = out[i] - log_z
    return out.astype(np.asarray(scores).dtype, copy=False)


def rank_paths(scores: np.ndarray, nodes: Sequence[Node], top: int = 5) -> tuple[list[Node], np.ndarray]:
    """Category paths for products, consistent with the tree: a root -> leaf path scores the mean of its
    nodes' scores (rows of `scores` [len(nodes), N]). Returns (the leaf paths, [N, min(top, L)] indices into
    them, best first); the path's prefixes are the suggested node at every depth."""
    nodes = [tuple(n) for n in nodes]
    position = {n: i for i, n in enumerate(nodes)}
    paths = leaves_of(nodes)
    weights = np.zeros((len(paths), len(nodes)), dtype=np.float64)
    for p, path in enumerate(paths):
        on_path = [position[n] for n in category_nodes(path) if n in position]
        weights[p, on_path] = 1.0 / len(on_path)
    path_scores = weights @ np.asarray(scores, dtype=np.float64)  # [L, N]
    order = np.argsort(-path_scores.T, axis=1, kind="stable")[:, : min(top, len(paths))]
    return paths, order


def ranked_prefixes(paths: Sequence[Node], order: Sequence[int], depth: int) -> list[Node]:
    """The distinct depth-`depth` prefixes of ranked paths, in rank order (placement at that depth)."""
    return list(dict.fromkeys(tuple(paths[i][:depth]) for i in order if len(paths[i]) >= depth))
