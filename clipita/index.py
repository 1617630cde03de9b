"""Catalogue index: resumable encoding into shards, a FAISS index sized to the catalogue, and search.

Model-independent on purpose: encoding takes any `encode_batch(rows) -> [B, d]` callable, so the
index, its resumption and its filters are tested without a trained model. Embeddings are expected
L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "hnsw", "ivfpq")
DEFAULT_EXACT_THRESHOLD = 200_000
DEFAULT_SHARD_SIZE = 16_384
PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "manifest.json"
METADATA_SCHEMA = pa.schema(
    [
        ("product_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.list_(pa.string())),
        ("attributes", pa.list_(pa.string())),
    ]
)
_FIRST_SKIPPED = 20  # how many skipped ids / reasons a report keeps


def clipita_version() -> str:
    """The installed clip-ita version, recorded in manifests so an index can be traced to its code."""
    try:
        return importlib.metadata.version("clip-ita")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (clip-ita not installed)"


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary sibling then `os.replace`, so a killed run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))


# ----------------------------------------------------------------------------------------------
# Encoding into resumable shards
# ----------------------------------------------------------------------------------------------


@dataclass
class EncodeReport:
    """What an encode run did; `summary()` is what a person reads at the end of a build."""

    out_dir: str
    dim: int | None
    encoded: int
    skipped: int
    shards: int
    resumed_from_row: int
    rows_seen: int
    complete: bool
    skipped_ids: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"encoded {self.encoded} products into {self.shards} shards in {self.out_dir} "
            f"(dim {self.dim}, {self.rows_seen} rows read"
            + (f", resumed at row {self.resumed_from_row})" if self.resumed_from_row else ")")
        ]
        if self.skipped:
            lines.append(
                f"skipped {self.skipped} products; first ids: {', '.join(self.skipped_ids)}; "
                f"first reasons: {'; '.join(self.skip_reasons[:3])}"
            )
        else:
            lines.append("skipped 0 products")
        return "\n".join(lines)


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # streaming datasets and generators have no length
        return None


def _iter_rows(dataset: Any, start: int, batch_size: int) -> Iterator[dict]:
    """Rows from `start` on, with images left undecoded so one broken image costs one row, not a batch."""
    import datasets

    if isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        features = dataset.features
        if features is not None and isinstance(features.get("image"), datasets.Image):
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
        for batch in (dataset.skip(start) if start else dataset).iter(batch_size=batch_size):
            columns = list(batch)
            yield from (dict(zip(columns, values)) for values in zip(*batch.values()))
    else:
        yield from islice(iter(dataset), start, None)


def decode_image(value: Any) -> Image.Image:
    """A canonical-schema image cell (PIL image, `{"bytes", "path"}` dict or path) -> RGB PIL image."""
    if value is None:
        raise ValueError("no image")
    if isinstance(value, Image.Image):
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


def _metadata_row(row: dict) -> dict:
    return {
        "product_id": str(row["product_id"]),
        "title": row.get("title") or "",
        "category": [str(c) for c in row.get("category") or []],
        "attributes": [str(a) for a in row.get("attributes") or []],
    }


def _check_embeddings(emb: Any, count: int) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != count:
        raise ValueError(f"encode_batch returned shape {emb.shape} for {count} rows; expected [{count}, d]")
    if not np.isfinite(emb).all():
        raise ValueError("encode_batch returned non-finite values")
    return emb


def _encode_rows(
    rows: list[dict], encode_batch: Callable[[list[dict]], np.ndarray]
) -> tuple[list[dict], np.ndarray | None, list[tuple[str, str, str]]]:
    """Encode a batch; on failure retry row by row so only the broken rows are skipped.

    Failures come back as (product_id, stage, reason), stage "image" or "encode".
    """
    ready, failed = [], []
    for row in rows:
        pid = str(row.get("product_id", "?"))
        try:
            ready.append({**row, "image": decode_image(row.get("image"))} if "image" in row else row)
        except Exception as err:  # a broken image is one skipped row, never a dead run
            failed.append((pid, "image", f"{pid}: image: {type(err).__name__}: {err}"))
    if not ready:
        return [], None, failed
    try:
        return ready, _check_embeddings(encode_batch(ready), len(ready)), failed
    except Exception:
        logger.debug("batch failed; retrying row by row", exc_info=True)
    kept, parts = [], []
    for row in ready:
        pid = str(row.get("product_id", "?"))
        try:
            parts.append(_check_embeddings(encode_batch([row]), 1))
            kept.append(row)
        except Exception as err:
            failed.append((pid, "encode", f"{pid}: encode: {type(err).__name__}: {err}"))
    return kept, (np.concatenate(parts) if parts else None), failed


def _shard_names(i: int) -> tuple[str, str]:
    return f"emb-{i:05d}.npy", f"meta-{i:05d}.parquet"


def _read_progress(out: Path) -> dict | None:
    path = out / PROGRESS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def encode_to_shards(
    dataset: Iterable[dict],
    encode_batch: Callable[[list[dict]], np.ndarray],
    out_dir: str | os.PathLike,
    batch_size: int = 256,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    fingerprint: dict | None = None,
) -> EncodeReport:
    """Encode a canonical-schema catalogue into float32 `.npy` shards plus parquet metadata, resumably.

    `progress.json` is replaced atomically after each complete shard, so a killed run restarts at
    the first incomplete shard and gives the same embeddings as an uninterrupted one. `fingerprint`
    (e.g. model and dataset names) guards against resuming another model's work in the same folder.
    Rows whose image cannot be decoded or encoded are skipped, counted and reported.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _read_progress(out) or {
        "fingerprint": fingerprint,
        "dim": None,
        "rows_done": 0,
        "shards": [],
        "skipped": 0,
        "skipped_ids": [],
        "skip_reasons": [],
        "complete": False,
    }
    if fingerprint is not None and state["fingerprint"] not in (None, fingerprint):
        raise ValueError(
            f"{out} holds an encode of {state['fingerprint']}, not of {fingerprint}: "
            "use another output folder or delete this one"
        )
    resumed_from = state["rows_done"]
    if not state["complete"]:
        _encode_remaining(dataset, encode_batch, out, state, batch_size, shard_size, progress)
    return EncodeReport(
        out_dir=str(out),
        dim=state["dim"],
        encoded=sum(s["count"] for s in state["shards"]),
        skipped=state["skipped"],
        shards=len(state["shards"]),
        resumed_from_row=resumed_from,
        rows_seen=state["rows_done"],
        complete=state["complete"],
        skipped_ids=state["skipped_ids"],
        skip_reasons=state["skip_reasons"],
    )


def _encode_remaining(
    dataset, encode_batch, out: Path, state: dict, batch_size, shard_size, progress
) -> None:
    rows = _iter_rows(dataset, state["rows_done"], batch_size)
    bar = tqdm(
        total=_length(dataset),
        initial=state["rows_done"],
        desc="encoding catalogue",
        unit="product",
        disable=not progress,
    )
    encoded_this_run = 0
    with bar:
        while True:
            shard_meta, shard_emb, shard_failed, shard_rows = [], [], [], 0
            while shard_rows < shard_size:
                batch = list(islice(rows, min(batch_size, shard_size - shard_rows)))
                if not batch:
                    break
                kept, emb, failed = _encode_rows(batch, encode_batch)
                if emb is None and encoded_this_run == 0 and any(stage == "encode" for _, stage, _ in failed):
                    raise RuntimeError(  # every row failing in the encoder is a bug, not broken rows
                        f"the encoder failed on every row of the first batch: {failed[-1][2]}"
                    )
                if emb is not None:
                    if state["dim"] not in (None, emb.shape[1]):
                        raise ValueError(
                            f"encoder returned dim {emb.shape[1]}, earlier shards have {state['dim']}"
                        )
                    state["dim"] = emb.shape[1]
                    shard_emb.append(emb)
                    shard_meta.extend(_metadata_row(r) for r in kept)
                    encoded_this_run += len(kept)
                shard_failed.extend(failed)
                shard_rows += len(batch)
                bar.update(len(batch))
            if shard_rows:
                _write_shard(out, state, shard_emb, shard_meta, shard_failed, shard_rows)
            if shard_rows < shard_size:  # the dataset ended
                break
    state["complete"] = True
    _write_json(out / PROGRESS_FILE, state)


def _write_shard(out: Path, state: dict, embs: list, meta: list, failed: list, rows: int) -> None:
    emb_name, meta_name = _shard_names(len(state["shards"]))
    emb = np.concatenate(embs) if embs else np.zeros((0, state["dim"] or 0), np.float32)
    with open(out / f".{emb_name}.tmp", "wb") as f:
        np.save(f, emb)
    os.replace(out / f".{emb_name}.tmp", out / emb_name)
    _write_atomic(out / meta_name, lambda p: pq.write_table(pa.Table.from_pylist(meta, METADATA_SCHEMA), p))
    state["shards"].append({"embeddings": emb_name, "metadata": meta_name, "count": len(meta), "rows": rows})
    state["rows_done"] += rows
    state["skipped"] += len(failed)
    room = _FIRST_SKIPPED - len(state["skipped_ids"])
    state["skipped_ids"] += [pid for pid, _, _ in failed[:room]]
    state["skip_reasons"] += [reason for _, _, reason in failed[:room]]
    _write_json(out / PROGRESS_FILE, state)


def load_shards(out_dir: str | os.PathLike) -> tuple[np.ndarray, pa.Table]:
    """Concatenate a finished encode's shards -> (embeddings `[N, d]` float32, metadata table)."""
    out = Path(out_dir)
    state = _read_progress(out)
    if state is None:
        raise FileNotFoundError(f"{out} has no {PROGRESS_FILE}: not an encode folder")
    if not state["complete"]:
        raise ValueError(
            f"the encode in {out} is incomplete ({state['rows_done']} rows done): resume it first"
        )
    embs = [e for e in (np.load(out / s["embeddings"]) for s in state["shards"]) if len(e)]
    emb = np.concatenate(embs) if embs else np.zeros((0, state["dim"] or 0), np.float32)
    tables = [pq.read_table(out / s["metadata"]) for s in state["shards"]]
    return emb, pa.concat_tables(tables) if tables else METADATA_SCHEMA.empty_table()


# ----------------------------------------------------------------------------------------------
# FAISS index: kind by size and memory budget
# ----------------------------------------------------------------------------------------------

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 128
# IVF-PQ fetches k * this candidates and re-scores them exactly: on the 1M synthetic benchmark
# (docs/BENCHMARKS.md) 10 gave recall@10 0.73 and 30 gave 0.95, at 20% fewer queries/s
IVFPQ_RERANK = 30


def _ivfpq_params(n: int, dim: int, memory_budget_mb: float | None = None) -> dict:
    """nlist ~ 2 sqrt(n) (>= 39 training points per list); PQ bytes ~ dim / 8, halved until in budget.

    2 sqrt(n) rather than FAISS's usual 4 sqrt(n) halves k-means training. Sub-vectors keep >= 8
    dimensions: FAISS trains 4-dimensional sub-quantizers ~20x slower (no BLAS path).
    """
    nlist = max(1, min(int(2 * math.sqrt(n)), n // 39))
    nbits = 8 if n >= 39 * 256 else max(4, min(8, int(math.log2(max(n // 39, 16)))))
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    m = max(d for d in divisors if d <= max(1, min(64, dim // 8)))
    while memory_budget_mb is not None and m > 1:
        if (
            _estimate_bytes("ivfpq", n, dim, {"nlist": nlist, "m": m, "nbits": nbits})
            <= memory_budget_mb * 2**20
        ):
            break
        m = max(d for d in divisors if d < m)
    nprobe = min(nlist, max(8, nlist // 32))
    return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe, "rerank": IVFPQ_RERANK}


def _estimate_bytes(kind: str, n: int, dim: int, params: dict | None = None) -> int:
    """Resident size of an index: vectors, plus graph links (HNSW) or codes, ids and centroids (IVF-PQ)."""
    if kind == "flat":
        return n * dim * 4
    if kind == "hnsw":
        m = (params or {}).get("M", HNSW_M)
        return n * (dim * 4 + int(2 * m * 4 * 1.1) + 8)
    if kind == "ivfpq":
        p = params or _ivfpq_params(n, dim)
        code = math.ceil(p["m"] * p["nbits"] / 8)
        return n * (code + 8) + p["nlist"] * dim * 4 + p["m"] * (2 ** p["nbits"]) * (dim // p["m"]) * 4
    raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")


def choose_index_kind(
    n: int, dim: int, exact_threshold: int = DEFAULT_EXACT_THRESHOLD, memory_budget_mb: float | None = None
) -> str:
    """Exact below the threshold when it fits the budget; else HNSW if it fits; else IVF-PQ."""

    def fits(kind: str) -> bool:
        return memory_budget_mb is None or _estimate_bytes(kind, n, dim) <= memory_budget_mb * 2**20

    if n <= exact_threshold and fits("flat"):
        return "flat"
    if fits("hnsw"):
        return "hnsw"
    return "ivfpq"


def _add_in_chunks(index: faiss.Index, x: np.ndarray, progress: bool, chunk: int = 100_000) -> None:
    starts = range(0, len(x), chunk)
    for start in tqdm(starts, desc="adding to index", unit="chunk", disable=not progress or len(starts) < 2):
        index.add(x[start : start + chunk])


def build_index(
    embeddings: np.ndarray,
    kind: str = "auto",
    exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
    memory_budget_mb: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[faiss.Index, str, dict]:
    """An inner-product FAISS index over `embeddings` -> (index, kind, search parameters)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"need a non-empty [N, d] embedding matrix, got shape {x.shape}")
    n, dim = x.shape
    if kind == "auto":
        kind = choose_index_kind(n, dim, exact_threshold, memory_budget_mb)
    if (
        memory_budget_mb is not None
        and kind != "ivfpq"
        and _estimate_bytes(kind, n, dim) > memory_budget_mb * 2**20
    ):
        logger.warning("a %s index of %d x %d exceeds the %s MB budget", kind, n, dim, memory_budget_mb)
    if kind == "flat":
        index, params = faiss.IndexFlatIP(dim), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    else:
        params = _ivfpq_params(n, dim, memory_budget_mb)
        spec = f"IVF{params['nlist']},PQ{params['m']}x{params['nbits']}"
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # only serves Hamming pre-filtering, which is unused; slow
        rng = np.random.default_rng(seed)
        train_n = min(n, max(39 * params["nlist"], 39 * 2 ** params["nbits"], 50_000))
        sample = x[np.sort(rng.choice(n, train_n, replace=False))] if train_n < n else x
        index.train(sample)
    _add_in_chunks(index, x, progress)
    _apply_search_params(index, kind, params)
    return index, kind, params


def _apply_search_params(index: faiss.Index, kind: str, params: dict) -> None:
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = params["efSearch"]
    elif kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]


def _search_params(kind: str, params: dict, k: int, selector: faiss.IDSelector | None = None):
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(params["efSearch"], k), sel=selector)
    if kind == "ivfpq":
        return faiss.SearchParametersIVF(nprobe=params["nprobe"], sel=selector)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k that the approximate top-k finds."""
    hits = [
        len(set(a[:k]) & set(e[:k]) - {-1}) / min(k, (e[:k] >= 0).sum())
        for a, e in zip(approx_ids, exact_ids)
    ]
    return float(np.mean(hits))


def rerank_exact(
    embeddings: np.ndarray, q: np.ndarray, candidates: np.ndarray, k: int, max_floats: int = 2**25
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate ids (-1 = none) with the exact embeddings and keep the best k per query.

    Gathers `embeddings[candidates]` in query batches of at most `max_floats` values, so a
    memory-mapped embeddings file is read only where the candidates are.
    """
    scores = np.full((len(q), k), -np.inf, np.float32)
    ids = np.full((len(q), k), -1, np.int64)
    step = max(1, max_floats // max(1, candidates.shape[1] * q.shape[1]))
    for start in range(0, len(q), step):
        cand = candidates[start : start + step]
        vectors = np.asarray(embeddings[np.maximum(cand, 0).ravel()], np.float32).reshape(*cand.shape, -1)
        s = np.einsum("qcd,qd->qc", vectors, q[start : start + step])
        s[cand < 0] = -np.inf
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        scores[start : start + step] = np.take_along_axis(s, top, axis=1)
        ids[start : start + step] = np.where(
            np.isinf(scores[start : start + step]), -1, np.take_along_axis(cand, top, 1)
        )
    return scores, ids


def approximate_search(
    index: faiss.Index,
    kind: str,
    params: dict,
    embeddings: np.ndarray | None,
    q: np.ndarray,
    k: int,
    selector: faiss.IDSelector | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search `index` with its parameters; IVF-PQ re-ranks `rerank * k` candidates exactly.

    Rows may hold -1 where an approximate index found fewer than k products.
    """
    factor = params.get("rerank", 0) if embeddings is not None else 0
    if kind != "ivfpq" or factor <= 1:
        return index.search(q, k, params=_search_params(kind, params, k, selector))
    fetch = min(index.ntotal, k * factor)
    _, candidates = index.search(q, fetch, params=_search_params(kind, params, fetch, selector))
    return rerank_exact(embeddings, q, candidates, k)


def measure_recall(
    index: faiss.Index,
    kind: str,
    params: dict,
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
) -> float:
    """recall@k of `index` searched as CatalogueIndex searches it, against exact inner-product search."""
    k = min(k, len(embeddings))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, exact = faiss.knn(
        q, np.ascontiguousarray(embeddings, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT
    )
    _, approx = approximate_search(index, kind, params, embeddings, q, k)
    return recall_at_k(approx, exact, k)


# ----------------------------------------------------------------------------------------------
# The catalogue index: FAISS index + embeddings + metadata + manifest
# ----------------------------------------------------------------------------------------------


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


def normalise_attribute(text: str) -> str:
    """'Colour : Red ' -> 'colour: red': the form filters and stored attributes are compared in."""
    key, sep, value = text.partition(":")
    if not sep or not key.strip():
        raise ValueError(f"attribute filter {text!r} is not of the form 'key: value'")
    return f"{key.strip().lower()}: {value.strip().lower()}"


def _as_metadata_table(metadata: pa.Table | Sequence[dict]) -> pa.Table:
    if isinstance(metadata, pa.Table):
        missing = [c for c in METADATA_SCHEMA.names if c not in metadata.column_names]
        if missing:
            raise ValueError(f"metadata lacks column(s) {missing}; expected {METADATA_SCHEMA.names}")
        return metadata.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)
    return pa.Table.from_pylist([_metadata_row(r) for r in metadata], METADATA_SCHEMA)


class CatalogueIndex:
    """A searchable catalogue: FAISS index, the exact embeddings, product metadata and a manifest.

    Folder layout: `index.faiss`, `embeddings.npy` (float32 `[N, d]`, memory-mapped on load),
    `metadata.parquet` (product_id, title, category, attributes) and `manifest.json` (written last,
    so a folder with a manifest is complete).
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
        self._attribute_rows: tuple[pa.Array, np.ndarray] | None = None

    @property
    def dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def kind(self) -> str:
        return self.manifest["index"]["kind"]

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def model_name(self) -> str:
        return (self.manifest.get("model") or {}).get("name_or_path") or "an unrecorded model"

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
    ) -> CatalogueIndex:
        """Build the index; approximate kinds get recall@10 against exact search measured and recorded.

        Recall queries are `recall_queries` sampled product embeddings plus up to as many
        `text_queries` (category-text embeddings), reported apart because text queries sit in
        another region of the space than the products an index was trained on.
        """
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        table = _as_metadata_table(metadata)
        index, kind, params = build_index(emb, kind, exact_threshold, memory_budget_mb, seed, progress)
        recall: dict[str, Any] = {"exact": kind == "flat"}
        if kind != "flat":
            rng = np.random.default_rng(seed)
            sample = emb[rng.choice(len(emb), min(recall_queries, len(emb)), replace=False)]
            recall["product_queries"] = len(sample)
            recall["recall_at_10_products"] = measure_recall(index, kind, params, emb, sample)
            all_q = [sample]
            if text_queries is not None and len(text_queries):
                tq = np.asarray(text_queries, dtype=np.float32)
                tq = tq[rng.choice(len(tq), min(recall_queries, len(tq)), replace=False)]
                recall["text_queries"] = len(tq)
                recall["recall_at_10_text"] = measure_recall(index, kind, params, emb, tq)
                all_q.append(tq)
            recall["recall_at_10"] = measure_recall(index, kind, params, emb, np.concatenate(all_q))
            if params.get("rerank"):  # what the quantised codes alone would give
                raw = {**params, "rerank": 0}
                recall["recall_at_10_without_rerank"] = measure_recall(
                    index, kind, raw, emb, np.concatenate(all_q)
                )
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
                "estimated_bytes": _estimate_bytes(kind, len(emb), emb.shape[1], params or None),
            },
            "recall": recall,
            **(extra_manifest or {}),
        }
        return cls(index, emb, table, manifest)

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / "index.faiss", lambda p: faiss.write_index(self.index, str(p)))
        with open(out / ".embeddings.npy.tmp", "wb") as f:
            np.save(f, np.asarray(self.embeddings, dtype=np.float32))
        os.replace(out / ".embeddings.npy.tmp", out / "embeddings.npy")
        _write_atomic(out / "metadata.parquet", lambda p: pq.write_table(self.metadata, p))
        _write_json(out / MANIFEST_FILE, self.manifest)
        self.path = str(out)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CatalogueIndex:
        path = Path(directory)
        if not (path / MANIFEST_FILE).exists():
            raise FileNotFoundError(f"{path} is not an index folder: it has no {MANIFEST_FILE}")
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        index = faiss.read_index(str(path / "index.faiss"))
        _apply_search_params(index, manifest["index"]["kind"], manifest["index"]["params"])
        embeddings = np.load(path / "embeddings.npy", mmap_mode="r")
        return cls(index, embeddings, pq.read_table(path / "metadata.parquet"), manifest, str(path))

    def check_dim(self, dim: int, model_name: str = "the query model") -> None:
        """An index built by a model of another dimension is unusable: say which two models disagree."""
        if dim != self.dim:
            where = f" at {self.path}" if self.path else ""
            raise ValueError(
                f"dimension mismatch: {model_name} gives {dim}-d embeddings but the index{where} holds "
                f"{self.dim}-d embeddings built by {self.model_name}; rebuild the index with this model"
            )

    def rows_matching(self, filters: Sequence[str]) -> np.ndarray:
        """Sorted row numbers of the products that carry every `key: value` attribute (case-insensitive)."""
        wanted = [normalise_attribute(f) for f in filters]
        if self._attribute_rows is None:
            attrs = self.metadata.column("attributes").combine_chunks()
            flat = pc.utf8_lower(pc.utf8_trim_whitespace(pc.list_flatten(attrs)))
            flat = pc.replace_substring_regex(flat, r"\s*:\s*", ": ", max_replacements=1)
            self._attribute_rows = (flat, pc.list_parent_indices(attrs).to_numpy())
        values, parents = self._attribute_rows
        rows = np.arange(len(self))
        for attribute in wanted:
            match = pc.equal(values, attribute).to_numpy(zero_copy_only=False)
            rows = np.intersect1d(rows, parents[match])
        return rows

    def search(
        self, query_embeds: np.ndarray, k: int = 10, filters: Sequence[str] | None = None
    ) -> list[list[Hit]]:
        """Top-k products per query row; k above the catalogue (or the filtered set) returns all of it."""
        q = np.asarray(query_embeds, dtype=np.float32)
        q = np.ascontiguousarray(q[None, :] if q.ndim == 1 else q)
        if q.ndim != 2:
            raise ValueError(f"query embeddings must be [Q, d], got shape {q.shape}")
        self.check_dim(q.shape[1])
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if filters:
            allowed = self.rows_matching(filters)
            scores, ids = self._search_subset(q, k, allowed)
        else:
            scores, ids = self._search_all(q, min(k, len(self)))
        return [self._hits(s, i) for s, i in zip(scores, ids)]

    def _exact(self, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        emb = self.embeddings if rows is None else self.embeddings[rows]
        scores, ids = faiss.knn(
            q, np.ascontiguousarray(emb, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT
        )
        return scores, (ids if rows is None else rows[ids])

    def _search_all(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind != "flat" and k * 10 >= len(self):  # a large share of the catalogue: exact is cheaper
            return self._exact(q, k)
        params = self.manifest["index"]["params"]
        scores, ids = approximate_search(self.index, self.kind, params, self.embeddings, q, k)
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
        scores, ids = approximate_search(self.index, self.kind, params, self.embeddings, q, k, selector)
        short = (ids < 0).any(axis=1)
        if short.any():
            scores[short], ids[short] = self._exact(q[short], k, allowed)
        return scores, ids

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        keep = ids >= 0
        rows = self.metadata.take(pa.array(ids[keep])).to_pylist()
        return [Hit(score=float(s), **row) for s, row in zip(scores[keep], rows)]


def model_dim(model: Any) -> int | None:
    """The embedding size a model declares (`config.projection_dim`), if it declares one."""
    return getattr(getattr(model, "config", None), "projection_dim", None)


def check_queries(categories: str | Sequence[str]) -> list[str]:
    """Query text(s) as a list; empty text is an error, not a search for everything."""
    texts = [categories] if isinstance(categories, str) else list(categories)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError(f"empty query: every query must be non-empty category text, got {texts!r}")
    return texts


def search(
    categories: str | Sequence[str],
    k: int = 10,
    *,
    model: Any,
    index: CatalogueIndex | str | os.PathLike,
    processor: Any = None,
    filters: Sequence[str] | None = None,
) -> list[list[Hit]]:
    """Category text(s) -> ranked products per text, via `model.encode_categories` and the index."""
    texts = check_queries(categories)
    if not isinstance(index, CatalogueIndex):
        index = CatalogueIndex.load(index)
    name = getattr(model, "name_or_path", None) or type(model).__name__
    if (dim := model_dim(model)) is not None:
        index.check_dim(dim, f"model {name}")
    kwargs = {"processor": processor} if processor is not None else {}
    query = model.encode_categories(texts, convert_to_numpy=True, **kwargs)
    index.check_dim(np.asarray(query).shape[-1], f"model {name}")
    return index.search(query, k, filters)
