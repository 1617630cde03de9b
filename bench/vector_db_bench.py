"""Vector databases, briefly: Milvus Lite (pymilvus + milvus-lite) against Qdrant's local mode (qdrant-client),
on the same synthetic catalogue, each in its own process, beside FAISS exact search.

Each loads N 128-d products with a filterable category path (every node, "A > A3 > A3-7") and attributes,
then answers one query at a time (as a web server asks), unfiltered and filtered by a middle category node,
measured against exact search: load time, queries/s, recall@10, the database's size on disk.

    python bench/vector_db_bench.py --quick     # 5,000 products
    python bench/vector_db_bench.py             # 50,000 products
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

if __package__:  # imported: python -m bench.vector_db_bench, or the tests
    from bench.index_bench import CENTRES, machine, numpy_topk, synthetic
else:  # run as a script, python bench/vector_db_bench.py: its folder is on sys.path
    from index_bench import CENTRES, machine, numpy_topk, synthetic

BACKENDS = ("milvus", "qdrant")


def catalogue(n: int, dim: int) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
    x = synthetic(n, dim, seed=0)
    rng = np.random.default_rng(0)
    centre = rng.integers(CENTRES, size=n)
    paths = [[f"R{c % 10}", f"R{c % 10} > M{c % 100}", f"R{c % 10} > M{c % 100} > L{c}"] for c in centre]
    colours = ["red", "blue", "green", "black"]
    attributes = [[f"colour: {colours[i % 4]}", f"size: {i % 3}"] for i in range(n)]
    return x, paths, attributes


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run_backend(backend: str, n: int, dim: int, num_queries: int, folder: str) -> dict:
    x, paths, attributes = catalogue(n, dim)
    q = synthetic(num_queries, dim, seed=1)
    node = "R3 > M13"  # a middle node: a tenth of the catalogue's roots, a hundredth of its products
    inside = np.array([node in p for p in paths])
    exact = numpy_topk(x, q, 10)
    exact_filtered = np.flatnonzero(inside)[numpy_topk(x[inside], q, 10)]
    start = time.perf_counter()
    if backend == "milvus":
        from pymilvus import DataType, MilvusClient

        client = MilvusClient(str(Path(folder) / "milvus.db"))
        schema = client.create_schema(auto_id=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field(
            "category", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=16, max_length=512
        )
        schema.add_field(
            "attributes", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=64, max_length=512
        )
        index = client.prepare_index_params()
        index.add_index(
            "embedding", index_type="HNSW", metric_type="IP", params={"M": 32, "efConstruction": 64}
        )
        client.create_collection("products", schema=schema, index_params=index)
        for s in range(0, n, 5000):
            rows = range(s, min(n, s + 5000))
            client.insert(
                "products",
                [
                    {"row": i, "embedding": x[i], "category": paths[i], "attributes": attributes[i]}
                    for i in rows
                ],
            )
        client.load_collection("products")

        def search_batch(vs, filtered):
            found = client.search(
                "products", list(vs), limit=10, anns_field="embedding",
                search_params={"metric_type": "IP", "params": {"ef": 128}},
                filter=f"array_contains(category, {json.dumps(node)})" if filtered else "",
            )  # fmt: skip
            return [[h["row"] for h in hits] for hits in found]
    else:
        from qdrant_client import QdrantClient, models

        client = QdrantClient(path=str(Path(folder) / "qdrant"))
        client.create_collection(
            "products", vectors_config=models.VectorParams(size=dim, distance=models.Distance.DOT)
        )
        for s in range(0, n, 5000):
            rows = range(s, min(n, s + 5000))
            client.upload_points("products", [
                models.PointStruct(id=i, vector=x[i].tolist(), payload={"category": paths[i], "attributes": attributes[i]})
                for i in rows
            ])  # fmt: skip
        condition = models.Filter(
            must=[models.FieldCondition(key="category", match=models.MatchValue(value=node))]
        )

        def search_batch(vs, filtered):
            requests = [
                models.QueryRequest(query=v.tolist(), limit=10, filter=condition if filtered else None)
                for v in vs
            ]
            return [[p.id for p in r.points] for r in client.query_batch_points("products", requests)]

    load_s = time.perf_counter() - start
    row = {"backend": backend, "n": n, "load_s": load_s, "disk_mb": folder_mb(Path(folder))}
    for filtered, truth in ((False, exact), (True, exact_filtered)):
        start = time.perf_counter()
        ids = [search_batch(q[i : i + 1], filtered)[0] for i in range(len(q))]
        row[f"qps_{filtered}"] = len(q) / (time.perf_counter() - start)
        row[f"recall_{filtered}"] = float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(ids, truth)]))
        start = time.perf_counter()
        search_batch(q, filtered)
        row[f"qps_batch_{filtered}"] = len(q) / (time.perf_counter() - start)
    row["client_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5,000 products, 100 queries")
    parser.add_argument("--num-products", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    args = parser.parse_args(argv)
    n, nq, dim = (5_000, 100, 128) if args.quick else (args.num_products, args.queries, 128)
    from importlib.metadata import version

    print(f"machine: {machine()}", flush=True)
    print(
        f"pymilvus {version('pymilvus')}, milvus-lite {version('milvus-lite')}, qdrant-client {version('qdrant-client')}"
    )
    rows = []
    for backend in args.backends:
        with (
            tempfile.TemporaryDirectory() as folder,
            ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool,
        ):
            rows.append(pool.submit(run_backend, backend, n, dim, nq, folder).result())
        print(f"  {backend}: {rows[-1]}", flush=True)
    print()
    print(f"{n:,} products, dim {dim}, {nq} queries")
    print()
    print(
        "| backend | products | load (s) | on disk (MB) | q/s, one at a time / batch | recall@10 "
        "| filtered by a category node: q/s, one at a time / batch | recall@10 | client peak RSS (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    names = {"milvus": "Milvus Lite (HNSW M 32, ef 128)", "qdrant": "Qdrant local mode"}
    for r in rows:
        print(
            f"| {names[r['backend']]} | {r['n']:,} | {r['load_s']:.1f} | {r['disk_mb']:.0f} "
            f"| {r['qps_False']:,.1f} / {r['qps_batch_False']:,.1f} | {r['recall_False']:.3f} "
            f"| {r['qps_True']:,.1f} / {r['qps_batch_True']:,.1f} | {r['recall_True']:.3f} | {r['client_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
