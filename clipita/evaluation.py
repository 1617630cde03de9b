"""Category-to-image retrieval evaluation (the paper's protocol) on top of any ranker.

Queries are category-tree nodes (path prefixes) of the evaluated split; a product is relevant to a node when
its category path starts with it. Every product of the split is ranked for every query, at depth
``max(10, R)`` (R = number of relevant products) so R-precision is exact, in groups small enough that no
queries x products matrix is ever built. The metric math lives once, in the local `evaluate` module
``clipita/metrics/clipita_retrieval`` (`clipita.metrics`). This module only scores rankers; eval.py puts
the models and the baselines (`clipita.baselines`) together into results.json.

Result shape (one entry of ``results["settings"]``; the whole results.json is described in eval.py)::

    {"overall" | "seen" | "unseen": {"P@1", "P@5", "P@10", "mAP@5", "mAP@10", "R-precision", "R@10",
                                     "MRR", "nDCG@10": float in [0, 1], or null for an empty group},
     "num_queries": {"overall": n, "seen": n, "unseen": n},  (seen / unseen null without a train split)
     "error_analysis": {"num_wrong": n, "same_path_share": float | null, "depth_distance": {"d": share}},
     "sibling_confusion": {...}}  (the specific setting only; see `sibling_confusion`)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from clipita.encoding import embed_dataset, product_encoder
from clipita.metrics import metric_module
from clipita.progress import progress_bar
from clipita.results import GROUPS, settings_of
from clipita.schema import modality_columns
from clipita.tree import (
    LEVELS,
    CategoryTree,
    Node,
    PathIndex,
    category_nodes,
    depth_name,
    is_unseen,
    node_scores,
    query_nodes,
    rank_paths,
    ranked_prefixes,
    seen_nodes,
)

logger = logging.getLogger(__name__)

ERROR_DEPTH = 10  # the error analysis looks at the wrong products among the top 10


# --- rankers --------------------------------------------------------------------------------------------


class Ranker(Protocol):
    """Anything that ranks the evaluated products for text queries."""

    def rank(self, query_texts: list[str], k: int) -> np.ndarray:
        """[Q, min(k, N)] product indices, best first."""
        ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class DenseRanker:
    """Exact cosine search (FAISS IndexFlatIP on L2-normalised float32) over product embeddings."""

    def __init__(
        self,
        product_embeds: np.ndarray,
        encode_queries: Callable[[list[str]], np.ndarray],
        batch_size: int = 256,
    ):
        embeds = l2_normalise(product_embeds)
        if embeds.ndim != 2 or len(embeds) == 0:
            raise ValueError(f"product_embeds must be a non-empty [N, d] array, got shape {embeds.shape}")
        self.index = faiss.IndexFlatIP(embeds.shape[1])
        self.index.add(embeds)
        self.encode_queries = encode_queries
        self.batch_size = batch_size

    def rank(self, query_texts: list[str], k: int) -> np.ndarray:
        k = min(k, self.index.ntotal)
        out = np.empty((len(query_texts), k), dtype=np.int64)
        for start in range(0, len(query_texts), self.batch_size):
            queries = l2_normalise(self.encode_queries(query_texts[start : start + self.batch_size]))
            if queries.shape[1] != self.index.d:
                raise ValueError(f"query embeddings have dim {queries.shape[1]}, products {self.index.d}")
            out[start : start + len(queries)] = self.index.search(queries, k)[1]
        return out


# --- protocol -------------------------------------------------------------------------------------------


def _groups_by_depth(num_relevant: np.ndarray, max_entries: int, max_queries: int) -> list[np.ndarray]:
    """Query index groups, ordered by R, each retrieved at its deepest member's max(10, R): the matrix
    [group, depth] stays under max_entries, and no member is searched more than twice as deep as it needs."""
    order = np.argsort(num_relevant, kind="stable")
    groups, current, first_depth = [], [], 0
    for q in order:
        depth = max(ERROR_DEPTH, int(num_relevant[q]))
        if current and (
            (len(current) + 1) * depth > max_entries or len(current) >= max_queries or depth > 2 * first_depth
        ):
            groups.append(np.array(current))
            current = []
        if not current:
            first_depth = depth
        current.append(q)
    if current:
        groups.append(np.array(current))
    return groups


def _mean_or_none(values: np.ndarray, mask: np.ndarray | None) -> float | None:
    """The mean over a query group; None (null in JSON, never NaN) for an empty or unknown group."""
    return float(values[mask].mean()) if mask is not None and mask.any() else None


def evaluate_rankings(
    ranker: Ranker,
    product_paths: Sequence[Sequence[str]],
    train_paths: Iterable[Sequence[str]] | None,
    settings: Sequence[str] = tuple(LEVELS),
    query_text: Callable[[Node], str] = lambda node: node[-1],
    max_queries_per_setting: int | None = None,
    seed: int = 0,
    max_entries: int = 4_000_000,
    query_batch: int = 1024,
) -> dict[str, dict]:
    """Score a ranker on the products' category paths; returns results.json's "settings" object.

    ``product_paths[i]`` is product i's root -> leaf path (the ranker's index i). ``train_paths`` decide
    seen / unseen (None: unknown, both groups null). ``max_queries_per_setting`` samples that many queries per setting (seeded).
    ``max_entries`` bounds one retrieval group (queries x depth), which bounds memory.
    """
    index = PathIndex(product_paths)
    seen = None if train_paths is None else seen_nodes(train_paths)
    metrics = metric_module()
    results: dict[str, dict] = {}
    for setting in settings:
        nodes = query_nodes(product_paths, setting)
        if max_queries_per_setting is not None and len(nodes) > max_queries_per_setting:
            rng = np.random.default_rng([seed, list(LEVELS).index(setting)])  # same sample whatever else runs
            keep = np.sort(rng.choice(len(nodes), size=max_queries_per_setting, replace=False))
            nodes = [nodes[i] for i in keep]
        if not nodes:
            raise ValueError(f"setting {setting!r}: the evaluated products have no category paths")
        node_ids = np.array([index.node_ids[n] for n in nodes])
        depths = np.array([len(n) for n in nodes])
        num_relevant = index.counts[node_ids]
        ancestors = index.ancestors(nodes)

        siblings = unseen_sibling_ids(nodes, index, seen) if setting == "specific" else None
        confusion = np.full(
            len(nodes), np.nan
        )  # per seen leaf query: share of its top 10 from unseen siblings
        per_query: dict[str, np.ndarray] = {}
        wrong_common: list[np.ndarray] = []  # shared prefix length of each wrong top-10 product
        wrong_distance: list[np.ndarray] = []
        groups = _groups_by_depth(num_relevant, max_entries, query_batch)
        for group in progress_bar(groups, desc=f"Ranking ({setting})", disable=len(groups) < 4):
            depth = max(ERROR_DEPTH, int(num_relevant[group].max()))
            retrieved = np.asarray(ranker.rank([query_text(nodes[q]) for q in group], depth))
            if retrieved.shape[0] != len(group) or retrieved.ndim != 2:
                raise ValueError(f"ranker returned shape {retrieved.shape} for {len(group)} queries")
            if retrieved.size and (retrieved.min() < 0 or retrieved.max() >= len(index)):
                raise ValueError(f"ranker returned product indices outside [0, {len(index)})")
            # Product paths at each query's depth, for the retrieved products: [G, depth].
            at_query_depth = index.at_depth[retrieved, (depths[group] - 1)[:, None]]
            relevance = at_query_depth == node_ids[group][:, None]
            # Each list is cut at its own query's depth max(10, R): scores do not depend on the grouping.
            relevance &= np.arange(retrieved.shape[1]) < np.maximum(ERROR_DEPTH, num_relevant[group])[:, None]
            for name, values in metrics.per_query_scores(relevance, num_relevant[group]).items():
                per_query.setdefault(name, np.empty(len(nodes)))[group] = values

            top = retrieved[:, :ERROR_DEPTH]
            common = (index.at_depth[top] == ancestors[group][:, None, :]).sum(axis=2)
            wrong = ~relevance[:, :ERROR_DEPTH]
            if siblings is not None:
                top_nodes = index.at_depth[top, (depths[group] - 1)[:, None]]
                for row, q in enumerate(group):
                    if siblings[q] is not None:
                        confusion[q] = unseen_sibling_share(top_nodes[row], siblings[q])
            wrong_common.append(common[wrong])
            wrong_distance.append((depths[group][:, None] - common)[wrong])

        members = {"overall": np.ones(len(nodes), bool)}  # no train split: seen / unseen unknown (null)
        if seen is not None:
            is_seen = np.array([n in seen for n in nodes])
            members.update(seen=is_seen, unseen=~is_seen)
        results[setting] = {
            group: {name: _mean_or_none(values, members.get(group)) for name, values in per_query.items()}
            for group in GROUPS
        }
        results[setting]["num_queries"] = {
            group: int(members[group].sum()) if group in members else None for group in GROUPS
        }
        results[setting]["error_analysis"] = _error_analysis(
            np.concatenate(wrong_common), np.concatenate(wrong_distance)
        )
        if siblings is not None:
            results[setting]["sibling_confusion"] = sibling_confusion(confusion, siblings)
    return results


def unseen_sibling_ids(nodes: Sequence[Node], index: PathIndex, seen: set[Node] | None) -> list | None:
    """For each query node: None when it is unseen (or seen / unseen is unknown), else the node ids (in
    `index`) of its unseen siblings, the other children of its parent that no training product has."""
    if seen is None:
        return None
    tree = CategoryTree(list(index.node_ids))
    out: list[np.ndarray | None] = []
    for node in nodes:
        if is_unseen(node, seen):
            out.append(None)
            continue
        parent = node[:-1]
        sibling_nodes = [parent + (name,) for name in tree.children(parent) if parent + (name,) != node]
        out.append(np.array([index.node_ids[s] for s in sibling_nodes if is_unseen(s, seen)], dtype=np.int64))
    return out


def unseen_sibling_share(top_nodes: np.ndarray, sibling_ids: np.ndarray) -> float:
    """One query: the share of its top-10 products (their node ids at the query's depth) that belong to
    an unseen sibling of the query. 0 when it has no unseen sibling."""
    top_nodes = np.asarray(top_nodes)[:ERROR_DEPTH]
    return float(np.isin(top_nodes, sibling_ids).mean()) if len(top_nodes) else 0.0


def sibling_confusion(shares: np.ndarray, siblings: list) -> dict:
    """The known failure of category retrieval on held-out leaves: products of an unseen sibling leaf
    crowd a seen leaf's results. Mean share of a seen leaf query's top 10 taken by products of its unseen
    siblings, over every seen leaf query, and over those that have an unseen sibling."""
    seen = np.array([s is not None for s in siblings], dtype=bool)
    exposed = np.array([s is not None and len(s) > 0 for s in siblings], dtype=bool)
    return {
        "seen_queries": int(seen.sum()),
        "with_unseen_sibling": int(exposed.sum()),
        "unseen_sibling_share": _mean_or_none(shares, seen),
        "unseen_sibling_share_exposed": _mean_or_none(shares, exposed),
    }


def precision_at_10(relevance: Sequence[bool], num_relevant: int) -> float:
    """P@10 of one ranked list (`relevance` best first, `num_relevant` relevant products in all), through
    the metric module: what `search.py query` prints beside the hits of a query that names a category."""
    scores = metric_module().per_query_scores(np.asarray([relevance], dtype=bool), np.array([num_relevant]))
    return float(scores["P@10"][0])


def _error_analysis(common: np.ndarray, distance: np.ndarray) -> dict:
    """Wrong top-10 products: share on the query's category path (same root at least) and the histogram
    of depth distance (query depth minus the length of the prefix shared with the product's path)."""
    n = len(distance)
    histogram = np.bincount(distance) / max(n, 1)
    return {
        "num_wrong": int(n),
        "same_path_share": float((common >= 1).mean()) if n else None,
        "depth_distance": {str(d): float(share) for d, share in enumerate(histogram) if share},
    }


# --- models ---------------------------------------------------------------------------------------------


def clipita_embeddings(model, processor, products, batch_size: int = 64) -> tuple[np.ndarray, Callable]:
    """CLIP-ITA product embeddings [N, d] (NaN rows: skipped products) and its category-text encoder."""

    def encode_queries(texts: list[str]) -> np.ndarray:
        return model.encode_categories(
            texts, batch_size=batch_size, processor=processor, show_progress_bar=False
        )

    columns = ["product_id", *modality_columns(model.config.product_modalities)]
    embeds, _ = embed_dataset(
        products, product_encoder(model, processor, batch_size), chunk_size=8 * batch_size, columns=columns
    )
    return embeds, encode_queries


def matryoshka_cut(embeds: np.ndarray, encode_queries: Callable, dim: int) -> tuple[np.ndarray, Callable]:
    """Product embeddings and the query encoder cut to their first `dim` dimensions, renormalised (a model
    trained with `matryoshka_dims`; NaN rows, the skipped products, stay NaN)."""
    return l2_normalise(embeds[:, :dim]), lambda texts: l2_normalise(
        np.asarray(encode_queries(texts))[:, :dim]
    )


def evaluate_dense(
    embeds: np.ndarray,
    encode_queries: Callable,
    product_paths: Sequence[Sequence[str]],
    train_paths,
    **protocol,
) -> tuple[dict, int]:
    """Exact search over the products that could be encoded (non-NaN rows). Returns (results, skipped)."""
    kept = np.flatnonzero(~np.isnan(embeds).any(axis=1))
    ranker = DenseRanker(embeds[kept], encode_queries)
    results = evaluate_rankings(ranker, [product_paths[i] for i in kept], train_paths, **protocol)
    return results, len(embeds) - len(kept)


# --- per depth and placement (issue 13) ------------------------------------------------------------------

PER_DEPTH_METRICS = ("P@10", "mAP@10")
PLACEMENT_GROUPS = ("known", "new")  # a product's leaf seen in training / unseen (a new product type)


def _retrieval_entry(scores: np.ndarray, relevant: np.ndarray, keep: np.ndarray) -> dict | None:
    """P@10 / mAP@10 (the metric module's) over the queries (rows) in `keep`; products with -inf scores
    are out of the ranking. None when no query is kept."""
    if not keep.any():
        return None
    scores, relevant = scores[keep], relevant[keep]
    top = np.argsort(-scores, axis=1, kind="stable")[:, :ERROR_DEPTH]
    ranked = np.take_along_axis(relevant, top, axis=1) & np.isfinite(np.take_along_axis(scores, top, axis=1))
    values = metric_module().per_query_scores(ranked, relevant.sum(axis=1))
    return {**{m: float(values[m].mean()) for m in PER_DEPTH_METRICS}, "num_queries": int(keep.sum())}


def _accuracy(correct_rank: np.ndarray, groups: dict[str, np.ndarray]) -> dict:
    return {
        group: {
            "top1": float((correct_rank[mask] < 1).mean()),
            "top3": float((correct_rank[mask] < 3).mean()),
            "num_products": int(mask.sum()),
        }
        if mask.any()
        else None
        for group, mask in groups.items()
    }


def per_depth_report(
    product_embeds: np.ndarray,
    node_embeds: np.ndarray,
    nodes: Sequence[Node],
    product_paths: Sequence[Sequence[str]],
    train_paths: Iterable[Sequence[str]],
    node_scoring: str = "node",
    temperature: float | None = None,
) -> dict:
    """Retrieval and placement at every depth of the tree, so no level's gap hides inside "all".

    `nodes`: every node of the catalogue's tree (all splits); each row of `node_embeds` is one. Scores are
    cosine similarities read through `clipita.tree.node_scores(node_scoring)` ("max_leaf" and "tree": seen
    descendants only; "tree" and "marginal" need the model's `temperature`).
    Retrieval, per depth: P@10 / mAP@10 over that depth's queries present in the products, all / seen /
    unseen; for broad (non-leaf) depths also "known_leaves" / "new_leaves": relevance limited to products
    whose leaf was (not) seen in training, the other relevant products taken out of the ranking. Placement,
    per depth: top-1 / top-3 accuracy of each product's node among every node of that depth ("node": by its
    score; "path": the prefixes of `clipita.tree.rank_paths`, the category suggestion), for products of
    known / new leaves. Placement reads the nodes' own cosine scores whatever `node_scoring` is, as
    `suggest_paths` (the Space's and the helper's suggestion) does: a broad node's max over its seen leaves
    serves ranking products for it, but would let a seen leaf that shares a word with a new product type
    draw it into that leaf's group. Dense [nodes, products] scores: for evaluation splits, not for a whole
    shop.
    """
    seen = seen_nodes(train_paths)
    nodes = [tuple(n) for n in nodes]
    paths = [tuple(p) for p in product_paths]
    raw = l2_normalise(node_embeds) @ l2_normalise(product_embeds).T
    scores = node_scores(raw, nodes, node_scoring, seen, temperature)
    position = {n: i for i, n in enumerate(nodes)}
    leaf_seen = np.array([p in seen for p in paths])
    product_groups = {"known": leaf_seen, "new": ~leaf_seen}
    leaf_paths, order = rank_paths(raw, nodes, top=len(nodes))
    max_depth = max(len(p) for p in paths)
    report: dict = {"node_scoring": node_scoring, "retrieval": {}, "placement": {}, "path_placement": {}}
    for depth in range(1, max_depth + 1):
        name = depth_name(depth, max_depth)
        has = np.array([len(p) >= depth for p in paths])
        queries = sorted({p[:depth] for p in paths if len(p) >= depth})
        relevant = np.array([[p[:depth] == q for p in paths] for q in queries])  # [Q, N]
        s = scores[[position[q] for q in queries]]
        q_seen = np.array([q in seen for q in queries])
        entry = {
            "all": _retrieval_entry(s, relevant, np.ones(len(queries), bool)),
            "seen": _retrieval_entry(s, relevant, q_seen),
            "unseen": _retrieval_entry(s, relevant, ~q_seen),
        }
        if depth < max_depth:  # broad queries: relevance split by whether the products' leaves were seen
            for label, keep in (("known_leaves", leaf_seen), ("new_leaves", ~leaf_seen)):
                rel = relevant & keep[None, :]
                entry[label] = _retrieval_entry(
                    np.where(relevant & ~keep[None, :], -np.inf, s), rel, rel.any(1)
                )
        report["retrieval"][name] = entry

        candidates = [n for n in nodes if len(n) == depth]
        truth = np.array([position[p[:depth]] if len(p) >= depth else 0 for p in paths])
        candidate_scores = raw[[position[n] for n in candidates]].T  # [N, C]
        true_score = raw[truth, np.arange(len(paths))]
        node_rank = (candidate_scores > true_score[:, None]).sum(axis=1)
        groups = {g: m & has for g, m in product_groups.items()}
        report["placement"][name] = _accuracy(node_rank, groups)
        path_rank = np.array(
            [
                ranked_prefixes(leaf_paths, order[i], depth).index(p[:depth]) if len(p) >= depth else 0
                for i, p in enumerate(paths)
            ]
        )
        report["path_placement"][name] = _accuracy(path_rank, groups)
    return report


def clipita_per_depth(
    embeds: np.ndarray,
    encode_queries: Callable,
    nodes,
    product_paths,
    train_paths,
    query_text,
    node_scoring,
    temperature: float | None = None,
) -> dict:
    """`per_depth_report` for a CLIP-ITA model's embeddings (NaN rows: skipped products, left out)."""
    kept = np.flatnonzero(~np.isnan(embeds).any(axis=1))
    node_embeds = encode_queries([query_text(n) for n in nodes])
    return per_depth_report(
        embeds[kept],
        node_embeds,
        nodes,
        [product_paths[i] for i in kept],
        train_paths,
        node_scoring,
        temperature,
    )


def suggest_categories(
    model, processor, products, tree_paths: Sequence[Sequence[str]], top: int = 5, batch_size: int = 64
) -> list[list[tuple[Node, float]]]:
    """Category paths for products (a `datasets.Dataset` in the canonical schema), best first, consistent
    with the tree of `tree_paths`: per product, [(root -> leaf path, mean score of its nodes)]."""
    embeds, encode_queries = clipita_embeddings(model, processor, products, batch_size)
    nodes = CategoryTree(tree_paths).nodes()
    node_embeds = encode_queries([processor.category_text(n) for n in nodes])
    return suggest_paths(embeds, node_embeds, nodes, top)


def suggest_paths(
    product_embeds: np.ndarray, node_embeds: np.ndarray, nodes: Sequence[Node], top: int = 5
) -> list[list[tuple[Node, float]]]:
    """Ranked category paths from embeddings (`clipita.tree.rank_paths` on cosine scores): per product,
    [(path, score)] best first; a product that could not be encoded (NaN row) gets []."""
    nodes = [tuple(n) for n in nodes]
    raw = l2_normalise(node_embeds) @ l2_normalise(np.nan_to_num(product_embeds)).T
    paths, order = rank_paths(raw, nodes, top)
    position = {n: i for i, n in enumerate(nodes)}
    out = []
    for i, ranked in enumerate(order):
        if np.isnan(product_embeds[i]).any():
            out.append([])
            continue
        out.append(
            [
                (paths[j], float(np.mean([raw[position[n], i] for n in category_nodes(paths[j])])))
                for j in ranked
            ]
        )
    return out


def format_per_depth(results_by_model: dict[str, dict]) -> str:
    """Markdown: per run, retrieval P@10 / mAP@10 at every depth (all / seen / unseen / broad queries over
    known or new leaves) and placement top-1 / top-3 (node and path) for known / new product types."""
    blocks = []
    columns = ("all", "seen", "unseen", "known_leaves", "new_leaves")
    for model, result in results_by_model.items():
        report = result.get("per_depth")
        if not report:
            continue

        def cell(value, keys):
            return "-" if not value else " / ".join(f"{100 * value[k]:.1f}" for k in keys)

        lines = [
            f"Per depth, {model} (node scoring: {report['node_scoring']}); retrieval P@10 / mAP@10 in %:",
            "",
            "| depth | " + " | ".join(columns) + " |",
            "|" + "---|" * (len(columns) + 1),
        ]
        for depth, entry in report["retrieval"].items():
            lines.append(
                f"| {depth} | " + " | ".join(cell(entry.get(c), PER_DEPTH_METRICS) for c in columns) + " |"
            )
        lines += [
            "",
            "Placement of a product's node at each depth, top-1 / top-3 in % (node: among that depth's nodes; "
            "path: the suggested category paths):",
            "",
            "| depth | "
            + " | ".join(f"{how}: {g}" for how in ("node", "path") for g in PLACEMENT_GROUPS)
            + " |",
            "|" + "---|" * (2 * len(PLACEMENT_GROUPS) + 1),
        ]
        for depth in report["placement"]:
            cells = [
                cell(report[key][depth].get(g), ("top1", "top3"))
                for key in ("placement", "path_placement")
                for g in PLACEMENT_GROUPS
            ]
            lines.append(f"| {depth} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


# --- reporting ------------------------------------------------------------------------------------------


def format_table(results_by_model: dict[str, dict], metrics: Sequence[str] = ("P@10", "mAP@10")) -> str:
    """Markdown table shaped like the paper's Table 1: models x settings, overall / seen / unseen, in %."""
    settings = [s for s in LEVELS if any(s in settings_of(r) for r in results_by_model.values())]
    header = ["model"] + [f"{s}{'' if g == 'overall' else f': {g}'}" for s in settings for g in GROUPS]
    lines = [
        f"{' / '.join(metrics)} in % (x100, like the paper); seen / unseen split the queries.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for model, result in results_by_model.items():
        cells = [model]
        for setting in settings:
            groups = settings_of(result).get(setting, {})
            for group in GROUPS:
                values = [groups.get(group, {}).get(m) for m in metrics]
                cells.append(" / ".join("-" if v is None else f"{100 * v:.2f}" for v in values))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_sibling_confusion(results_by_model: dict[str, dict]) -> str:
    """One line per run: the specific setting's sibling confusion (`sibling_confusion`), in %."""
    lines = []
    for model, result in results_by_model.items():
        conf = settings_of(result).get("specific", {}).get("sibling_confusion") or {}
        if conf.get("unseen_sibling_share") is None:
            continue
        exposed = conf["unseen_sibling_share_exposed"]
        lines.append(
            f"- {model}: {100 * conf['unseen_sibling_share']:.2f}% of a seen leaf's top 10 are products of "
            f"unseen sibling leaves (mean over {conf['seen_queries']} seen leaves; "
            + ("-" if exposed is None else f"{100 * exposed:.2f}%")
            + f" over the {conf['with_unseen_sibling']} that have an unseen sibling)"
        )
    if not lines:
        return ""
    return "Sibling confusion (specific setting):\n\n" + "\n".join(lines) + "\n"


def plot_results(results_by_model: dict[str, dict], path: str | Path, metric: str = "P@10") -> Path:
    """Grouped bar plot (PNG): one panel per query group, settings on the x axis, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in LEVELS if any(s in settings_of(r) for r in results_by_model.values())]
    width = 0.8 / max(len(results_by_model), 1)
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(4 * len(GROUPS), 3.5), sharey=True)
    for ax, group in zip(axes, GROUPS):
        for i, (model, result) in enumerate(results_by_model.items()):
            values = [settings_of(result).get(s, {}).get(group, {}).get(metric) for s in settings]
            heights = [0.0 if v is None else 100 * v for v in values]
            ax.bar(np.arange(len(settings)) + i * width, heights, width, label=model)
        ax.set_xticks(np.arange(len(settings)) + width * (len(results_by_model) - 1) / 2, settings)
        ax.set_title(f"{group} queries")
    axes[0].set_ylabel(f"{metric} (%)")
    axes[-1].legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
