"""FAISS index kinds: which kind a catalogue's size and memory budget call for, building it, its search
parameters, exact re-ranking and recall against exact search.

Embeddings are expected L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from clipita.progress import progress_bar

logger = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "hnsw", "ivfpq")
DEFAULT_EXACT_THRESHOLD = 200_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 128
# IVF-PQ fetches k * this candidates and re-scores them exactly (recall and speed per factor: docs/BENCHMARKS.md)
IVFPQ_RERANK = 30


def _ivfpq_params(n: int, dim: int, memory_budget_mb: float | None = None) -> dict:
    """nlist ~ 2 sqrt(n) (>= 39 training points per list); PQ bytes ~ dim / 8, halved until in budget.

    2 sqrt(n) rather than FAISS's usual 4 sqrt(n) halves k-means training. Sub-vectors keep >= 8
    dimensions: FAISS trains 4-dimensional sub-quantizers far more slowly (no BLAS path).
    """
    nlist = max(1, min(int(2 * math.sqrt(n)), n // 39))
    nbits = 8 if n >= 39 * 256 else max(4, min(8, int(math.log2(max(n // 39, 16)))))
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    m = max(d for d in divisors if d <= max(1, min(64, dim // 8)))
    while memory_budget_mb is not None and m > 1:
        if (
            estimate_bytes("ivfpq", n, dim, {"nlist": nlist, "m": m, "nbits": nbits})
            <= memory_budget_mb * 2**20
        ):
            break
        m = max(d for d in divisors if d < m)
    nprobe = min(nlist, max(8, nlist // 32))
    return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe, "rerank": IVFPQ_RERANK}


def estimate_bytes(kind: str, n: int, dim: int, params: dict | None = None) -> int:
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
        return memory_budget_mb is None or estimate_bytes(kind, n, dim) <= memory_budget_mb * 2**20

    if n <= exact_threshold and fits("flat"):
        return "flat"
    if fits("hnsw"):
        return "hnsw"
    return "ivfpq"


def _add_in_chunks(index: faiss.Index, x: np.ndarray, progress: bool, chunk: int = 100_000) -> None:
    starts = range(0, len(x), chunk)
    for start in progress_bar(
        starts, desc="adding to index", unit="chunk", disable=not progress or len(starts) < 2
    ):
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
        and estimate_bytes(kind, n, dim) > memory_budget_mb * 2**20
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
    apply_search_params(index, kind, params)
    return index, kind, params


def apply_search_params(index: faiss.Index, kind: str, params: dict) -> None:
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = params["efSearch"]
    elif kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]


def search_params(kind: str, params: dict, k: int, selector: faiss.IDSelector | None = None):
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
        return index.search(q, k, params=search_params(kind, params, k, selector))
    fetch = min(index.ntotal, k * factor)
    _, candidates = index.search(q, fetch, params=search_params(kind, params, fetch, selector))
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
