"""The catalogue index: a FAISS index, the exact embeddings, product metadata and a manifest; filtered
search and the category-text search front end.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipita.encoding import softmax_temperature
from clipita.fileio import write_atomic, write_json
from clipita.index.kinds import (
    DEFAULT_EXACT_THRESHOLD,
    IVF_DATA_FILE,
    IVF_KINDS,
    REFINE_CODES_FILE,
    REFINE_RANGE_FILE,
    SQ8Codes,
    apply_search_params,
    approximate_search,
    build_index,
    build_refine,
    estimate_bytes,
    exact_search,
    gather_rows,
    measure_recall,
    open_embeddings,
    read_index,
    set_ivf_nprobe,
)
from clipita.index.shards import METADATA_SCHEMA, metadata_row, save_npy
from clipita.loading import json_problem
from clipita.progress import first_line
from clipita.schema import normalise_attribute, parse_category, path_text, synonym_table
from clipita.tree import (
    POSTERIOR_SCORINGS,
    CategoryTree,
    check_node_scoring,
    node_scores,
    scoring_nodes,
)

MANIFEST_FILE = "manifest.json"


def clipita_version() -> str:
    """The installed clip-ita version, recorded in manifests so an index can be traced to its code."""
    try:
        return importlib.metadata.version("clip-ita")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (clip-ita not installed)"


@dataclass
class Hit:
    """One ranked product."""

    product_id: str
    score: float
    title: str
    category: list[str]
    attributes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _as_metadata_table(metadata: pa.Table | Sequence[dict]) -> pa.Table:
    if isinstance(metadata, pa.Table):
        missing = [c for c in METADATA_SCHEMA.names if c not in metadata.column_names]
        if missing:
            raise ValueError(f"metadata lacks column(s) {missing}; expected {METADATA_SCHEMA.names}")
        return metadata.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)
    return pa.Table.from_pylist([metadata_row(r) for r in metadata], METADATA_SCHEMA)


class ManifestChecks:
    """What an index knows from its manifest about the model that built it, and the checks a query model
    must pass (shared by `CatalogueIndex` and the vector database's `MilvusIndex`)."""

    manifest: dict
    path: str | None

    @property
    def dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def model_name(self) -> str:
        return (self.manifest.get("model") or {}).get("name_or_path") or "an unrecorded model"

    def check_dim(self, dim: int, model_name: str = "the query model") -> None:
        """An index built by a model of another dimension is unusable: say which two models disagree."""
        if dim != self.dim:
            where = f" at {self.path}" if self.path else ""
            raise ValueError(
                f"dimension mismatch: {model_name} gives {dim}-d embeddings but the index{where} holds "
                f"{self.dim}-d embeddings built by {self.model_name}; rebuild the index with this model"
            )

    def check_weights(self, sha256: str, model_name: str = "the query model") -> None:
        """An index answers only for the weights that built it: a model of the same dimension but other
        weights (another model, or the same folder retrained) would return noise. Indexes older than the
        weights fingerprint record none and are not checked."""
        recorded = (self.manifest.get("model") or {}).get("weights_sha256")
        if recorded and recorded != sha256:
            where = f" at {self.path}" if self.path else ""
            raise ValueError(
                f"model mismatch: the index{where} was built by {self.model_name} with weights "
                f"{recorded[:12]}, but {model_name} has weights {sha256[:12]}; rebuild the index with this "
                "model, or pass --allow_model_mismatch"
            )


def category_node_texts(path: Sequence[str]) -> list[str]:
    """Every node of a category path as text, root first: ["Home", "Home > Kitchen", "Home > Kitchen > Mugs"]."""
    return [path_text(path[: i + 1]) for i in range(len(path))]


class CatalogueIndex(ManifestChecks):
    """A searchable catalogue: FAISS index, the exact embeddings, product metadata and a manifest.

    Folder layout: `index.faiss`, `embeddings.npy` (float32 `[N, d]`, memory-mapped on load),
    `metadata.parquet` (product_id, title, category, attributes) and `manifest.json` (written last,
    so a folder with a manifest is complete); an `ivfpq_disk` index adds `index.ivfdata`, its lists, and
    an IVF-PQ index with the SQ8 stage `refine_sq8.npy` (uint8 `[N, d]`, memory-mapped on load) and
    `refine_sq8_range.npy`.
    """

    exact_subset_limit = 65_536  # filtered searches over at most this many products run exactly
    # so do searches whose k is a tenth or more of the products searched: cheaper than a huge efSearch

    def __init__(
        self,
        index: faiss.Index,
        embeddings: np.ndarray,
        metadata: pa.Table,
        manifest: dict,
        path: str | None = None,
        refine: SQ8Codes | None = None,
    ):
        if index.ntotal != len(embeddings) or len(embeddings) != metadata.num_rows:
            raise ValueError(
                f"index ({index.ntotal}), embeddings ({len(embeddings)}) and metadata ({metadata.num_rows}) "
                "must hold the same products"
            )
        self.index = index
        self.embeddings = embeddings
        self.metadata = metadata
        self.manifest = manifest
        self.path = path
        if refine is not None and len(refine.codes) != len(embeddings):
            raise ValueError(f"the SQ8 copy holds {len(refine.codes)} vectors, the index {len(embeddings)}")
        self.refine = refine
        self._attribute_rows: tuple[list, np.ndarray, np.ndarray] | None = None
        self._tree: CategoryTree | None = None
        self._node_embeds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def kind(self) -> str:
        return self.manifest["index"]["kind"]

    def set_nprobe(self, nprobe: int) -> None:
        """Probe `nprobe` IVF lists per query from now on (this object only; the folder keeps its own):
        fewer is faster and may lose recall. The build's choice is nlist / 32; docs/BENCHMARKS.md measures a
        quarter of it at 10M products."""
        if self.kind not in IVF_KINDS:
            raise ValueError(f"--nprobe applies to IVF-PQ indexes; this one is {self.kind!r}")
        params = self.manifest["index"]["params"]
        if not 1 <= nprobe <= params["nlist"]:
            raise ValueError(
                f"--nprobe must be between 1 and the index's nlist {params['nlist']}, got {nprobe}"
            )
        set_ivf_nprobe(params, nprobe)
        apply_search_params(self.index, self.kind, params)

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        metadata: pa.Table | Sequence[dict],
        kind: str = "auto",
        exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
        memory_budget_mb: float | None = None,
        model_info: dict | None = None,
        text_queries: np.ndarray | None = None,
        recall_queries: int = 500,
        seed: int = 0,
        progress: bool = True,
        extra_manifest: dict | None = None,
        directory: str | os.PathLike | None = None,
    ) -> CatalogueIndex:
        """Build the index; approximate kinds get recall@10 against exact search measured and recorded.

        Recall queries are `recall_queries` sampled product embeddings plus up to as many
        `text_queries` (category-text embeddings), reported apart because text queries sit in
        another region of the space than the products an index was trained on.

        `embeddings` may be a memory-mapped `.npy` (e.g. `directory/embeddings.npy`): it is read in chunks,
        never held whole. `directory` is the index folder, where an `ivfpq_disk` index writes its lists.
        """
        emb = (
            embeddings if isinstance(embeddings, np.memmap) else np.ascontiguousarray(embeddings, np.float32)
        )
        table = _as_metadata_table(metadata)
        index, kind, params = build_index(
            emb, kind, exact_threshold, memory_budget_mb, seed, progress, directory=directory
        )
        refine = build_refine(emb, params, seed, directory)

        def measure(p: dict, queries: np.ndarray, with_refine: SQ8Codes | None = refine) -> float:
            return measure_recall(index, kind, p, emb, queries, refine=with_refine)

        recall: dict[str, Any] = {"exact": kind == "flat"}
        if kind != "flat":
            rng = np.random.default_rng(seed)
            sample = emb[rng.choice(len(emb), min(recall_queries, len(emb)), replace=False)]
            recall["product_queries"] = len(sample)
            recall["recall_at_10_products"] = measure(params, sample)
            all_q = [sample]
            if text_queries is not None and len(text_queries):
                tq = np.asarray(text_queries, dtype=np.float32)
                tq = tq[rng.choice(len(tq), min(recall_queries, len(tq)), replace=False)]
                recall["text_queries"] = len(tq)
                recall["recall_at_10_text"] = measure(params, tq)
                all_q.append(tq)
            recall["recall_at_10"] = measure(params, np.concatenate(all_q))
            if params.get("rerank"):  # what the quantised codes alone would give
                raw = {**params, "rerank": 0, "rerank_without_refine": 0}
                recall["recall_at_10_without_rerank"] = measure(raw, np.concatenate(all_q), None)
            if refine is not None:  # the path without the SQ8 stage: PQ candidates re-ranked exactly
                recall["recall_at_10_without_refine"] = measure(params, np.concatenate(all_q), None)
        manifest = {
            "format_version": 1,
            "clipita_version": clipita_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model_info or {},
            "embedding_dim": int(emb.shape[1]),
            "count": int(len(emb)),
            "index": {
                "kind": kind,
                "params": params,
                "exact_threshold": exact_threshold,
                "memory_budget_mb": memory_budget_mb,
                "estimated_bytes": estimate_bytes(kind, len(emb), emb.shape[1], params or None),
            },
            "recall": recall,
            **(extra_manifest or {}),
        }
        built = cls(index, emb, table, manifest, refine=refine)
        built.path = None if directory is None else str(directory)
        return built

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if self.kind == "ivfpq_disk" and self.path and Path(self.path).resolve() != out.resolve():
            write_atomic(out / IVF_DATA_FILE, lambda p: shutil.copyfile(Path(self.path) / IVF_DATA_FILE, p))
        if self.refine is not None:
            self.refine.save(out)
        write_atomic(out / "index.faiss", lambda p: faiss.write_index(self.index, str(p)))
        if not _is_file_of(self.embeddings, out / "embeddings.npy"):  # a build from the folder's own file
            write_atomic(
                out / "embeddings.npy", lambda p: save_npy(p, np.asarray(self.embeddings, np.float32))
            )
        write_atomic(out / "metadata.parquet", lambda p: pq.write_table(self.metadata, p))
        write_json(out / MANIFEST_FILE, self.manifest)
        self.path = str(out)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CatalogueIndex:
        path = Path(directory)
        if not (path / MANIFEST_FILE).exists():
            raise FileNotFoundError(f"{path} is not an index folder: it has no {MANIFEST_FILE}")
        problem = json_problem(path / MANIFEST_FILE)
        if problem:
            raise ValueError(f"{path / MANIFEST_FILE}: {problem}; rebuild the index")
        manifest = json.loads((path / MANIFEST_FILE).read_text())

        def read(name: str, reader):
            try:
                return reader(path / name)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{path / name}: missing from the index folder; rebuild the index"
                ) from None
            except Exception as err:  # faiss, numpy and arrow each raise their own kind on a damaged file
                first = first_line(err)
                raise ValueError(
                    f"{path / name}: unreadable, truncated or corrupted ({first}); rebuild the index"
                ) from None

        index = read("index.faiss", read_index)
        apply_search_params(index, manifest["index"]["kind"], manifest["index"]["params"])
        embeddings = read("embeddings.npy", open_embeddings)
        metadata = read("metadata.parquet", pq.read_table)
        refine = None
        if manifest["index"]["params"].get("refine") == "sq8":
            read(REFINE_RANGE_FILE, lambda p: p.stat())  # a missing or damaged file says which
            refine = read(REFINE_CODES_FILE, lambda p: SQ8Codes.load(p.parent))
            if refine.codes.shape != tuple(embeddings.shape):
                raise ValueError(
                    f"{path / REFINE_CODES_FILE} holds {refine.codes.shape} codes for {embeddings.shape} "
                    "embeddings; the folder mixes two builds: rebuild the index"
                )
        if index.ntotal != len(embeddings) or len(metadata) != len(embeddings):
            raise ValueError(
                f"{path}: index.faiss holds {index.ntotal} vectors, embeddings.npy {len(embeddings)} and "
                f"metadata.parquet {len(metadata)} rows; the folder mixes two builds: rebuild the index"
            )
        return cls(index, embeddings, metadata, manifest, str(path), refine=refine)

    def rows_matching(self, filters: Sequence[str], synonyms: Mapping | None = None) -> np.ndarray:
        """Sorted row numbers of the products that carry every `key: value` attribute.

        Filters and stored attributes are both put through `clipita.schema.normalise_attribute`: case and
        spaces do not matter, and key / value spellings in the synonym table match ("color: Red" finds
        "Colour: red"). `synonyms` adds to the built-in table (`clipita.schema.synonym_table`'s shape).
        """
        table = synonym_table(synonyms)
        wanted = [normalise_attribute(f, table) for f in filters]
        if self._attribute_rows is None:  # each distinct stored attribute once, and where it occurs
            attrs = self.metadata.column("attributes").combine_chunks()
            flat = pc.list_flatten(attrs)
            distinct = pc.unique(flat)
            self._attribute_rows = (
                distinct.to_pylist(),
                pc.index_in(flat, value_set=distinct).to_numpy(zero_copy_only=False),
                pc.list_parent_indices(attrs).to_numpy(),
            )
        distinct, positions, parents = self._attribute_rows
        normalised = np.array([_normalised_or_none(a, table) for a in distinct], dtype=object)
        rows = np.arange(len(self))
        for attribute in wanted:
            rows = np.intersect1d(rows, parents[normalised[positions] == attribute])
        return rows

    def rows_in_category(self, category: str) -> np.ndarray:
        """Sorted row numbers of the products on or under `category` (a path from the root, " > " apart)."""
        node = path_text(parse_category(category))
        paths = self.metadata.column("category").to_pylist()
        return np.array([i for i, path in enumerate(paths) if node in category_node_texts(path)], np.int64)

    def search(
        self,
        query_embeds: np.ndarray,
        k: int = 10,
        filters: Sequence[str] | None = None,
        synonyms: Mapping | None = None,
        category: str | None = None,
    ) -> list[list[Hit]]:
        """Top-k products per query row; k above the catalogue (or the filtered set) returns all of it:
        fewer than k hits means fewer products match the filters, never padding with others. `category`
        ("Home > Kitchen", a path from the root) keeps the products on or under that node."""
        scores, ids = self.search_rows(query_embeds, k, filters, synonyms, category)
        return [self.hits(s, i) for s, i in zip(scores, ids)]

    def search_rows(
        self,
        query_embeds: np.ndarray,
        k: int = 10,
        filters: Sequence[str] | None = None,
        synonyms: Mapping | None = None,
        category: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` as (scores, row ids) arrays [Q, <=k]; an id of -1 is no product."""
        q = np.asarray(query_embeds, dtype=np.float32)
        q = np.ascontiguousarray(q[None, :] if q.ndim == 1 else q)
        if q.ndim != 2:
            raise ValueError(f"query embeddings must be [Q, d], got shape {q.shape}")
        self.check_dim(q.shape[1])
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if filters or category:
            allowed = self.rows_matching(filters or [], synonyms)
            if category:
                allowed = np.intersect1d(allowed, self.rows_in_category(category))
            return self._search_subset(q, k, allowed)
        return self._search_all(q, min(k, len(self)))

    def node_embeddings(self, model: Any, processor: Any, encode: Callable[[], np.ndarray]) -> np.ndarray:
        """The embeddings of every node of `category_tree()` under (model, processor): `encode()` once,
        then kept for as long as the model lives."""
        cached = self._node_embeds.get(model)
        if cached is None or cached[0] is not processor:
            cached = self._node_embeds[model] = (processor, encode())
        return cached[1]

    def category_tree(self) -> CategoryTree:
        """The tree of the indexed products' category paths (built once)."""
        if self._tree is None:
            self._tree = CategoryTree(self.metadata.column("category").to_pylist())
        return self._tree

    def _exact(self, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if rows is None:
            return exact_search(self.embeddings, q, k)
        emb = np.ascontiguousarray(gather_rows(self.embeddings, rows))
        scores, ids = faiss.knn(q, emb, k, metric=faiss.METRIC_INNER_PRODUCT)
        return scores, rows[ids]

    def _search_all(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind != "flat" and k * 10 >= len(self):  # a large share of the catalogue: exact is cheaper
            return self._exact(q, k)
        params = self.manifest["index"]["params"]
        scores, ids = approximate_search(
            self.index, self.kind, params, self.embeddings, q, k, refine=self.refine
        )
        short = (ids < 0).any(axis=1)  # an approximate index may return fewer than k: finish exactly
        if short.any():
            scores[short], ids[short] = self._exact(q[short], k)
        return scores, ids

    def _search_subset(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(allowed))
        if k == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if len(allowed) <= self.exact_subset_limit or k * 10 >= len(allowed):
            return self._exact(q, k, allowed)
        selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
        params = self.manifest["index"]["params"]
        scores, ids = approximate_search(
            self.index, self.kind, params, self.embeddings, q, k, selector, refine=self.refine
        )
        short = (ids < 0).any(axis=1)
        if short.any():
            scores[short], ids[short] = self._exact(q[short], k, allowed)
        return scores, ids

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        """Row ids and their scores -> `Hit`s (ids of -1 left out)."""
        keep = ids >= 0
        rows = self.metadata.take(pa.array(ids[keep])).to_pylist()
        return [Hit(score=float(s), **row) for s, row in zip(scores[keep], rows)]


def _is_file_of(array: np.ndarray, path: Path) -> bool:
    """Whether `array` is the memory-mapped contents of `path` (then there is nothing to write)."""
    filename = getattr(array, "filename", None)
    return bool(filename) and path.exists() and Path(filename).resolve() == path.resolve()


def _normalised_or_none(attribute: str | None, table: Mapping) -> str | None:
    """A stored attribute in filter form; None for one that is not `key: value` (no filter matches it)."""
    try:
        return normalise_attribute(attribute, table) if attribute is not None else None
    except ValueError:
        return None


def model_dim(model: Any) -> int | None:
    """The embedding size a model declares (`config.projection_dim`), if it declares one."""
    return getattr(getattr(model, "config", None), "projection_dim", None)


# The longest query text searched: a category path of 9 levels (XMarket's deepest) of up to ~100 characters
# each, with its separators, fits; anything longer is not a category, and encoding it costs time and memory
# for nothing (the text encoder reads its first few dozen tokens only).
MAX_QUERY_CHARS = 1000


def check_query_length(text: str) -> None:
    """ValueError for a query text over MAX_QUERY_CHARS (the message gives its length, not its text)."""
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(
            f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS} (a category path "
            "of up to 9 levels): shorten it"
        )


def check_queries(categories: str | Sequence[str]) -> list[str]:
    """Query text(s) as a list; empty text is an error, not a search for everything; over-long text too."""
    texts = [categories] if isinstance(categories, str) else list(categories)
    for text in texts:
        if isinstance(text, str):
            check_query_length(text)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError(f"empty query: every query must be non-empty category text, got {texts!r}")
    return texts


# Under "tree" and "marginal" node scoring, about how many products are re-scored for a query: the top of the
# named node's list and of each of its scoring leaves' lists, each list at least k long. The re-scoring is
# exact on them; a product in none of those lists is not considered (evaluation, which scores every product,
# measures the dense ranking).
TREE_CANDIDATES = 1000


def search(
    categories: str | Sequence[str],
    k: int = 10,
    *,
    model: Any,
    index: CatalogueIndex | str | os.PathLike,
    processor: Any = None,
    filters: Sequence[str] | None = None,
    synonyms: Mapping | None = None,
    node_scoring: str = "node",
    category: str | None = None,
) -> list[list[Hit]]:
    """Category text(s) -> ranked products per text, via `model.encode_categories` and the index
    (`filters` and `synonyms` as in `CatalogueIndex.search`). A text that names nodes of the index's tree
    is scored under ``node_scoring`` (`clipita.tree.node_scores`; its score is the best of the nodes it
    names): "max_leaf" is exact (each leaf's list is a top k), "tree" and "marginal" re-score the union of
    the named nodes' and their leaves' top `TREE_CANDIDATES` lists. Other texts, and "node", score by the
    text."""
    texts = check_queries(categories)
    if isinstance(index, (str, os.PathLike)):
        index = CatalogueIndex.load(index)
    name = getattr(model, "name_or_path", None) or type(model).__name__
    kwargs = {"processor": processor} if processor is not None else {}
    if index.dim in (getattr(getattr(model, "config", None), "matryoshka_dims", None) or []):
        kwargs["dim"] = index.dim  # an index of the model's embeddings cut to a nested (Matryoshka) size
    elif (dim := model_dim(model)) is not None:
        index.check_dim(dim, f"model {name}")

    def encode(items: Sequence) -> np.ndarray:
        query = np.asarray(model.encode_categories(list(items), convert_to_numpy=True, **kwargs))
        index.check_dim(query.shape[-1], f"model {name}")
        return query

    if check_node_scoring(node_scoring) == "node":
        return index.search(encode(texts), k, filters, synonyms, category=category)
    if not isinstance(index, CatalogueIndex):  # a vector database holds no tree
        raise ValueError(
            f"--node_scoring {node_scoring} needs the index folder's category tree, not {index.path}"
        )
    tree = index.category_tree()
    posterior = node_scoring in POSTERIOR_SCORINGS
    temperature = softmax_temperature(model) if posterior else None
    out = []
    for text in texts:
        named = tree.nodes_named(text)
        if not named:
            out += index.search(encode([text]), k, filters, synonyms, category=category)
            continue
        lists = list(dict.fromkeys(m for n in named for m in scoring_nodes(n, tree.nodes(), node_scoring)))
        if posterior:
            nodes = tree.nodes()
            node_embeds = index.node_embeddings(
                model, processor, lambda: encode([list(n) for n in tree.nodes()])
            )
        else:  # max_leaf: the named nodes and their leaves are enough
            nodes = lists
            node_embeds = encode([list(n) for n in nodes])
        position = {n: i for i, n in enumerate(nodes)}
        fetch = max(k, TREE_CANDIDATES // len(lists)) if posterior else k
        _, ids = index.search_rows(
            node_embeds[[position[m] for m in lists]], fetch, filters, synonyms, category
        )
        rows = np.unique(ids[ids >= 0])
        raw = node_embeds @ gather_rows(index.embeddings, rows).T  # [nodes, candidates]
        scores = node_scores(raw, nodes, node_scoring, temperature=temperature)
        best = scores[[position[n] for n in named]].max(axis=0)  # a text naming several nodes: the best
        top = np.argsort(-best, kind="stable")[:k]
        out.append(index.hits(best[top], rows[top]))
    return out
