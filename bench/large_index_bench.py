"""An index larger than memory: IVF-PQ with its lists in memory against lists on disk (FAISS
OnDiskInvertedLists, memory-mapped), both re-ranked exactly from a memory-mapped embeddings file.

The embeddings (index_bench's synthetic clustered points, generated chunk by chunk) are written to a
float32 `.npy` on disk and never held whole by any step; the exact top 10 comes from a chunked numpy scan
of that file. Every step runs in its own process, so each peak RSS (VmHWM: anonymous memory plus the
file pages a step touched through a memory map) is its own. Both index kinds share one trained quantizer
(training is timed once): they differ only in where the lists live.

    python bench/large_index_bench.py --quick                # 200,000 products
    python bench/large_index_bench.py --num-products 10000000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: the machine is shared

import numpy as np  # noqa: E402

if __package__:  # imported: python -m bench.large_index_bench, or the tests
    from bench.index_bench import CENTRES, NOISE, machine
else:  # run as a script: its folder is on sys.path
    from index_bench import CENTRES, NOISE, machine

CHUNK = 100_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_chunks(n: int, dim: int, seed: int):
    """index_bench.synthetic's points, chunk by chunk (the same values for the same chunk size)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((CENTRES, dim)).astype(np.float32)
    for start in range(0, n, CHUNK):
        x = centres[rng.integers(CENTRES, size=min(CHUNK, n - start))]
        x += NOISE * rng.standard_normal(x.shape, dtype=np.float32)
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def write_data(n: int, dim: int, folder: str, num_queries: int) -> dict:
    start = time.perf_counter()
    path = Path(folder) / "embeddings.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        for chunk in synthetic_chunks(n, dim, seed=0):
            f.write(chunk.tobytes())
    np.save(Path(folder) / "queries.npy", next(synthetic_chunks(num_queries, dim, seed=1)))
    return {"step": "write embeddings", "s": time.perf_counter() - start, "rss": peak_rss_mb(),
            "disk_mb": path.stat().st_size / 2**20}  # fmt: skip


def exact(folder: str) -> dict:
    from clipita.index.kinds import exact_search

    start = time.perf_counter()
    x = np.load(Path(folder) / "embeddings.npy", mmap_mode="r")
    _, ids = exact_search(x, np.load(Path(folder) / "queries.npy"), 10)
    np.save(Path(folder) / "exact.npy", ids)
    return {
        "step": "exact top 10 (chunked numpy scan)",
        "s": time.perf_counter() - start,
        "rss": peak_rss_mb(),
    }


def train(folder: str) -> dict:
    import faiss

    from clipita.index import kinds

    start = time.perf_counter()
    x = np.load(Path(folder) / "embeddings.npy", mmap_mode="r")
    params = kinds._ivfpq_params(len(x), x.shape[1])
    quantizer = f"_HNSW{kinds.HNSW_M}" if "quantizer_efSearch" in params else ""
    index = faiss.index_factory(x.shape[1], f"IVF{params['nlist']}{quantizer},PQ{params['m']}x{params['nbits']}",
                                faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    index.do_polysemous_training = False
    index.train(kinds._train_sample(x, params, seed=0))
    faiss.write_index(index, str(Path(folder) / "trained.faiss"))
    return {
        "step": "train IVF-PQ (shared)",
        "s": time.perf_counter() - start,
        "rss": peak_rss_mb(),
        "params": params,
    }


def build(kind: str, folder: str) -> dict:
    """Add every vector to the trained index, in memory or into on-disk lists, and write it."""
    import faiss

    from clipita.index import kinds

    out = Path(folder) / kind
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    x = np.load(Path(folder) / "embeddings.npy", mmap_mode="r")
    trained = faiss.read_index(str(Path(folder) / "trained.faiss"))
    if kind == "ivfpq_disk":
        index = kinds._ondisk_ivfpq(trained, x, out, progress=False)
    else:
        index = trained
        for _, rows in kinds.iter_chunks(x):
            index.add(rows)
    faiss.write_index(index, str(out / "index.faiss"))
    disk = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    return {
        "step": f"add + write, {kind}",
        "s": time.perf_counter() - start,
        "rss": peak_rss_mb(),
        "disk_mb": disk,
    }


def serve(
    kind: str, folder: str, single: int, settings: list[tuple[int, int]], io: str = "pread"
) -> list[dict]:
    """Load as CatalogueIndex loads, then search: batched, and one query per call on one thread. `io`: how
    re-ranking reads candidate rows: `pread` (the library's way) or through the memory map (`mmap`)."""
    import faiss

    from clipita.index import kinds

    out = Path(folder) / kind
    index = kinds.read_index(out / "index.faiss")
    x = kinds.open_embeddings(Path(folder) / "embeddings.npy")
    if io == "mmap":
        x = x.view(np.ndarray)  # the same map, gathered by fancy indexing
    q = np.load(Path(folder) / "queries.npy")
    truth = np.load(Path(folder) / "exact.npy")
    params = kinds._ivfpq_params(len(x), x.shape[1])
    kinds.apply_search_params(index, "ivfpq", params)
    rows = []
    for factor, rerank in settings:
        p = {**params, "nprobe": max(1, round(factor * params["nprobe"])), "rerank": rerank}
        if "quantizer_efSearch" in p:
            p["quantizer_efSearch"] = 2 * p["nprobe"]
        kinds.approximate_search(index, kind, p, x, q[:20], 10)  # warm: lists and centroids paged in
        start = time.perf_counter()
        _, ids = kinds.approximate_search(index, kind, p, x, q, 10)
        batch = len(q) / (time.perf_counter() - start)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        start = time.perf_counter()
        for i in range(single):
            kinds.approximate_search(index, kind, p, x, q[i : i + 1], 10)
        one = single / (time.perf_counter() - start)
        faiss.omp_set_num_threads(threads)
        rows.append({"kind": kind, "io": io, "nprobe": p["nprobe"], "rerank": rerank, "qps_batch": batch, "qps_single": one,
                     "recall": kinds.recall_at_k(ids, truth, 10), "rss": peak_rss_mb()})  # fmt: skip
    return rows


def in_process(fn, *args):
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200,000 products, 200 queries")
    parser.add_argument("--num-products", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--single", type=int, default=200, help="queries sent one per call")
    parser.add_argument(
        "--folder", default=None, help="where the data and indexes go (default: a temporary one)"
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["1:30", "0.5:30", "1:60"],
        help="search settings NPROBE_FACTOR:RERANK (nprobe as a multiple of the library's default)",
    )
    args = parser.parse_args(argv)
    n, nq, single = (200_000, 200, 50) if args.quick else (args.num_products, args.queries, args.single)
    single = min(single, nq)
    print(f"machine: {machine()}", flush=True)
    print(
        f"command: python bench/large_index_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    settings = [(float(f), int(r)) for f, r in (setting.split(":") for setting in args.settings)]
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        steps = [in_process(write_data, n, args.dim, folder, nq)]
        for fn, fn_args in ((exact, ()), (train, ()), (build, ("ivfpq",)), (build, ("ivfpq_disk",))):
            steps.append(in_process(fn, *fn_args, folder))
            print(f"  {steps[-1]}", flush=True)
        served = []
        runs = [
            ("ivfpq", "pread", settings),
            ("ivfpq_disk", "pread", settings),
            ("ivfpq_disk", "mmap", settings[:1]),
        ]
        for kind, io, these in runs:
            served += in_process(serve, kind, folder, single, these, io)
            print(f"  {served[-len(these) :]}", flush=True)
    print()
    print(f"{n:,} products, dim {args.dim}, {nq} queries (recall, batched q/s), {single} sent one per call")
    print()
    print("| step | time (s) | peak RSS (MB) | on disk (MB) |")
    print("|---|---:|---:|---:|")
    for s in steps:
        disk = f"{s['disk_mb']:,.0f}" if "disk_mb" in s else ""
        print(f"| {s['step']} | {s['s']:.1f} | {s['rss']:,.0f} | {disk} |")
    print()
    print(f"IVF-PQ parameters: {steps[2]['params']}")
    print()
    print(
        "| index | re-rank reads rows by | nprobe | re-ranked / k | QPS, batch | QPS, one at a time (1 thread) | recall@10 vs exact | peak RSS serving (MB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    names = {"ivfpq": "IVF-PQ, lists in memory", "ivfpq_disk": "IVF-PQ, lists on disk (mmap)"}
    for r in served:
        print(f"| {names[r['kind']]} | {r['io']} | {r['nprobe']} | {r['rerank']} | {r['qps_batch']:,.0f} | {r['qps_single']:,.0f} "
              f"| {r['recall']:.3f} | {r['rss']:,.0f} |")  # fmt: skip
    peak = max([s["rss"] for s in steps[2:]] + [r["rss"] for r in served if r["io"] == "pread"])
    print(f"\npeak RSS of building and serving (re-rank by pread): {peak:,.0f} MB")


if __name__ == "__main__":
    main()
