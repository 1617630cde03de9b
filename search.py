"""Catalogue search from the command line: build an index of a catalogue, then query it by category text.

    python search.py build --model DIR_OR_HUB_ID --dataset demo --split test --output runs/index
    python search.py query --index runs/index --k 10 --filter "colour: red" "Mugs"
    python search.py query --index runs/index --json "Home > Kitchen"

`build` is resumable: run it again after an interruption and encoding continues at the first
unfinished shard. The index folder records the model that built it; `query` uses that model unless
`--model` names another (of the same embedding size).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from transformers import AutoConfig

from clipita.cli import add_loader_arguments, load_from_args, run_command
from clipita.encoding import product_encoder
from clipita.index import (
    DEFAULT_EXACT_THRESHOLD,
    DEFAULT_SHARD_SIZE,
    INDEX_KINDS,
    MANIFEST_FILE,
    CatalogueIndex,
    Hit,
    check_queries,
    encode_to_shards,
    load_shards,
    search,
)
from clipita.loading import check_model_folder, load_model, weights_sha256

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
    model, processor = load_model(args.model, args.device)
    info = model_info(model, args.model)
    dataset, load_report = load_from_args(args, args.split)
    print(f"catalogue {args.dataset} [{args.split}]: {load_report}")

    fingerprint = {key: info[key] for key in ("name_or_path", "config_sha256", "weights_sha256")}
    fingerprint.update(dataset=args.dataset, split=args.split)
    encode_batch = product_encoder(model, processor, batch_size=args.batch_size)
    report = encode_to_shards(
        dataset, encode_batch, out / "encode", args.batch_size, args.shard_size, fingerprint=fingerprint
    )
    print(report.summary())
    embeddings, metadata = load_shards(out / "encode")
    if len(embeddings) == 0:
        raise ValueError(
            f"no product of {args.dataset} [{args.split}] could be encoded; see the skip report above"
        )
    leaves = sorted({path[-1] for path in metadata.column("category").to_pylist() if path})[:MAX_TEXT_QUERIES]
    text_queries = model.encode_categories(leaves) if leaves else None
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
            },
        },
    )
    # an older index in this folder stops being one while its files are replaced
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    index.save(out)
    if not args.keep_shards:
        shutil.rmtree(out / "encode")
    print(describe(index))


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
        if "recall_at_10_without_rerank" in recall:
            parts.append(f"PQ codes alone {recall['recall_at_10_without_rerank']:.3f}")
        lines.append("; ".join(parts))
    return "\n".join(lines)


def format_hits(query: str, hits: list[Hit]) -> str:
    lines = [f"query: {query!r} ({len(hits)} products)"]
    for rank, hit in enumerate(hits, 1):
        lines.append(
            f"{rank:3d}. {hit.product_id}  {hit.score:.4f}  {hit.title}  [{' > '.join(hit.category)}]  "
            f"{'; '.join(hit.attributes)}"
        )
    return "\n".join(lines)


def query(args: argparse.Namespace) -> None:
    check_queries(args.queries)
    index = CatalogueIndex.load(args.index)
    name = args.model or index.manifest.get("model", {}).get("name_or_path")
    if not name:
        raise ValueError(f"the index at {args.index} does not record its model: pass --model")
    check_model_folder(name)  # a truncated config.json or weights file: name it
    config = AutoConfig.from_pretrained(
        name, trust_remote_code=True
    )  # fail on a dimension mismatch before loading
    if getattr(config, "projection_dim", None) is not None:
        index.check_dim(config.projection_dim, f"model {name}")
    if not args.allow_model_mismatch:
        index.check_weights(weights_sha256(name), f"model {name}")
    model, processor = load_model(name, args.device)
    results = search(args.queries, args.k, model=model, index=index, processor=processor, filters=args.filter)
    if args.json:
        rows = [
            {"query": q, "rank": rank, **hit.to_dict()}
            for q, hits in zip(args.queries, results)
            for rank, hit in enumerate(hits, 1)
        ]
        print(json.dumps(rows, indent=1, ensure_ascii=False))
    else:
        print("\n\n".join(format_hits(q, hits) for q, hits in zip(args.queries, results)))


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
    b.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    b.set_defaults(run=build)

    q = sub.add_parser("query", help="rank the indexed products for category text")
    q.add_argument("--index", required=True, help="an index folder written by `build`")
    q.add_argument(
        "--k", type=int, default=10, help="products per query (all of them when k exceeds the catalogue)"
    )
    q.add_argument("--json", action="store_true", help="print a JSON list of ranked products")
    q.add_argument(
        "--filter",
        action="append",
        default=None,
        help="'key: value' attribute every result must carry; repeatable",
    )
    q.add_argument("--model", default=None, help="default: the model recorded in the index")
    q.add_argument(
        "--allow_model_mismatch",
        action="store_true",
        help="query with a model whose weights differ from those that built the index (normally refused)",
    )
    q.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    q.add_argument("queries", nargs="+", help="category text, e.g. 'Mugs' or 'Home > Kitchen > Mugs'")
    q.set_defaults(run=query)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
