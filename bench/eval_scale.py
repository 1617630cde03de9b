"""How long and how much memory the evaluation protocol needs at catalogue scale (no model involved).

Random L2-normalised product embeddings over a synthetic 3-level category tree, random query embeddings,
exact FAISS search at depth max(10, R), every metric and the error analysis. Prints the figures and the machine.

    python bench/eval_scale.py            # 100k products x 128-d, ~1000 queries per setting
    python bench/eval_scale.py --quick    # 10k products, ~200 queries
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import tracemalloc
import zlib

import numpy as np

from clipita.evaluation import DenseRanker, evaluate_rankings, metric_module  # noqa: E402


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_paths(
    n: int, roots: int, children: int, leaves: int, rng: np.random.Generator
) -> list[list[str]]:
    ids = rng.integers(0, roots * children * leaves, size=n)
    return [[f"r{i // (children * leaves)}", f"c{i // leaves}", f"l{i}"] for i in ids]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k products, ~200 queries")
    parser.add_argument("--products", type=int, help="number of products (default 100k, quick 10k)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, help="max queries per setting (default 1000, quick 200)")
    args = parser.parse_args(argv)
    n = args.products or (10_000 if args.quick else 100_000)
    max_queries = args.queries or (200 if args.quick else 1000)
    rng = np.random.default_rng(0)

    print(f"machine: {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} CPUs")
    # 20 roots x 10 children x 10 leaves: 20 + 200 + 2000 nodes; a root holds ~n/20 products (its R).
    paths = synthetic_paths(n, roots=20, children=10, leaves=10, rng=rng)
    embeds = rng.standard_normal((n, args.dim), dtype=np.float32)
    embeds /= np.linalg.norm(embeds, axis=1, keepdims=True)

    def encode(texts: list[str]) -> np.ndarray:
        return np.stack(
            [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(args.dim) for t in texts]
        ).astype(np.float32)

    metric_module()  # imports `evaluate` (and with it torch): a fixed cost, kept out of the timings
    ranker = DenseRanker(embeds, encode)
    train = paths[: n // 2]
    print(f"products: {n} x {args.dim}-d, max {max_queries} queries per setting")
    print(f"peak rss after imports, data and FAISS index: {peak_rss_mib():.0f} MiB")

    def evaluate(setting: str) -> dict:
        kwargs = dict(settings=(setting,), query_text=" > ".join, max_queries_per_setting=max_queries)
        return evaluate_rankings(ranker, paths, train, **kwargs)[setting]

    total = time.perf_counter()
    for setting in ("all", "general", "specific"):
        start = time.perf_counter()
        result = evaluate(setting)
        print(
            f"{setting:>8}: {result['num_queries']['overall']:5d} queries in {time.perf_counter() - start:6.1f} s, "
            f"P@10 {result['overall']['P@10']:.4f} (random ranking), peak rss {peak_rss_mib():.0f} MiB"
        )
    print(f"total: {time.perf_counter() - total:.1f} s")
    # Second pass under tracemalloc (slower, so untimed): the most Python + numpy memory held at once.
    tracemalloc.start()
    for setting in ("all", "general", "specific"):
        tracemalloc.reset_peak()
        evaluate(setting)
        print(f"{setting:>8}: peak traced allocations {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MiB")
    tracemalloc.stop()


if __name__ == "__main__":
    main()
