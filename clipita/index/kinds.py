"""FAISS index kinds: which kind a catalogue's size and memory budget call for, building it, its search
parameters, exact re-ranking and recall against exact search.

Embeddings are expected L2-normalised, so inner product is cosine similarity. They may be a memory-mapped
`.npy` larger than memory: the build reads it in chunks with plain file reads (page cache, not the
process's memory), exact search runs chunk by chunk, and re-ranking reads only the candidates' rows.
`ivfpq_disk` keeps the IVF-PQ lists in a file beside the index (FAISS's `OnDiskInvertedLists`),
memory-mapped when loaded, so neither building nor serving holds the codes in memory.

IVF-PQ searches in up to three stages: the PQ codes rank `refine_candidates * k` products; an 8-bit
scalar-quantised copy of every vector (`SQ8Codes`, d bytes a product, memory-mapped from a file beside the
index) re-scores them; the best `rerank * k` of those are read from the exact embeddings and ordered by
their exact scores. Without the SQ8 copy (an older index, or a memory budget too small for it) the PQ
candidates, `rerank_without_refine * k` of them, go straight to the exact re-rank.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from clipita.fileio import write_atomic
from clipita.progress import progress_bar

logger = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "hnsw", "ivfpq", "ivfpq_disk")
IVF_KINDS = ("ivfpq", "ivfpq_disk")
IVF_DATA_FILE = "index.ivfdata"  # the on-disk lists, beside index.faiss
REFINE_CODES_FILE = "refine_sq8.npy"  # the SQ8 copy of every vector, uint8 [N, d], beside index.faiss
REFINE_RANGE_FILE = "refine_sq8_range.npy"  # its per-dimension minimum and range, float32 [2, d]
CHUNK_ROWS = 100_000  # rows read, added or searched at a time
EXACT_BLOCK_SCORES = 2**23  # exact search holds this many scores (and their int64 positions) at a time
DEFAULT_EXACT_THRESHOLD = 200_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 128
# IVF-PQ without the SQ8 stage fetches k * this candidates and re-scores them exactly (recall and speed per
# factor: docs/BENCHMARKS.md)
IVFPQ_RERANK = 30
# with the SQ8 stage: the PQ codes fetch k * REFINE_CANDIDATES, the SQ8 copy keeps k * REFINE_RERANK of them,
# and those are re-scored exactly
REFINE_CANDIDATES = 100
REFINE_RERANK = 4
# above this many products the IVF centroids are searched through an HNSW graph: a flat scan of thousands of
# centroids for each of millions of added vectors would dominate the build
HNSW_QUANTIZER_ABOVE = 2_000_000


def _ivfpq_params(
    n: int, dim: int, memory_budget_mb: float | None = None, kind: str = "ivfpq", refine: bool = True
) -> dict:
    """nlist ~ 2 sqrt(n) (>= 39 training points per list); PQ bytes ~ dim / 4 (at most 64), halved until
    in budget (`ivfpq`: its codes are in memory); then the SQ8 stage (`refine`) if it fits the budget too.

    2 sqrt(n) rather than FAISS's usual 4 sqrt(n) halves k-means training. 4-dimensional sub-vectors
    rather than 8: at 10M products 16-byte codes lost a third of the true top 10 (recall and training
    time per code size: docs/BENCHMARKS.md, "An index larger than memory").
    """
    nlist = max(1, min(int(2 * math.sqrt(n)), n // 39))
    nbits = 8 if n >= 39 * 256 else max(4, min(8, int(math.log2(max(n // 39, 16)))))
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    m = max(d for d in divisors if d <= max(1, min(64, dim // 4)))
    while memory_budget_mb is not None and kind == "ivfpq" and m > 1:
        if (
            estimate_bytes("ivfpq", n, dim, {"nlist": nlist, "m": m, "nbits": nbits})
            <= memory_budget_mb * 2**20
        ):
            break
        m = max(d for d in divisors if d < m)
    nprobe = min(nlist, max(8, nlist // 32))
    params = {"nlist": nlist, "m": m, "nbits": nbits, "rerank": IVFPQ_RERANK}
    if n > HNSW_QUANTIZER_ABOVE:  # finding a vector's nearest of thousands of centroids by graph, not scan
        params["quantizer_efSearch"] = 0
    set_ivf_nprobe(params, nprobe)
    with_refine = {
        **params,
        "refine": "sq8",
        "refine_candidates": REFINE_CANDIDATES,
        "rerank": REFINE_RERANK,
        "rerank_without_refine": IVFPQ_RERANK,
    }
    if refine and (
        memory_budget_mb is None or estimate_bytes(kind, n, dim, with_refine) <= memory_budget_mb * 2**20
    ):
        return with_refine
    return params


def set_ivf_nprobe(params: dict, nprobe: int) -> None:
    """IVF-PQ parameters probing `nprobe` lists, in place; an HNSW centroid graph searches 2 x nprobe."""
    params["nprobe"] = int(nprobe)
    if "quantizer_efSearch" in params:
        params["quantizer_efSearch"] = 2 * int(nprobe)


def estimate_bytes(kind: str, n: int, dim: int, params: dict | None = None) -> int:
    """Resident size of an index: vectors, plus graph links (HNSW) or codes, ids and centroids (IVF-PQ);
    on disk (ivfpq_disk) only the centroids stay in memory, the lists are paged in as probed. The SQ8 copy
    (d bytes a product) is counted whole: serving touches all of it in time."""
    if kind == "flat":
        return n * dim * 4
    if kind == "hnsw":
        m = (params or {}).get("M", HNSW_M)
        return n * (dim * 4 + int(2 * m * 4 * 1.1) + 8)
    if kind in IVF_KINDS:
        p = params or _ivfpq_params(n, dim)
        code = math.ceil(p["m"] * p["nbits"] / 8)
        centroids = p["nlist"] * dim * 4 + p["m"] * (2 ** p["nbits"]) * (dim // p["m"]) * 4
        refine = n * dim if p.get("refine") == "sq8" else 0
        return centroids + refine + (0 if kind == "ivfpq_disk" else n * (code + 8))
    raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")


def choose_index_kind(
    n: int, dim: int, exact_threshold: int = DEFAULT_EXACT_THRESHOLD, memory_budget_mb: float | None = None
) -> str:
    """Exact below the threshold when it fits the budget; else HNSW if it fits; else IVF-PQ in memory if its
    codes fit; else IVF-PQ with its lists on disk."""

    def fits(kind: str) -> bool:  # IVF-PQ's SQ8 stage is left out when it does not fit: not counted here
        params = _ivfpq_params(n, dim, refine=False) if kind in IVF_KINDS else None
        return memory_budget_mb is None or estimate_bytes(kind, n, dim, params) <= memory_budget_mb * 2**20

    if n <= exact_threshold and fits("flat"):
        return "flat"
    if fits("hnsw"):
        return "hnsw"
    return "ivfpq" if fits("ivfpq") else "ivfpq_disk"


def iter_chunks(x: np.ndarray, chunk: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows) chunk by chunk. A memory-mapped `.npy` (`np.load(mmap_mode="r")`) is read
    with plain file reads: its pages go through the page cache, never into this process's resident memory."""
    n, chunk = len(x), chunk or CHUNK_ROWS
    if isinstance(x, np.memmap) and x.filename and x.flags.c_contiguous:
        dim = x.shape[1]
        with open(x.filename, "rb") as f:
            for start in range(0, n, chunk):
                rows = min(chunk, n - start)
                f.seek(x.offset + start * dim * x.itemsize)
                yield (
                    start,
                    np.fromfile(f, x.dtype, rows * dim).reshape(rows, dim).astype(np.float32, copy=False),
                )
    else:
        for start in range(0, n, chunk):
            yield start, np.ascontiguousarray(x[start : start + chunk], dtype=np.float32)


def _add_in_chunks(index: faiss.Index, x: np.ndarray, progress: bool) -> None:
    chunks = iter_chunks(x)
    total = math.ceil(len(x) / CHUNK_ROWS)
    for _, rows in progress_bar(
        chunks, total=total, desc="adding to index", unit="chunk", disable=not progress or total < 2
    ):
        index.add(rows)


def exact_search(
    x: np.ndarray, q: np.ndarray, k: int, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k, chunk by chunk (a memory-mapped `x` is read, never held, whole)."""
    chunk = chunk or CHUNK_ROWS
    if len(x) <= chunk and not isinstance(x, np.memmap):
        return faiss.knn(q, np.ascontiguousarray(x, np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for start, rows in iter_chunks(x, chunk):
        kk = min(k, len(rows))
        block = max(1, EXACT_BLOCK_SCORES // len(rows))  # queries scored against the chunk at a time
        for qs in range(0, len(q), block):
            part = slice(qs, qs + block)
            scores = q[part] @ rows.T
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s[part], np.take_along_axis(scores, top, 1)], axis=1)
            cand_i = np.concatenate([best_i[part], top + start], axis=1)
            keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s[part] = np.take_along_axis(cand_s, keep, 1)
            best_i[part] = np.take_along_axis(cand_i, keep, 1)
    return best_s, best_i


def _train_sample(x: np.ndarray, params: dict, seed: int) -> np.ndarray:
    """The k-means sample: rows drawn by seed, gathered chunk by chunk from a memory-mapped file (faulting
    scattered rows of a map in would bring most of the file into this process's memory)."""
    n = len(x)
    rng = np.random.default_rng(seed)
    train_n = min(n, max(39 * params["nlist"], 39 * 2 ** params["nbits"], 50_000))
    if train_n >= n:
        return np.ascontiguousarray(x, np.float32) if not isinstance(x, np.memmap) else _read_all(x)
    rows = np.sort(rng.choice(n, train_n, replace=False))
    if not isinstance(x, np.memmap):
        return np.ascontiguousarray(x[rows], np.float32)
    parts = []
    for start, chunk in iter_chunks(x):
        lo, hi = np.searchsorted(rows, [start, start + len(chunk)])
        parts.append(chunk[rows[lo:hi] - start])
    return np.concatenate(parts)


def _read_all(x: np.ndarray) -> np.ndarray:
    return np.concatenate([chunk for _, chunk in iter_chunks(x)])


def open_embeddings(path: str | os.PathLike) -> np.ndarray:
    """A float32 `.npy` memory-mapped: `iter_chunks` and `gather_rows` read it without mapping it in."""
    return np.load(path, mmap_mode="r")


def gather_rows(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """`x[ids]` as float32. From a memory-mapped `.npy` each distinct row is read with `os.pread` (from the
    page cache once warm): touching scattered rows of the map would fault whole neighbourhoods of pages
    into this process's memory, up to the size of the file."""
    if not (isinstance(x, np.memmap) and x.filename and x.flags.c_contiguous):
        return np.asarray(x[ids], np.float32)
    unique, inverse = np.unique(ids, return_inverse=True)
    row_bytes = x.shape[1] * x.itemsize
    fd = os.open(x.filename, os.O_RDONLY)
    try:
        data = b"".join([os.pread(fd, row_bytes, x.offset + i * row_bytes) for i in unique.tolist()])
    finally:
        os.close(fd)
    rows = np.frombuffer(data, x.dtype).reshape(len(unique), x.shape[1]).astype(np.float32, copy=False)
    return rows[inverse.reshape(-1)]


@dataclass
class SQ8Codes:
    """An 8-bit scalar-quantised copy of the vectors (FAISS `ScalarQuantizer` QT_8bit: per dimension, the
    range seen in training cut into 255 steps), d bytes a product, to re-score candidates without reading
    the exact embeddings. `codes` is usually memory-mapped from `REFINE_CODES_FILE`."""

    codes: np.ndarray  # uint8 [N, d]
    vmin: np.ndarray  # float32 [d]
    vdiff: np.ndarray  # float32 [d]

    @staticmethod
    def quantizer(sample: np.ndarray) -> faiss.ScalarQuantizer:
        sq = faiss.ScalarQuantizer(sample.shape[1], faiss.ScalarQuantizer.QT_8bit)
        sq.train(np.ascontiguousarray(sample, np.float32))
        return sq

    @classmethod
    def build(cls, x: np.ndarray, sample: np.ndarray, directory: str | os.PathLike | None = None) -> SQ8Codes:
        """Train on `sample` and encode `x` chunk by chunk, into `directory/REFINE_CODES_FILE` (memory-mapped
        back) when a folder is given, else into memory."""
        sq = cls.quantizer(sample)
        n, dim = x.shape
        trained = faiss.vector_to_array(sq.trained).reshape(2, dim)
        if directory is None:
            codes = np.empty((n, dim), np.uint8)
            for start, rows in iter_chunks(x):
                codes[start : start + len(rows)] = sq.compute_codes(rows)
            return cls(codes, trained[0], trained[1])
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)

        def write_codes(tmp: Path) -> None:  # chunk by chunk: the codes never sit whole in memory
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "|u1", "fortran_order": False, "shape": (n, dim)}
                )
                for _, rows in iter_chunks(x):
                    f.write(sq.compute_codes(rows).tobytes())

        write_atomic(folder / REFINE_CODES_FILE, write_codes)
        _save_array(folder / REFINE_RANGE_FILE, trained)
        return cls.load(folder)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SQ8Codes:
        folder = Path(directory)
        trained = np.load(folder / REFINE_RANGE_FILE)
        return cls(np.load(folder / REFINE_CODES_FILE, mmap_mode="r"), trained[0], trained[1])

    def save(self, directory: str | os.PathLike) -> None:
        folder = Path(directory)
        filename = getattr(self.codes, "filename", None)
        target = folder / REFINE_CODES_FILE
        if not (filename and target.exists() and Path(filename).resolve() == target.resolve()):
            if filename:  # a memory-mapped copy: file to file, never through memory
                write_atomic(target, lambda tmp: shutil.copyfile(filename, tmp))
            else:
                _save_array(target, np.asarray(self.codes, np.uint8))
        _save_array(folder / REFINE_RANGE_FILE, np.stack([self.vmin, self.vdiff]).astype(np.float32))

    def scores(self, q: np.ndarray, candidates: np.ndarray, max_values: int = 2**23) -> np.ndarray:
        """Approximate inner products of each query row with its candidates (-1 = none: -inf), from the
        codes decoded as FAISS decodes them: x = vmin + (code + 0.5) / 255 * vdiff."""
        weights = q * (self.vdiff / 255.0)  # [Q, d]
        offset = q @ (self.vmin + 0.5 / 255.0 * self.vdiff)  # [Q]
        out = np.empty(candidates.shape, np.float32)
        step = max(1, max_values // max(1, candidates.shape[1] * q.shape[1]))
        for start in range(0, len(q), step):
            cand = candidates[start : start + step]
            codes = np.asarray(self.codes[np.maximum(cand, 0).ravel()]).reshape(*cand.shape, -1)
            part = np.matmul(codes.astype(np.float32), weights[start : start + step, :, None])[..., 0]
            out[start : start + step] = part + offset[start : start + step, None]
        out[candidates < 0] = -np.inf
        return out


def _save_array(path: Path, array: np.ndarray) -> None:
    """`np.save` through `write_atomic` (to a file object: np.save would add ".npy" to the hidden name)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    write_atomic(path, write)


def refine_then_rerank(
    refine: SQ8Codes, embeddings: np.ndarray, q: np.ndarray, candidates: np.ndarray, k: int, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidates from the SQ8 copy, keep the best `keep` per query and order those exactly."""
    approx = refine.scores(q, candidates)
    keep = max(k, min(keep, candidates.shape[1]))
    if keep < candidates.shape[1]:
        top = np.argpartition(-approx, keep - 1, axis=1)[:, :keep]
        candidates = np.where(
            np.isinf(np.take_along_axis(approx, top, 1)), -1, np.take_along_axis(candidates, top, 1)
        )
    return rerank_exact(embeddings, q, candidates, k)


def build_refine(
    x: np.ndarray, params: dict, seed: int = 0, directory: str | os.PathLike | None = None
) -> SQ8Codes | None:
    """The SQ8 copy an IVF-PQ index's parameters ask for (`refine: "sq8"`), else None."""
    if params.get("refine") != "sq8":
        return None
    return SQ8Codes.build(x, _train_sample(x, params, seed + 1), directory)


def _ondisk_ivfpq(trained: faiss.Index, x: np.ndarray, directory: Path, progress: bool) -> faiss.Index:
    """Add `x` chunk by chunk into block indexes, merge their lists into `directory/index.ivfdata`
    (FAISS's OnDiskInvertedLists) and return the index, its lists memory-mapped from that file."""
    directory.mkdir(parents=True, exist_ok=True)
    ivfdata = directory / IVF_DATA_FILE
    with tempfile.TemporaryDirectory(dir=directory, prefix=".blocks-") as tmp:
        blocks = []
        total = math.ceil(len(x) / CHUNK_ROWS)
        chunks = progress_bar(
            iter_chunks(x),
            total=total,
            desc="adding to on-disk lists",
            unit="chunk",
            disable=not progress or total < 2,
        )
        for start, rows in chunks:
            block = faiss.clone_index(trained)
            block.add_with_ids(rows, np.arange(start, start + len(rows), dtype=np.int64))
            blocks.append(os.path.join(tmp, f"block-{len(blocks):05d}.faiss"))
            faiss.write_index(block, blocks[-1])
            del block
        ivfdata.unlink(missing_ok=True)
        index = faiss.clone_index(trained)
        merge_ondisk(index, blocks, str(ivfdata))
    return index


def read_index(path: str | os.PathLike) -> faiss.Index:
    """faiss.read_index; an index with on-disk lists maps them from the file beside it (read-only)."""
    return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


def build_index(
    embeddings: np.ndarray,
    kind: str = "auto",
    exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
    memory_budget_mb: float | None = None,
    seed: int = 0,
    progress: bool = True,
    directory: str | os.PathLike | None = None,
) -> tuple[faiss.Index, str, dict]:
    """An inner-product FAISS index over `embeddings` -> (index, kind, search parameters).

    `ivfpq_disk` writes its lists to `directory/index.ivfdata` (the index folder: they stay there).
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    x = embeddings if isinstance(embeddings, np.memmap) else np.ascontiguousarray(embeddings, np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"need a non-empty [N, d] embedding matrix, got shape {x.shape}")
    n, dim = x.shape
    if kind == "auto":
        kind = choose_index_kind(n, dim, exact_threshold, memory_budget_mb)
    if (
        memory_budget_mb is not None
        and kind not in IVF_KINDS
        and estimate_bytes(kind, n, dim) > memory_budget_mb * 2**20
    ):
        logger.warning("a %s index of %d x %d exceeds the %s MB budget", kind, n, dim, memory_budget_mb)
    if kind == "flat":
        index, params = faiss.IndexFlatIP(dim), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    else:  # on disk, the lists need no memory: the budget does not shrink the codes
        params = _ivfpq_params(n, dim, memory_budget_mb, kind)
        quantizer = f"_HNSW{HNSW_M}" if "quantizer_efSearch" in params else ""
        spec = f"IVF{params['nlist']}{quantizer},PQ{params['m']}x{params['nbits']}"
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # only serves Hamming pre-filtering, which is unused; slow
        index.train(_train_sample(x, params, seed))
    if kind == "ivfpq_disk":
        if directory is None:
            raise ValueError("an ivfpq_disk index needs the folder its lists will live in (directory=...)")
        index = _ondisk_ivfpq(index, x, Path(directory), progress)
    else:
        _add_in_chunks(index, x, progress)
    apply_search_params(index, kind, params)
    return index, kind, params


def apply_search_params(index: faiss.Index, kind: str, params: dict) -> None:
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = params["efSearch"]
    elif kind in IVF_KINDS:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = params["nprobe"]
        if "quantizer_efSearch" in params:
            faiss.downcast_index(ivf.quantizer).hnsw.efSearch = params["quantizer_efSearch"]


def search_params(kind: str, params: dict, k: int, selector: faiss.IDSelector | None = None):
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(params["efSearch"], k), sel=selector)
    if kind in IVF_KINDS:
        ivf = faiss.SearchParametersIVF(nprobe=params["nprobe"], sel=selector)
        if "quantizer_efSearch" in params:
            ivf.quantizer_params = faiss.SearchParametersHNSW(efSearch=params["quantizer_efSearch"])
        return ivf
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
    memory-mapped embeddings file is read only where the candidates are (`gather_rows`).
    """
    scores = np.full((len(q), k), -np.inf, np.float32)
    ids = np.full((len(q), k), -1, np.int64)
    step = max(1, max_floats // max(1, candidates.shape[1] * q.shape[1]))
    for start in range(0, len(q), step):
        cand = candidates[start : start + step]
        vectors = gather_rows(embeddings, np.maximum(cand, 0).ravel()).reshape(*cand.shape, -1)
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
    refine: SQ8Codes | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search `index` with its parameters. IVF-PQ with its SQ8 copy (`refine`, when the parameters ask for
    it) fetches `refine_candidates * k` candidates, re-scores them from the copy and re-ranks the best
    `rerank * k` exactly; without the copy it re-ranks `rerank_without_refine * k` (older indexes:
    `rerank * k`) candidates exactly.

    Rows may hold -1 where an approximate index found fewer than k products.
    """
    staged = refine is not None and embeddings is not None and params.get("refine") == "sq8"
    if staged:
        factor = params["refine_candidates"]
    elif embeddings is not None:
        factor = params.get("rerank_without_refine", params.get("rerank", 0))
    else:
        factor = 0
    if kind not in IVF_KINDS or factor <= 1:
        return index.search(q, k, params=search_params(kind, params, k, selector))
    fetch = min(index.ntotal, k * factor)
    _, candidates = index.search(q, fetch, params=search_params(kind, params, fetch, selector))
    if staged:
        return refine_then_rerank(refine, embeddings, q, candidates, k, k * params["rerank"])
    return rerank_exact(embeddings, q, candidates, k)


def measure_recall(
    index: faiss.Index,
    kind: str,
    params: dict,
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    refine: SQ8Codes | None = None,
) -> float:
    """recall@k of `index` searched as CatalogueIndex searches it, against exact inner-product search."""
    k = min(k, len(embeddings))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, exact = exact_search(embeddings, q, k)
    _, approx = approximate_search(index, kind, params, embeddings, q, k, refine=refine)
    return recall_at_k(approx, exact, k)
