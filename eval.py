"""Evaluate CLIP-ITA checkpoints and baselines on category-to-image retrieval (the paper's protocol).

    python eval.py --model DIR [--model DIR2 ...] --dataset DATASET --split test --output outputs/results.json \
        [--baselines bm25[,clip-zero-shot]] [--settings all,general,specific] [--batch_size 64] [--max_queries N] \
        [--node_scoring tree|max_leaf|node]

Prints a table shaped like the paper's Table 1 and writes results.json:

    {"name": row name, "model": DIR, "dataset": DATASET, "split": SPLIT, "num_products": n, "num_skipped": n,
     "settings": {"all" | "general" | "specific": {
         "overall" | "seen" | "unseen": {"P@1", "P@5", "P@10", "mAP@5", "mAP@10", "R-precision", "R@10",
                                         "MRR", "nDCG@10": value in [0, 1], or null when the group is empty},
         "num_queries": {"overall": n, "seen": n, "unseen": n},
         "error_analysis": {"num_wrong": n, "same_path_share": share, "depth_distance": {"1": share, ...}},
         "sibling_confusion": {"seen_queries": n, "with_unseen_sibling": n, "unseen_sibling_share": share,
                               "unseen_sibling_share_exposed": share}  (specific only, with a train
                               split): the mean share of a seen leaf's top 10 taken by products of
                               its unseen sibling leaves, over all seen leaves / those with an unseen sibling}},
     "per_depth": (model runs with a train split) {
         "node_scoring": "marginal" | "tree" | "max_leaf" | "node",
         "retrieval": {"root" | "depth2" | ... | "leaf": {
             "all" | "seen" | "unseen" | "known_leaves" | "new_leaves": {"P@10", "mAP@10": value in [0, 1],
                                                                        "num_queries": n} or null}},
             (known_leaves / new_leaves: broad depths only; relevance limited to products whose leaf was /
              was not seen in training, the other relevant products taken out of the ranking)
         "placement" | "path_placement": {"root" | ... | "leaf": {"known" | "new": {"top1", "top3": value in
             [0, 1], "num_products": n} or null}}},
             (a product's node at that depth among every node of the depth, by node score / by the suggested
              category paths; "new": the product's leaf has no training product, a new product type)
     "baselines": [every other run (other --model folders, a Matryoshka model's nested sizes as "NAME@d" with
                   "dim": d, BM25, CLIP zero-shot), same keys]}

The first --model is the top-level run. Metric definitions: clipita/metrics/clipita_retrieval/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from clipita.baselines import BM25Ranker, clip_zero_shot_embeddings, pretrained_towers
from clipita.cli import add_loader_arguments, add_node_scoring_argument, load_from_args
from clipita.encoding import softmax_temperature
from clipita.evaluation import (
    clipita_embeddings,
    clipita_per_depth,
    evaluate_dense,
    evaluate_rankings,
    format_per_depth,
    format_sibling_confusion,
    format_table,
    matryoshka_cut,
    plot_results,
)
from clipita.loading import load_model
from clipita.results import BASELINES, runs_by_name
from clipita.tree import DEFAULT_NODE_SCORING, LEVELS, CategoryTree, check_node_scoring

logger = logging.getLogger("eval")


def run_evaluation(
    catalogue,
    split: str = "test",
    model_paths: Sequence[str] = (),
    baselines: Sequence[str] | None = None,
    dataset_name: str | None = None,
    zero_shot_from: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    node_scoring: str = DEFAULT_NODE_SCORING,
    **protocol,
) -> dict:
    """Evaluate checkpoints and baselines on one split of a catalogue (a `datasets.DatasetDict`; its train
    split, when present, decides which categories are seen).

    Returns the results.json object: the first model's run (or the first baseline's, without models) with the
    issue's keys, and every other run, same shape, under "baselines". ``protocol`` goes to `evaluate_rankings`
    (settings, max_queries_per_setting, seed). The zero-shot CLIP baseline uses the CLIP towers and
    projections inside ``zero_shot_from`` (default: the first model), so it is zero-shot only when that
    model kept CLIP frozen. ``baselines=None`` runs BM25, and zero-shot CLIP when those towers come from a
    pretrained CLIP (`default_baselines`); name it to run it whatever the towers. Each model's run also
    gets "per_depth" (`clipita.evaluation.per_depth_report`, with a train split), its node scores read by
    ``node_scoring`` (`clipita.tree.NODE_SCORINGS`).
    """
    import datasets

    if baselines is None:
        baselines = default_baselines(zero_shot_from or (model_paths[0] if model_paths else None))
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {tuple(BASELINES)}")
    if split not in catalogue:
        raise ValueError(f"the catalogue has no {split!r} split (splits: {list(catalogue)})")
    if not model_paths and not baselines:
        raise ValueError("nothing to evaluate: give model paths and/or baselines")
    products = catalogue[split]
    if isinstance(products, datasets.IterableDataset):
        raise ValueError("evaluation ranks the whole split: load it as a map-style Dataset (no streaming)")
    if len(products) == 0:
        raise ValueError(
            f"the {split!r} split is empty after cleaning (the loader's skip report above says why): "
            "nothing to evaluate"
        )
    product_paths = list(products["category"])
    train_paths = list(catalogue["train"]["category"]) if "train" in catalogue else None
    if train_paths is None:
        logger.warning(
            "no train split: seen / unseen categories cannot be told apart and are reported as null"
        )
    meta = {"dataset": dataset_name, "split": split}
    check_node_scoring(node_scoring)
    tree_nodes = CategoryTree(path for name in catalogue for path in catalogue[name]["category"]).nodes()

    def run(name: str, model: str, results: dict, skipped: int, **extra) -> dict:
        entry = {"name": name, "model": model, **meta, "num_products": len(products) - skipped}
        return {**entry, "num_skipped": skipped, **extra, "settings": results}

    runs = []
    if "bm25" in baselines:
        results = evaluate_rankings(
            BM25Ranker(list(products["title"])), product_paths, train_paths, **protocol
        )
        runs.append(run(BASELINES["bm25"], "bm25", results, 0))
    if "clip-zero-shot" in baselines:
        source = zero_shot_from or (model_paths[0] if model_paths else None)
        if source is None:
            raise ValueError("the clip-zero-shot baseline needs a model path (zero_shot_from or model_paths)")
        model, processor = load_model(source, device)
        embeds, encode_queries = clip_zero_shot_embeddings(model, processor, products, batch_size)
        results, skipped = evaluate_dense(
            embeds, encode_queries, product_paths, train_paths, query_text=processor.category_text, **protocol
        )
        runs.append(
            run(BASELINES["clip-zero-shot"], "clip-zero-shot", results, skipped, zero_shot_from=source)
        )
        del model
    names = [run["name"] for run in runs]
    primary = len(runs) if model_paths else 0  # the first model's full-size run
    for path in model_paths:
        model, processor = load_model(path, device)
        embeds, encode_queries = clipita_embeddings(model, processor, products, batch_size)
        results, skipped = evaluate_dense(
            embeds, encode_queries, product_paths, train_paths, query_text=processor.category_text, **protocol
        )
        per_depth = {}
        if train_paths is not None:
            per_depth["per_depth"] = clipita_per_depth(
                embeds,
                encode_queries,
                tree_nodes,
                product_paths,
                train_paths,
                processor.category_text,
                node_scoring,
                softmax_temperature(model),
            )
        name = Path(str(path).rstrip("/")).name or str(path)
        name = name if name not in names else f"{name} ({len(names)})"
        names.append(name)
        runs.append(run(name, str(path), results, skipped, variant=model.config.variant, **per_depth))
        for dim in getattr(model.config, "matryoshka_dims", None) or []:  # each nested size, as its own row
            cut, cut_queries = matryoshka_cut(embeds, encode_queries, dim)
            results, skipped = evaluate_dense(
                cut, cut_queries, product_paths, train_paths, query_text=processor.category_text, **protocol
            )
            names.append(f"{name}@{dim}")
            runs.append(
                run(f"{name}@{dim}", str(path), results, skipped, variant=model.config.variant, dim=dim)
            )
        del model
    return {**runs[primary], "baselines": [r for i, r in enumerate(runs) if i != primary]}


def default_baselines(zero_shot_source: str | None) -> list[str]:
    """BM25, plus zero-shot CLIP when `zero_shot_source`'s towers come from a pretrained CLIP checkpoint;
    logs one line saying why when zero-shot CLIP is left out."""
    if zero_shot_source is None:
        logger.info("CLIP zero-shot baseline skipped: no model to take CLIP towers from")
        return ["bm25"]
    base = pretrained_towers(zero_shot_source)
    if base is None:
        logger.info(
            "CLIP zero-shot baseline skipped: the towers of %s were trained from scratch (its config records "
            "no base_clip_model); --baselines clip-zero-shot runs it anyway",
            zero_shot_source,
        )
        return ["bm25"]
    return ["bm25", "clip-zero-shot"]


def _names(value: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip() and v.strip() != "none"]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {', '.join(allowed)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", default=[], help="CLIP-ITA folder or Hub id (repeat for several)"
    )
    add_loader_arguments(parser)
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("outputs/results.json"),
        help="where to write results.json (default: outputs/results.json)",
    )
    parser.add_argument(
        "--baselines",
        type=lambda v: _names(v, tuple(BASELINES), "baselines"),
        default=None,
        help=f"comma-separated, from {', '.join(BASELINES)}; 'none' for no baseline (default: bm25, and "
        "clip-zero-shot when the model's towers come from a pretrained CLIP, i.e. train.py --base_model)",
    )
    parser.add_argument(
        "--settings",
        type=lambda v: _names(v, tuple(LEVELS), "settings"),
        default=list(LEVELS),
        help="comma-separated query settings (default: all,general,specific)",
    )
    parser.add_argument(
        "--zero_shot_from",
        help="CLIP-ITA whose CLIP towers give the zero-shot baseline (default: first --model)",
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_queries", type=int, help="sample at most N queries per setting (seeded)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query sample")
    add_node_scoring_argument(parser, "per-depth metrics: how a node scores a product")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--table", type=Path, help="also write the markdown table here")
    parser.add_argument("--plot", type=Path, help="also write a P@10 bar plot (PNG) here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse arguments, evaluate, print the table, write results.json (and table / plot); return the results."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model and args.baselines == []:
        parser.error("give at least one --model or a baseline")
    if "clip-zero-shot" in (args.baselines or []) and not (args.model or args.zero_shot_from):
        parser.error("the clip-zero-shot baseline needs --model or --zero_shot_from")
    catalogue, report = load_from_args(args)
    logger.info("catalogue %s: %s", args.dataset, report)
    results = run_evaluation(
        catalogue,
        split=args.split,
        model_paths=args.model,
        baselines=args.baselines,
        dataset_name=args.dataset,
        zero_shot_from=args.zero_shot_from,
        batch_size=args.batch_size,
        device=args.device,
        settings=args.settings,
        max_queries_per_setting=args.max_queries,
        seed=args.seed,
        node_scoring=args.node_scoring,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    table = format_table(runs_by_name(results))
    if confusion := format_sibling_confusion(runs_by_name(results)):
        table += "\n" + confusion
    if per_depth := format_per_depth(runs_by_name(results)):
        table += "\n" + per_depth
    print(table)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table)
    if args.plot:
        plot_results(runs_by_name(results), args.plot)
    print(f"results written to {args.output}")
    return results


if __name__ == "__main__":
    import sys

    from clipita.cli import run_command

    sys.exit(run_command(main))
