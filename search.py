"""Catalogue search from the command line: build an index of a catalogue, then query it by category text.

    python search.py build --model DIR_OR_HUB_ID --dataset demo --split test --output runs/index
    python search.py query --index runs/index --k 10 --filter "colour: red" "Mugs"
    python search.py query --index runs/index --json "Home > Kitchen"
    python search.py query --index runs/index --synonyms my_synonyms.json --filter "shade: navy" "Shirts"
    python search.py export --index runs/index --to runs/vectors.db      # Milvus Lite, or http://host:19530
    python search.py query --backend milvus --index runs/vectors.db --category "Home > Kitchen" "Mugs"

A query that names a category of the index ("Ceramic Mugs", "Home > Kitchen") gets its P@10 against the
indexed products' own category paths printed beside the hits. `--filter` matches keys and values whatever
their case and through a synonym table (colour / color, ...; clipita.schema.ATTRIBUTE_SYNONYMS) that
`--synonyms FILE` extends with a JSON object {"keys": {"colour": ["shade"]}, "values": {"grey": ["gray"]}};
when fewer than k products match, the answer says so and lists only those.

`build` is resumable: run it again after an interruption and encoding continues at the first
unfinished shard. `accelerate launch --num_processes N search.py build ...` encodes on N processes (GPUs,
or CPU processes with ACCELERATE_USE_CPU=1 and --multi_gpu), each its contiguous part of the catalogue in
its own resumable shards; the main process builds the index, the same as one process would. The index folder records the model that built it; `query` uses that model unless
`--model` names another (of the same embedding size).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from transformers import AutoConfig

from clipita.cli import (
    add_encoder_argument,
    add_loader_arguments,
    add_node_scoring_argument,
    load_from_args,
    run_command,
)
from clipita.encoding import product_encoder
from clipita.evaluation import precision_at_10
from clipita.index import (
    DEFAULT_EXACT_THRESHOLD,
    DEFAULT_SHARD_SIZE,
    INDEX_KINDS,
    MANIFEST_FILE,
    CatalogueIndex,
    Hit,
    check_queries,
    search,
)
from clipita.index.distributed import encode_catalogue, encode_root, iter_parts, process_state
from clipita.index.embeddings_dataset import write_embeddings_dataset
from clipita.index.kinds import open_embeddings
from clipita.index.shards import write_embeddings_npy
from clipita.index.vector_db import DEFAULT_COLLECTION, MilvusIndex, export_to_milvus
from clipita.loading import check_model_folder, weights_sha256
from clipita.onnx_encoder import load_encoder
from clipita.schema import PATH_SEPARATOR, synonym_table
from clipita.tree import CategoryTree, category_nodes

MAX_TEXT_QUERIES = 1000  # category names encoded to measure an approximate index's recall on text


def model_info(model, name_or_path: str) -> dict:
    """What the manifest records about the model: where it is, its embedding size and a config hash."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    for volatile in ("_name_or_path", "transformers_version", "auto_map"):
        config.pop(volatile, None)
    local = Path(name_or_path)
    return {
        "name_or_path": str(local.resolve()) if local.exists() else name_or_path,
        "model_type": config.get("model_type"),
        "projection_dim": getattr(model.config, "projection_dim", None),
        "product_modalities": getattr(model.config, "product_modalities", None),
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "weights_sha256": weights_sha256(name_or_path),
    }


def build(args: argparse.Namespace) -> None:
    out = Path(args.output)
    if args.embeddings_dataset:
        dataset_split_name(args.split)  # before hours of encoding
    # --- several processes (issue 17): `accelerate launch --num_processes N search.py build ...` splits the
    # catalogue; each process encodes its part, the main process assembles the index
    state = process_state()
    device = args.device or (str(state.device) if state.num_processes > 1 else None)
    model, processor = load_encoder(args.model, args.encoder, device)
    sizes = getattr(model.config, "matryoshka_dims", None) or []
    if args.dim is not None and args.dim not in sizes:
        raise ValueError(
            f"--dim {args.dim}: the model was trained for the nested sizes {sizes} only (matryoshka_dims)"
        )
    info = model_info(model, args.model)
    with state.main_process_first():  # the demo catalogue is generated once, by the main process
        dataset, load_report = load_from_args(args, args.split)
    if state.is_main_process:
        print(f"catalogue {args.dataset} [{args.split}]: {load_report}")

    fingerprint = {key: info[key] for key in ("name_or_path", "config_sha256", "weights_sha256")}
    fingerprint.update(dataset=args.dataset, split=args.split)
    encode_batch = product_encoder(model, processor, batch_size=args.batch_size)
    report = encode_catalogue(
        dataset, encode_batch, out, state, args.batch_size, args.shard_size, fingerprint=fingerprint
    )
    if not state.is_main_process:
        return
    print(report.summary())
    # --- end of the several-processes part
    if report.encoded == 0:
        raise ValueError(
            f"no product of {args.dataset} [{args.split}] could be encoded; see the skip report above"
        )
    world = state.num_processes
    dim = args.dim or report.dim

    def shards():  # every part's shards in catalogue order, cut to a nested Matryoshka size if asked
        for emb, meta in iter_parts(out, world):
            if args.dim is not None:  # the first dims, renormalised
                emb = emb[:, : args.dim]
                emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            yield emb, meta

    if args.embeddings_dataset:  # --- the vectors as a Hub dataset (issue 17)
        write_embeddings_dataset(
            shards(), args.embeddings_dataset, dataset_split_name(args.split), report.shards, dim,
            source=args.dataset, model=info["name_or_path"],
        )  # fmt: skip
        print(f"embeddings dataset written to {args.embeddings_dataset} (datasets.load_dataset reads it)")
    # an older index in this folder stops being one while its files are replaced
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    # the embeddings go to the index folder shard by shard and are read from there memory-mapped, so a
    # catalogue larger than memory builds (--memory_budget_mb picks an index with its lists on disk)
    metadata = write_embeddings_npy(shards(), out / "embeddings.npy", report.encoded, dim)
    embeddings = open_embeddings(out / "embeddings.npy")
    leaves = sorted({path[-1] for path in metadata.column("category").to_pylist() if path})[:MAX_TEXT_QUERIES]
    text_queries = model.encode_categories(leaves, dim=args.dim) if leaves else None
    index = CatalogueIndex.build(
        embeddings,
        metadata,
        kind=args.index_kind,
        exact_threshold=args.exact_threshold,
        memory_budget_mb=args.memory_budget_mb,
        model_info=info,
        text_queries=text_queries,
        extra_manifest={
            "dataset": {"source": args.dataset, "split": args.split},
            "encode": {
                "encoded": report.encoded,
                "skipped": report.skipped,
                "skipped_ids": report.skipped_ids,
                "skip_reasons": report.skip_reasons,
                "processes": report.processes,
            },
        },
        directory=out,
    )
    index.save(out)
    if not args.keep_shards:
        shutil.rmtree(encode_root(out, world))
    print(describe(index))


def dataset_split_name(split: str) -> str:
    """The split's name in an embeddings dataset: `datasets` accepts word characters only."""
    if not re.fullmatch(r"\w+", split):
        raise ValueError(
            f"--embeddings_dataset: the split {split!r} is not a dataset split name (letters, digits, _)"
        )
    return split


def describe(index: CatalogueIndex) -> str:
    m = index.manifest
    lines = [
        f"{m['index']['kind']} index of {m['count']} products, dim {m['embedding_dim']}, "
        f"built by {index.model_name}, saved to {index.path}"
    ]
    recall = m["recall"]
    if recall.get("exact"):
        lines.append("exact search (IndexFlatIP): recall@10 = 1 by construction")
    else:
        parts = [f"recall@10 vs exact search = {recall['recall_at_10']:.3f}"]
        parts.append(f"product queries {recall['recall_at_10_products']:.3f} (n={recall['product_queries']})")
        if "recall_at_10_text" in recall:
            parts.append(
                f"category-text queries {recall['recall_at_10_text']:.3f} (n={recall['text_queries']})"
            )
        if "recall_at_10_without_refine" in recall:
            parts.append(f"without the SQ8 stage {recall['recall_at_10_without_refine']:.3f}")
        if "recall_at_10_without_rerank" in recall:
            parts.append(f"PQ codes alone {recall['recall_at_10_without_rerank']:.3f}")
        lines.append("; ".join(parts))
    return "\n".join(lines)


def answer(query: str, hits: list[Hit], k: int, filters: list[str] | None, paths: list[list[str]]) -> dict:
    """One query's answer: the top-k hits, the filter's shortfall, and P@10 against the index's own
    category paths when the query names a category node of the index (`hits` holds the top max(k, 10))."""
    named = CategoryTree(paths).nodes_named(query)
    result = {"query": query, "k": k, "filters": filters or [], "category": None, "P@10": None}
    if named:
        on_named = [any(node in named for node in category_nodes(h.category)) for h in hits[:10]]
        num_relevant = sum(any(node in named for node in category_nodes(path)) for path in paths)
        result["category"] = [PATH_SEPARATOR.join(node) for node in named]
        result["P@10"] = precision_at_10(on_named, num_relevant)
    result["num_matching"] = len(hits) if filters and len(hits) < k else None
    result["note"] = (
        f"only {len(hits)} products match {' and '.join(repr(f) for f in filters)}: fewer than k={k}"
        if result["num_matching"] is not None
        else None
    )
    result["hits"] = [{"rank": rank, **hit.to_dict()} for rank, hit in enumerate(hits[:k], 1)]
    return result


def format_answer(result: dict) -> str:
    lines = [f"query: {result['query']!r} ({len(result['hits'])} products)"]
    if result["P@10"] is not None:
        lines.append(
            f"P@10 {result['P@10']:.2f} against the index's category paths: the query names "
            + ", ".join(repr(c) for c in result["category"])
        )
    if result["note"]:
        lines.append(result["note"])
    for hit in result["hits"]:
        lines.append(
            f"{hit['rank']:3d}. {hit['product_id']}  {hit['score']:.4f}  {hit['title']}  "
            f"[{' > '.join(hit['category'])}]  {'; '.join(hit['attributes'])}"
        )
    return "\n".join(lines)


def read_synonyms(path: str | None) -> dict | None:
    """--synonyms FILE: a JSON object {"keys": {canonical: [variant, ...]}, "values": {...}}, checked."""
    if path is None:
        return None
    try:
        extra = json.loads(Path(path).read_text(encoding="utf-8"))
        synonym_table(extra)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as err:
        raise ValueError(f"--synonyms {path}: {err}") from None
    return extra


def open_backend(args: argparse.Namespace):
    """--backend faiss: the index folder; --backend milvus: a collection written by `export` (issue 17)."""
    if args.backend == "milvus":
        if getattr(args, "nprobe", None) is not None:
            raise ValueError("--nprobe applies to a FAISS IVF-PQ index folder, not --backend milvus")
        return MilvusIndex(args.index, args.collection)
    index = CatalogueIndex.load(args.index)
    if getattr(args, "nprobe", None) is not None:
        index.set_nprobe(args.nprobe)
    return index


def query(args: argparse.Namespace) -> None:
    check_queries(args.queries)
    index = open_backend(args)
    name = args.model or index.manifest.get("model", {}).get("name_or_path")
    if not name:
        raise ValueError(f"the index at {args.index} does not record its model: pass --model")
    check_model_folder(name)  # a truncated config.json or weights file: name it
    config = AutoConfig.from_pretrained(
        name, trust_remote_code=True
    )  # fail on a dimension mismatch before loading
    nested = getattr(config, "matryoshka_dims", None) or []
    if getattr(config, "projection_dim", None) is not None and index.dim not in nested:
        index.check_dim(config.projection_dim, f"model {name}")
    if not args.allow_model_mismatch:
        index.check_weights(weights_sha256(name), f"model {name}")
    synonyms = read_synonyms(args.synonyms)
    model, processor = load_encoder(name, args.encoder, args.device)
    depth = max(args.k, 10)  # P@10 needs the top 10 whatever k
    results = search(
        args.queries,
        depth,
        model=model,
        index=index,
        processor=processor,
        filters=args.filter,
        synonyms=synonyms,
        node_scoring=args.node_scoring if args.backend == "faiss" else "node",  # a database holds no tree
        category=args.category,
    )
    # P@10 needs every product's category path: the index folder has them, a database is not read whole
    paths = index.metadata.column("category").to_pylist() if isinstance(index, CatalogueIndex) else []
    filters = (args.filter or []) + ([f"category: {args.category}"] if args.category else [])
    answers = [answer(q, hits, args.k, filters, paths) for q, hits in zip(args.queries, results)]
    if args.json:
        print(json.dumps(answers, indent=1, ensure_ascii=False))
    else:
        print("\n\n".join(format_answer(a) for a in answers))


def export(args: argparse.Namespace) -> None:
    """Load an index folder into a Milvus collection (issue 17): a Milvus Lite file or a cluster's URI."""
    count = export_to_milvus(
        CatalogueIndex.load(args.index), args.to, args.collection, args.overwrite, args.num_shards
    )
    print(f"exported {count} products of {args.index} to {args.to}, collection {args.collection}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="encode a catalogue split and build its index")
    b.add_argument("--model", required=True, help="a CLIP-ITA folder or Hub id")
    add_loader_arguments(b)
    b.add_argument("--split", default="test", help="the catalogue split to index")
    b.add_argument("--output", required=True, help="the index folder to write (resumes an unfinished encode)")
    b.add_argument("--batch_size", type=int, default=64)
    b.add_argument("--shard_size", type=int, default=DEFAULT_SHARD_SIZE, help="products per resumable shard")
    b.add_argument("--index_kind", choices=INDEX_KINDS, default="auto")
    b.add_argument(
        "--exact_threshold",
        type=int,
        default=DEFAULT_EXACT_THRESHOLD,
        help="auto: exact IndexFlatIP up to this many products",
    )
    b.add_argument(
        "--memory_budget_mb", type=float, default=None, help="auto: the largest index (MB) to hold in memory"
    )
    b.add_argument(
        "--keep_shards", action="store_true", help="keep the encode shards after the index is built"
    )
    b.add_argument(
        "--embeddings_dataset",
        default=None,
        help="also write (product_id, embedding, title, category, attributes) as a parquet dataset in this "
        "folder: datasets.load_dataset(FOLDER) reads it, huggingface_hub.upload_folder publishes it",
    )
    b.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    b.add_argument(
        "--dim",
        type=int,
        default=None,
        help="index embeddings cut to this nested size (a model trained with --matryoshka_dims); "
        "queries are cut to it too",
    )
    add_encoder_argument(b)
    b.set_defaults(run=build)

    q = sub.add_parser("query", help="rank the indexed products for category text")
    q.add_argument("--index", required=True, help="an index folder written by `build`")
    q.add_argument(
        "--k", type=int, default=10, help="products per query (all of them when k exceeds the catalogue)"
    )
    q.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list, one object per query: query, k, filters, category, P@10, num_matching, "
        "note, hits (rank, product_id, score, title, category, attributes)",
    )
    q.add_argument(
        "--filter",
        action="append",
        default=None,
        help="'key: value' attribute every result must carry (any case, synonyms as --synonyms); repeatable",
    )
    q.add_argument(
        "--synonyms",
        default=None,
        help='JSON file adding attribute spellings: {"keys": {"colour": ["shade"]}, "values": {"grey": ["gray"]}}',
    )
    q.add_argument("--model", default=None, help="default: the model recorded in the index")
    q.add_argument(
        "--allow_model_mismatch",
        action="store_true",
        help="query with a model whose weights differ from those that built the index (normally refused)",
    )
    add_node_scoring_argument(q, "how a query that names a node scores products")
    q.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    add_encoder_argument(q)
    q.add_argument("queries", nargs="+", help="category text, e.g. 'Mugs' or 'Home > Kitchen > Mugs'")
    # --- the vector database (issue 17)
    q.add_argument(
        "--category",
        default=None,
        help="keep products on or under this category node, a path from the root ('Home > Kitchen')",
    )
    q.add_argument(
        "--backend",
        choices=("faiss", "milvus"),
        default="faiss",
        help="faiss: --index is an index folder; milvus: --index is a Milvus URI (a Milvus Lite .db file "
        "or http://host:19530) holding a collection written by `export`; it ranks by the query text alone "
        "(--node_scoring node)",
    )
    q.add_argument(
        "--collection", default=DEFAULT_COLLECTION, help="the Milvus collection (--backend milvus)"
    )
    q.add_argument(
        "--nprobe",
        type=int,
        default=None,
        help="IVF-PQ index: lists probed per query (default: the build's, nlist / 32; fewer is faster)",
    )
    q.set_defaults(run=query)

    e = sub.add_parser("export", help="load an index folder into a vector database (Milvus) for serving")
    e.add_argument("--index", required=True, help="an index folder written by `build`")
    e.add_argument(
        "--to", required=True, help="a Milvus URI: a Milvus Lite file (vectors.db) or http://host:19530"
    )
    e.add_argument("--collection", default=DEFAULT_COLLECTION, help="the collection to create")
    e.add_argument("--overwrite", action="store_true", help="replace a collection of that name")
    e.add_argument("--num_shards", type=int, default=1, help="write shards of the collection (a cluster's)")
    e.set_defaults(run=export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
