"""Category-to-image retrieval evaluation (the paper's protocol) on top of any ranker.

Queries are category-tree nodes (path prefixes) of the evaluated split; a product is relevant to a node when
its category path starts with it. Every product of the split is ranked for every query, at depth
``max(10, R)`` (R = number of relevant products) so R-precision is exact, in groups small enough that no
queries x products matrix is ever built. The metric math lives once, in the local `evaluate` module
``clipita/metrics/clipita_retrieval``; this file imports it by path.

Result shape (one entry of ``results["settings"]``; the whole results.json is described in eval.py)::

    {"overall" | "seen" | "unseen": {"P@1", "P@5", "P@10", "mAP@5", "mAP@10", "R-precision", "R@10",
                                     "MRR", "nDCG@10": float in [0, 1], or null for an empty group},
     "num_queries": {"overall": n, "seen": n, "unseen": n},  (seen / unseen null without a train split)
     "error_analysis": {"num_wrong": n, "same_path_share": float | null, "depth_distance": {"d": share}}}
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol

import faiss
import numpy as np
from tqdm.auto import tqdm

from clipita.data import category_nodes, seen_nodes

logger = logging.getLogger(__name__)

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "clipita_retrieval"
SETTINGS = ("all", "general", "specific")
GROUPS = ("overall", "seen", "unseen")
ERROR_DEPTH = 10  # the error analysis looks at the wrong products among the top 10

Node = tuple[str, ...]


@functools.cache
def metric_module() -> ModuleType:
    """The metric file imported by path: its numpy functions, without `evaluate`'s Arrow round trip."""
    spec = importlib.util.spec_from_file_location(
        "clipita_retrieval_metric", METRIC_PATH / "clipita_retrieval.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_metric(**kwargs):
    """The same metric as an `evaluate.EvaluationModule` (``evaluate.load`` on the local folder, offline)."""
    import evaluate

    return evaluate.load(str(METRIC_PATH), **kwargs)


def metric_names() -> list[str]:
    """The metric keys reported per group, in the order of `per_query_scores`."""
    module = metric_module()
    return list(module.per_query_scores(np.zeros((1, 1), bool), np.ones(1, int)))


# --- category tree --------------------------------------------------------------------------------------


def query_nodes(paths: Iterable[Sequence[str]], setting: str) -> list[Node]:
    """Distinct query nodes of a setting: roots ("general"), full paths ("specific") or every prefix ("all")."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")
    nodes: set[Node] = set()
    for path in paths:
        if not path:
            continue
        if setting == "general":
            nodes.add((path[0],))
        elif setting == "specific":
            nodes.add(tuple(path))
        else:
            nodes.update(category_nodes(path))
    return sorted(nodes)


class CategoryIndex:
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
    settings: Sequence[str] = SETTINGS,
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
    index = CategoryIndex(product_paths)
    seen = None if train_paths is None else seen_nodes(train_paths)
    metrics = metric_module()
    results: dict[str, dict] = {}
    for setting in settings:
        nodes = query_nodes(product_paths, setting)
        if max_queries_per_setting is not None and len(nodes) > max_queries_per_setting:
            rng = np.random.default_rng([seed, SETTINGS.index(setting)])  # same sample whatever else runs
            keep = np.sort(rng.choice(len(nodes), size=max_queries_per_setting, replace=False))
            nodes = [nodes[i] for i in keep]
        if not nodes:
            raise ValueError(f"setting {setting!r}: the evaluated products have no category paths")
        node_ids = np.array([index.node_ids[n] for n in nodes])
        depths = np.array([len(n) for n in nodes])
        num_relevant = index.counts[node_ids]
        ancestors = index.ancestors(nodes)

        per_query: dict[str, np.ndarray] = {}
        wrong_common: list[np.ndarray] = []  # shared prefix length of each wrong top-10 product
        wrong_distance: list[np.ndarray] = []
        groups = _groups_by_depth(num_relevant, max_entries, query_batch)
        for group in tqdm(groups, desc=f"Ranking ({setting})", disable=len(groups) < 4):
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
    return results


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


# --- checkpoints and catalogues ------------------------------------------------------------------------

# Model modality -> (catalogue column, `encode_products` argument).
MODALITY_COLUMNS = {
    "image": ("image", "images"),
    "title": ("title", "titles"),
    "attributes": ("attributes", "attributes"),
}


def embed_rows(
    products,
    columns: Sequence[str],
    encode: Callable[[dict], np.ndarray],
    chunk_size: int = 512,
    desc: str = "Encoding products",
) -> np.ndarray:
    """Encode a `datasets.Dataset` chunk by chunk (one chunk of decoded images in memory at a time).

    A chunk that fails is retried row by row; a row that still fails (unreadable image, bad field) becomes
    a NaN row, counted and logged, instead of ending the run. If every row of the first chunk fails, the
    error is systematic (wrong model or columns) and is raised.
    """
    view = products.select_columns(list(columns))
    out: np.ndarray | None = None
    broken: list[int] = []
    for start in tqdm(range(0, len(view), chunk_size), desc=desc, disable=len(view) <= chunk_size):
        stop = min(start + chunk_size, len(view))
        try:
            rows = {start: np.asarray(encode(view[start:stop]), dtype=np.float32)}
        except Exception as chunk_error:  # isolate the broken rows, then go on
            rows = {}
            for i in range(start, stop):
                try:
                    rows[i] = np.asarray(encode(view[i : i + 1]), dtype=np.float32)
                except Exception as error:
                    logger.warning("product %d skipped: %s: %s", i, type(error).__name__, error)
                    broken.append(i)
            if not rows and start == 0:
                raise ValueError(
                    f"no product of the first chunk could be encoded: {chunk_error}"
                ) from chunk_error
        for i, vectors in rows.items():
            if out is None:
                out = np.full((len(view), vectors.shape[1]), np.nan, dtype=np.float32)
            out[i : i + len(vectors)] = vectors
    if out is None:
        raise ValueError("no product could be encoded")
    if broken:
        logger.warning("%d of %d products could not be encoded and are left out", len(broken), len(view))
    return out


def load_checkpoint(path: str, device: str | None = None):
    """A CLIP-ITA folder or Hub id -> (model in eval mode on device, processor), through remote code."""
    import torch
    from transformers import AutoModel, AutoProcessor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModel.from_pretrained(path, trust_remote_code=True).to(device).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    return model, processor


def clipita_embeddings(model, processor, products, batch_size: int = 64) -> tuple[np.ndarray, Callable]:
    """CLIP-ITA product embeddings [N, d] (NaN rows: skipped products) and its category-text encoder."""
    modalities = model.config.product_modalities

    def encode(rows: dict) -> np.ndarray:
        inputs = {MODALITY_COLUMNS[m][1]: rows[MODALITY_COLUMNS[m][0]] for m in modalities}
        return model.encode_products(
            **inputs, batch_size=batch_size, processor=processor, show_progress_bar=False
        )

    def encode_queries(texts: list[str]) -> np.ndarray:
        return model.encode_categories(
            texts, batch_size=batch_size, processor=processor, show_progress_bar=False
        )

    columns = [MODALITY_COLUMNS[m][0] for m in modalities]
    return embed_rows(products, columns, encode, chunk_size=8 * batch_size), encode_queries


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


BASELINES = ("bm25", "clip-zero-shot")
BASELINE_NAMES = {"bm25": "BM25", "clip-zero-shot": "CLIP zero-shot"}


def run_evaluation(
    catalogue,
    split: str = "test",
    model_paths: Sequence[str] = (),
    baselines: Sequence[str] = BASELINES,
    dataset_name: str | None = None,
    zero_shot_from: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    **protocol,
) -> dict:
    """Evaluate checkpoints and baselines on one split of a catalogue (a `datasets.DatasetDict`; its train
    split, when present, decides which categories are seen).

    Returns the results.json object: the first model's run (or the first baseline's, without models) with the
    issue's keys, and every other run, same shape, under "baselines". ``protocol`` goes to `evaluate_rankings`
    (settings, max_queries_per_setting, seed). The zero-shot CLIP baseline uses the CLIP towers and
    projections inside ``zero_shot_from`` (default: the first model), so it is zero-shot only when that
    model kept CLIP frozen.
    """
    import datasets

    from clipita.baselines import BM25Ranker, clip_zero_shot_embeddings

    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
    if split not in catalogue:
        raise ValueError(f"the catalogue has no {split!r} split (splits: {list(catalogue)})")
    if not model_paths and not baselines:
        raise ValueError("nothing to evaluate: give model paths and/or baselines")
    products = catalogue[split]
    if isinstance(products, datasets.IterableDataset):
        raise ValueError("evaluation ranks the whole split: load it as a map-style Dataset (no streaming)")
    product_paths = list(products["category"])
    train_paths = list(catalogue["train"]["category"]) if "train" in catalogue else None
    if train_paths is None:
        logger.warning(
            "no train split: seen / unseen categories cannot be told apart and are reported as null"
        )
    meta = {"dataset": dataset_name, "split": split}

    def run(name: str, model: str, results: dict, skipped: int, **extra) -> dict:
        entry = {"name": name, "model": model, **meta, "num_products": len(products) - skipped}
        return {**entry, "num_skipped": skipped, **extra, "settings": results}

    runs = []
    if "bm25" in baselines:
        results = evaluate_rankings(
            BM25Ranker(list(products["title"])), product_paths, train_paths, **protocol
        )
        runs.append(run("BM25", "bm25", results, 0))
    if "clip-zero-shot" in baselines:
        source = zero_shot_from or (model_paths[0] if model_paths else None)
        if source is None:
            raise ValueError("the clip-zero-shot baseline needs a model path (zero_shot_from or model_paths)")
        model, processor = load_checkpoint(source, device)
        embeds, encode_queries = clip_zero_shot_embeddings(model, processor, products, batch_size)
        results, skipped = evaluate_dense(
            embeds, encode_queries, product_paths, train_paths, query_text=processor.category_text, **protocol
        )
        runs.append(run("CLIP zero-shot", "clip-zero-shot", results, skipped, zero_shot_from=source))
        del model
    names = [run["name"] for run in runs]
    for path in model_paths:
        model, processor = load_checkpoint(path, device)
        embeds, encode_queries = clipita_embeddings(model, processor, products, batch_size)
        results, skipped = evaluate_dense(
            embeds, encode_queries, product_paths, train_paths, query_text=processor.category_text, **protocol
        )
        name = Path(str(path).rstrip("/")).name or str(path)
        name = name if name not in names else f"{name} ({len(names)})"
        names.append(name)
        runs.append(run(name, str(path), results, skipped, variant=model.config.variant))
        del model
    primary = len(runs) - len(model_paths) if model_paths else 0
    return {**runs[primary], "baselines": [r for i, r in enumerate(runs) if i != primary]}


def runs_by_name(results: dict) -> dict[str, dict]:
    """results.json -> {row name: run}, baselines first then models, ready for `format_table`."""
    runs = [results, *results.get("baselines", [])]
    runs = [{k: v for k, v in r.items() if k != "baselines"} for r in runs]
    order = [r for r in runs if r["model"] in BASELINES] + [r for r in runs if r["model"] not in BASELINES]
    return {r["name"]: r for r in order}


# --- reporting ------------------------------------------------------------------------------------------


def _settings_of(result: dict) -> dict:
    """Accept a results.json object or its bare "settings" object."""
    return result.get("settings", result)


def format_table(results_by_model: dict[str, dict], metrics: Sequence[str] = ("P@10", "mAP@10")) -> str:
    """Markdown table shaped like the paper's Table 1: models x settings, overall / seen / unseen, in %."""
    settings = [s for s in SETTINGS if any(s in _settings_of(r) for r in results_by_model.values())]
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
            groups = _settings_of(result).get(setting, {})
            for group in GROUPS:
                values = [groups.get(group, {}).get(m) for m in metrics]
                cells.append(" / ".join("-" if v is None else f"{100 * v:.2f}" for v in values))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(results_by_model: dict[str, dict], path: str | Path, metric: str = "P@10") -> Path:
    """Grouped bar plot (PNG): one panel per query group, settings on the x axis, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in SETTINGS if any(s in _settings_of(r) for r in results_by_model.values())]
    width = 0.8 / max(len(results_by_model), 1)
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(4 * len(GROUPS), 3.5), sharey=True)
    for ax, group in zip(axes, GROUPS):
        for i, (model, result) in enumerate(results_by_model.items()):
            values = [_settings_of(result).get(s, {}).get(group, {}).get(metric) for s in settings]
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
