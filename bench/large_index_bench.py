"""An index larger than memory: IVF-PQ with its lists in memory against lists on disk (FAISS
OnDiskInvertedLists, memory-mapped), both re-ranked exactly from a memory-mapped embeddings file: either
straight from the PQ candidates (NPROBE_FACTOR:RERANK settings) or through the SQ8 stage, the candidates
re-scored from the memory-mapped 8-bit copy and only the best few read exactly
(NPROBE_FACTOR:CANDIDATES:RERANK settings).

The embeddings (index_bench's synthetic clustered points, generated chunk by chunk) are written to a
float32 `.npy` on disk and never held whole by any step; the exact top 10 comes from a chunked numpy scan
of that file. Every step runs in its own process, so each peak RSS (VmHWM: anonymous memory plus the
file pages a step touched through a memory map) is its own. Both index kinds share one trained quantizer
(training is timed once), and one SQ8 copy: they differ only in where the lists live.

    python bench/large_index_bench.py --quick                # 200,000 products
    python bench/large_index_bench.py --num-products 10000000
    python bench/large_index_bench.py --num-products 10000000 --folder /tmp/runs --keep   # reuse files

`--keep` keeps the data and indexes in FOLDER/n{N}-d{DIM}-q{QUERIES} and skips the steps whose files an
earlier run left there (their recorded figures are printed, marked "earlier run").
"""

from __future__ import annotations

import argparse
import contextlib
import json
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


def ivfpq_params(n: int, dim: int, m: int | None) -> dict:
    """The library's IVF-PQ parameters, with `m` bytes of PQ code if given."""
    from clipita.index import kinds

    params = kinds._ivfpq_params(n, dim)
    return params if m is None else {**params, "m": m}


def train(folder: str, m: int | None = None) -> dict:
    import faiss

    from clipita.index import kinds

    start = time.perf_counter()
    x = np.load(Path(folder) / "embeddings.npy", mmap_mode="r")
    params = ivfpq_params(len(x), x.shape[1], m)
    quantizer = f"_HNSW{kinds.HNSW_M}" if "quantizer_efSearch" in params else ""
    index = faiss.index_factory(x.shape[1], f"IVF{params['nlist']}{quantizer},PQ{params['m']}x{params['nbits']}",
                                faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    index.do_polysemous_training = False
    index.train(kinds._train_sample(x, params, seed=0))
    faiss.write_index(index, str(Path(folder) / f"trained-m{params['m']}.faiss"))
    return {
        "step": f"train IVF-PQ, m {params['m']} (shared)",
        "s": time.perf_counter() - start,
        "rss": peak_rss_mb(),
        "params": params,
    }


def train_sq8(folder: str) -> dict:
    """The SQ8 copy both kinds share: trained on a sample, every vector encoded into `sq8/`."""
    from clipita.index import kinds

    start = time.perf_counter()
    x = np.load(Path(folder) / "embeddings.npy", mmap_mode="r")
    kinds.build_refine(x, kinds._ivfpq_params(len(x), x.shape[1]), seed=0, directory=Path(folder) / "sq8")
    disk = sum(f.stat().st_size for f in (Path(folder) / "sq8").iterdir()) / 2**20
    return {"step": "train + encode SQ8 copy (shared)", "s": time.perf_counter() - start, "rss": peak_rss_mb(),
            "disk_mb": disk}  # fmt: skip


def build(kind: str, folder: str, m: int) -> dict:
    """Add every vector to the trained index, in memory or into on-disk lists, and write it."""
    import faiss

    from clipita.index import kinds

    out = Path(folder) / f"{kind}-m{m}"
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    x = np.load(Path(folder) / "embeddings.npy", mmap_mode="r")
    trained = faiss.read_index(str(Path(folder) / f"trained-m{m}.faiss"))
    if kind == "ivfpq_disk":
        index = kinds._ondisk_ivfpq(trained, x, out, progress=False)
    else:
        index = trained
        for _, rows in kinds.iter_chunks(x):
            index.add(rows)
    faiss.write_index(index, str(out / "index.faiss"))
    disk = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    return {
        "step": f"add + write, {kind}, m {m}",
        "s": time.perf_counter() - start,
        "rss": peak_rss_mb(),
        "disk_mb": disk,
    }


def serve(
    kind: str,
    folder: str,
    single: int,
    settings: list[tuple[float, int, int]],
    io: str = "pread",
    m: int | None = None,
) -> list[dict]:
    """Load as CatalogueIndex loads, then search: batched, and one query per call on one thread. `io`: how
    re-ranking reads candidate rows: `pread` (the library's way) or through the memory map (`mmap`).
    A setting (nprobe factor, SQ8 candidates / k, exact re-rank / k): candidates 0 is no SQ8 stage (the
    copy is then not even opened, so the serving RSS is the old path's)."""
    import faiss

    from clipita.index import kinds

    x = kinds.open_embeddings(Path(folder) / "embeddings.npy")
    params = ivfpq_params(len(x), x.shape[1], m)
    index = kinds.read_index(Path(folder) / f"{kind}-m{params['m']}" / "index.faiss")
    if io == "mmap":
        x = x.view(np.ndarray)  # the same map, gathered by fancy indexing
    q = np.load(Path(folder) / "queries.npy")
    truth = np.load(Path(folder) / "exact.npy")
    kinds.apply_search_params(index, "ivfpq", params)
    staged = any(candidates for _, candidates, _ in settings)
    refine = kinds.SQ8Codes.load(Path(folder) / "sq8") if staged else None
    rows = []
    for factor, candidates, rerank in settings:
        p = {**params, "nprobe": max(1, round(factor * params["nprobe"]))}
        if candidates:
            p.update(refine="sq8", refine_candidates=candidates, rerank=rerank)
        else:
            p.update(rerank_without_refine=rerank, rerank=rerank)
            p.pop("refine", None)
        if "quantizer_efSearch" in p:
            p["quantizer_efSearch"] = 2 * p["nprobe"]

        def search(queries, p=p):
            return kinds.approximate_search(index, kind, p, x, queries, 10, refine=refine)

        search(q[:20])  # warm: lists and centroids paged in
        start = time.perf_counter()
        _, ids = search(q)
        batch = len(q) / (time.perf_counter() - start)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        start = time.perf_counter()
        for i in range(single):
            search(q[i : i + 1])
        one = single / (time.perf_counter() - start)
        faiss.omp_set_num_threads(threads)
        rows.append({"kind": kind, "io": io, "m": params["m"], "nprobe": p["nprobe"], "candidates": candidates,
                     "rerank": rerank, "qps_batch": batch, "qps_single": one,
                     "recall": kinds.recall_at_k(ids, truth, 10), "rss": peak_rss_mb()})  # fmt: skip
    return rows


def in_process(fn, *args):
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def kept_step(folder: str, name: str, outputs: list[str], fn, *args) -> dict:
    """Run a step, or, with --keep, take its record from an earlier run whose outputs are still there."""
    records = Path(folder) / "steps.json"
    done = json.loads(records.read_text()) if records.exists() else {}
    if name in done and all((Path(folder) / o).exists() for o in outputs):
        return {**done[name], "step": done[name]["step"] + " (earlier run)"}
    result = in_process(fn, *args)
    done[name] = result
    records.write_text(json.dumps(done))
    return result


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
    parser.add_argument("--keep", action="store_true", help="keep the files in FOLDER and reuse them")
    parser.add_argument(
        "--pq-m",
        type=int,
        nargs="+",
        default=[None],
        help="PQ code bytes to build and serve (default: the library's choice, dim / 4)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["1:30", "0.5:30", "1:60", "1:100:4", "0.5:100:4", "1:100:2", "1:200:4"],
        help="search settings NPROBE_FACTOR:RERANK (PQ candidates re-ranked exactly) or "
        "NPROBE_FACTOR:CANDIDATES:RERANK (CANDIDATES x k re-scored from the SQ8 copy, RERANK x k of them "
        "exactly); nprobe as a multiple of the library's default",
    )
    args = parser.parse_args(argv)
    n, nq, single = (200_000, 200, 50) if args.quick else (args.num_products, args.queries, args.single)
    single = min(single, nq)
    print(f"machine: {machine()}", flush=True)
    print(
        f"command: python bench/large_index_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    settings = []
    for setting in args.settings:
        parts = setting.split(":")
        factor, candidates, rerank = (parts[0], "0", parts[1]) if len(parts) == 2 else parts
        settings.append((float(factor), int(candidates), int(rerank)))
    if args.keep:
        if args.folder is None:
            parser.error("--keep needs --folder")
        folder_cm = contextlib.nullcontext(str(Path(args.folder) / f"n{n}-d{args.dim}-q{nq}"))
        Path(folder_cm.enter_result).mkdir(parents=True, exist_ok=True)
    else:
        folder_cm = tempfile.TemporaryDirectory(dir=args.folder)
    with folder_cm as folder:
        ms = [ivfpq_params(n, args.dim, m)["m"] for m in args.pq_m]

        def step(name, outputs, fn, *fn_args):
            steps.append(kept_step(folder, name, outputs, fn, *fn_args))
            print(f"  {steps[-1]}", flush=True)

        steps: list[dict] = []
        step("data", ["embeddings.npy", "queries.npy"], write_data, n, args.dim, folder, nq)
        step("exact", ["exact.npy"], exact, folder)
        for m in ms:
            step(f"train-m{m}", [f"trained-m{m}.faiss"], train, folder, m)
        if any(c for _, c, _ in settings):
            step("sq8", ["sq8"], train_sq8, folder)
        for m in ms:
            for kind in ("ivfpq", "ivfpq_disk"):
                step(f"{kind}-m{m}", [f"{kind}-m{m}/index.faiss"], build, kind, folder, m)
        served = []
        runs = [(kind, "pread", settings, m) for m in ms for kind in ("ivfpq", "ivfpq_disk")]
        runs.append(("ivfpq_disk", "mmap", [s for s in settings if not s[1]][:1], ms[0]))
        for kind, io, these, m in runs:
            if these:
                served += in_process(serve, kind, folder, single, these, io, m)
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
    for s in steps:
        if "params" in s:
            print(f"IVF-PQ parameters: {s['params']}")
    print()
    print(
        "| index | PQ bytes | re-rank reads rows by | nprobe | SQ8-scored / k | exact re-ranked / k | QPS, batch | QPS, one at a time (1 thread) | recall@10 vs exact | peak RSS serving (MB) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    names = {"ivfpq": "IVF-PQ, lists in memory", "ivfpq_disk": "IVF-PQ, lists on disk (mmap)"}
    for r in served:
        staged = r["candidates"] or "-"
        print(f"| {names[r['kind']]} | {r['m']} | {r['io']} | {r['nprobe']} | {staged} | {r['rerank']} | {r['qps_batch']:,.0f} "
              f"| {r['qps_single']:,.0f} | {r['recall']:.3f} | {r['rss']:,.0f} |")  # fmt: skip
    built = [s["rss"] for s in steps[2:] if "earlier run" not in s["step"]]
    peak = max(built + [r["rss"] for r in served if r["io"] == "pread"])
    print(f"\npeak RSS of building and serving (re-rank by pread; this run's steps): {peak:,.0f} MB")


if __name__ == "__main__":
    main()
