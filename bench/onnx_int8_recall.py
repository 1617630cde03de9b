"""How much the int8 ONNX export changes retrieval: recall@10 of its top 10 against the float model's.

A trained model folder is copied to a temporary folder and exported there (`clipita.onnx_export`); a
catalogue split is encoded by PyTorch, ONNX float32 and ONNX int8 made each way of
clipita.onnx_export.INT8_METHODS (`quantize_dynamic`; `mixed`, the export's default; weight-only blocks), and every category node on the split's
paths (the paper's "all" setting) is a query, ranked over the split by exact search. Printed side by
side: recall@10 of each ONNX top 10 against PyTorch's (the share of PyTorch's top 10 it returns), the
largest embedding difference, P@10 and mAP@10 under the paper's protocol (clipita.evaluation), and the
files' sizes. Last line: `ratio 0.95` (recall@10 of the int8 quantize_dynamic export against the float model).

    python bench/onnx_int8_recall.py --model outputs/clip-ita --dataset demo --split test
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from clipita.data import load_catalogue
from clipita.evaluation import clipita_embeddings, evaluate_dense
from clipita.loading import load_model
from clipita.onnx_encoder import OnnxEncoder
from clipita.onnx_export import INT8_METHODS, add_int8, export_onnx
from clipita.tree import category_nodes

if __package__:  # imported: python -m bench.onnx_int8_recall, or the tests
    from bench import _machine, common
else:  # run as a script, python bench/onnx_int8_recall.py: its folder is on sys.path
    import _machine
    import common


LABELS = {"dynamic": "int8 dynamic", "mixed": "int8 mixed", "weight-only": "int8 w-only"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained CLIP-ITA folder (copied, never written)")
    parser.add_argument("--dataset", default="demo", help="a catalogue (as train.py's --dataset)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-products", type=int, default=None, help="the first N products (default: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads")
    parser.add_argument("--quick", action="store_true", help="at most 200 products")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_products = min(args.max_products or 200, 200)
    return args


def copy_model(model: str | Path, scratch: Path) -> Path:
    """A copy of a model folder to export into (the user's folder is never written), without checkpoints
    or an earlier export."""
    return Path(
        shutil.copytree(model, scratch / "model", ignore=shutil.ignore_patterns("checkpoints", "onnx"))
    )


def top10(scores: np.ndarray) -> np.ndarray:
    """Each row's 10 best columns (ties by index), a set per row for the overlap."""
    k = min(10, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def overlaps(top: np.ndarray, reference: np.ndarray) -> list[float]:
    """Per query, the share of the reference's top 10 that `top` returns."""
    return [len(set(a) & set(b)) / len(b) for a, b in zip(top, reference)]


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    products = load_catalogue(args.dataset, args.split)
    if args.max_products:
        products = products.select(range(min(args.max_products, len(products))))
    paths = [list(path) for path in products["category"]]
    with tempfile.TemporaryDirectory(prefix="clipita-int8-") as scratch:
        folder = copy_model(args.model, Path(scratch))
        sizes = export_onnx(folder, int8="dynamic")["sizes"]  # the others are re-quantised from copies
        folders = {"dynamic": folder}
        for method in INT8_METHODS:
            if method != "dynamic":
                folders[method] = Path(shutil.copytree(folder, Path(scratch) / method))
                other = add_int8(folders[method], method)["sizes"]
                sizes.update({f"{k} ({method})": v for k, v in other.items() if "int8" in k})
        model, processor = load_model(folder, device="cpu")
        threads = torch.get_num_threads()
        encoders = {
            "PyTorch": model,
            "ONNX fp32": OnnxEncoder(folder, "fp32", threads),
            **{LABELS[m]: OnnxEncoder(f, "int8", threads) for m, f in folders.items()},
        }
        nodes = sorted({node for path in paths for node in category_nodes(path)})
        texts = [processor.category_text(list(node)) for node in nodes]
        rows = {}
        for name, encoder in encoders.items():
            embeds, encode_queries = clipita_embeddings(encoder, processor, products, args.batch_size)
            results, skipped = evaluate_dense(
                embeds,
                encode_queries,
                paths,
                None,
                settings=("all",),
                query_text=lambda n: processor.category_text(list(n)),
            )
            queries = encode_queries(texts)
            rows[name] = {
                "embeds": embeds,
                "top10": top10(queries @ embeds.T),
                "results": results["all"],
                "skipped": skipped,
            }

    reference = rows["PyTorch"]
    print(
        f"== onnx_int8_recall: {args.model} on {args.dataset} [{args.split}], {len(paths)} products, "
        f"{len(nodes)} category queries (every node on the split's paths), exact search"
    )
    print(_machine.command_line())
    print(_machine.describe_machine(torch.device("cpu")))
    mib = 1024 * 1024
    print("files: " + ", ".join(f"{name} {size / mib:.2f} MiB" for name, size in sizes.items()))
    overall = reference["results"]["overall"]
    print(f"{'':12}{'recall@10 vs PyTorch':>22}{'max abs diff':>14}{'P@10':>8}{'mAP@10':>8}")
    recall = {}
    for name, row in rows.items():
        recall[name] = float(np.mean(overlaps(row["top10"], reference["top10"])))
        diff = float(np.abs(row["embeds"] - reference["embeds"]).max())
        overall = row["results"]["overall"]
        print(
            f"{name:12}{recall[name]:22.4f}{diff:14.2e}{100 * overall['P@10']:8.2f}{100 * overall['mAP@10']:8.2f}"
        )
    for name in (LABELS[m] for m in INT8_METHODS):
        worst = min(zip(overlaps(rows[name]["top10"], reference["top10"]), nodes))
        print(f"{name}: lowest recall@10 of one query {worst[0]:.2f} ({' > '.join(worst[1])})")
    print(f"ratio {recall['int8 dynamic']:.4f}")
    return recall["int8 dynamic"]


if __name__ == "__main__":
    main()
