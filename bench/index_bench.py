"""Index benchmark: build time, memory, queries/s and recall@10 of flat / HNSW / IVF-PQ vs numpy brute force.

Synthetic embeddings stand in for a catalogue at shop scale: L2-normalised points around 1,000
"category" centres, queried by perturbed centres (category-text-like queries, which sit apart from
the products). Each (size, method) runs in its own process so peak RSS is its own.

    python bench/index_bench.py --quick          # under a minute
    python bench/index_bench.py                  # 100k and 1M products, dim 128
    python bench/index_bench.py --dim 512 --sizes 100000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: spinning FAISS threads slow IVF-PQ training badly on a
# shared machine with few cores. Set before FAISS loads; spawned workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

CENTRES = 1_000
NOISE = 0.8
METHODS = ("numpy", "flat", "hnsw", "ivfpq")


def synthetic(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """Clustered, normalised float32 embeddings, generated in chunks to keep memory at the output size."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((CENTRES, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = centres[rng.integers(CENTRES, size=stop - start)]
        x += NOISE * rng.standard_normal(x.shape, dtype=np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int, batch: int = 64) -> np.ndarray:
    """Brute force: matmul + argpartition per query batch, then sort the k winners."""
    out = np.empty((len(q), k), np.int64)
    for start in range(0, len(q), batch):
        scores = q[start : start + batch] @ x.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[start : start + batch] = np.take_along_axis(part, order, axis=1)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed_qps(search, q: np.ndarray, single: int) -> tuple[np.ndarray, float, float]:
    """(ids of the batched search, queries/s batched, queries/s one at a time on one thread)."""
    import faiss

    start = time.perf_counter()
    ids = search(q)
    qps_batch = len(q) / (time.perf_counter() - start)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query per call is how a web server asks; OpenMP only adds overhead
    start = time.perf_counter()
    for i in range(single):
        search(q[i : i + 1])
    qps_single = single / (time.perf_counter() - start)
    faiss.omp_set_num_threads(threads)
    return ids, qps_batch, qps_single


def run_one(method: str, n: int, dim: int, num_queries: int, single: int, gt_path: str) -> list[dict]:
    """One method at one size, in a fresh process; returns its rows of the table."""
    import faiss

    from clipita.index import approximate_search, build_index, recall_at_k

    x = synthetic(n, dim, seed=0)
    q = synthetic(num_queries, dim, seed=1)
    base = {"n": n, "dim": dim, "data_rss_mb": peak_rss_mb()}
    if method == "numpy":
        ids, qps_batch, qps_single = timed_qps(lambda qs: numpy_topk(x, qs, 10), q, single)
        np.save(gt_path, ids)
        return [
            {
                **base,
                "method": method,
                "build_s": 0.0,
                "index_bytes": 0,
                "recall": 1.0,
                "qps_batch": qps_batch,
                "qps_single": qps_single,
                "peak_rss_mb": peak_rss_mb(),
            }
        ]
    start = time.perf_counter()
    index, kind, params = build_index(x, kind=method, progress=False)
    build_s = time.perf_counter() - start
    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        index_bytes = os.path.getsize(f.name)
    gt = np.load(gt_path)
    variants = {method: params}
    if method == "ivfpq":  # the codes alone, and k x rerank_without_refine PQ candidates re-ranked exactly
        # (the path without the SQ8 stage, which bench/large_index_bench.py measures)
        old = {key: v for key, v in params.items() if not key.startswith("refine")}
        old["rerank"] = old.pop("rerank_without_refine", old["rerank"])
        variants = {"ivfpq_codes": {**old, "rerank": 0}, "ivfpq": old}
    rows = []
    for name, p in variants.items():

        def search(qs, p=p):
            return approximate_search(index, kind, p, x, qs, 10)[1]

        ids, qps_batch, qps_single = timed_qps(search, q, single)
        rows.append(
            {
                **base,
                "method": name,
                "build_s": build_s,
                "index_bytes": index_bytes,
                "params": p,
                "recall": recall_at_k(ids, gt, 10),
                "qps_batch": qps_batch,
                "qps_single": qps_single,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", load average {:.1f} / {:.1f} / {:.1f} at start".format(*os.getloadavg())
    import faiss

    omp = os.environ.get("OMP_WAIT_POLICY")
    return (
        f"{platform.platform()}; CPU {cpu}, {os.cpu_count()} cores; {ram:.0f} GiB RAM{load}; "
        f"faiss {faiss.__version__}, numpy {np.__version__}, python {platform.python_version()}; OMP_WAIT_POLICY={omp}"
    )


def table(rows: list[dict]) -> str:
    lines = [
        "| products | dim | method | build (s) | index size (MB) | peak RSS (MB) | data alone (MB) "
        "| QPS, batch | QPS, one at a time (1 thread) | recall@10 vs exact |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "numpy": "numpy brute force",
        "flat": "FAISS IndexFlatIP",
        "hnsw": "FAISS HNSW",
        "ivfpq_codes": "FAISS IVF-PQ, codes only",
        "ivfpq": "FAISS IVF-PQ + exact re-rank",
    }
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['dim']} | {names[r['method']]} | {r['build_s']:.1f} | {r['index_bytes'] / 2**20:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {r['data_rss_mb']:.0f} | {r['qps_batch']:,.0f} | {r['qps_single']:,.0f} "
            f"| {r['recall']:.3f} |"
        )
    params = {r["method"]: r["params"] for r in rows if r.get("params") and r["method"] != "ivfpq_codes"}
    lines.append("")
    lines.append("Index parameters: " + "; ".join(f"{m}: {p}" for m, p in params.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20k products, 200 queries: under a minute")
    parser.add_argument("--sizes", type=int, nargs="+", help="catalogue sizes (default 100000 1000000)")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension (128 or 512)")
    parser.add_argument("--queries", type=int, default=1000, help="queries for QPS and recall")
    parser.add_argument(
        "--single", type=int, default=100, help="queries sent one at a time for latency-bound QPS"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    sizes = args.sizes or ([20_000] if args.quick else [100_000, 1_000_000])
    num_queries = 200 if args.quick else args.queries
    single = 20 if args.quick else args.single
    methods = ["numpy"] + [m for m in args.methods if m != "numpy"]  # numpy first: it makes the ground truth

    print(f"machine: {machine()}", flush=True)
    print(
        f"command: python bench/index_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}",
        flush=True,
    )
    rows = []
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            gt_path = str(Path(tmp) / f"gt-{n}.npy")
            for method in methods:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    new = pool.submit(run_one, method, n, args.dim, num_queries, single, gt_path).result()
                for row in new:
                    print(
                        f"  {row['method']:11s} n={n:>9,}: build {row['build_s']:.1f}s, {row['qps_batch']:,.0f} q/s, "
                        f"recall@10 {row['recall']:.3f}, peak RSS {row['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
                rows.extend(new)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
