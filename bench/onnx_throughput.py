"""Products/s and categories/s of PyTorch float32 against ONNX Runtime float32 and int8, in one run.

The model is saved to a temporary folder and exported by `clipita.onnx_export` (the encoders traced from the
model; int8 each way of clipita.onnx_export.INT8_METHODS: `quantize_dynamic`, `mixed` and weight-only blocks); all
encode the same synthetic products with the same processor,
in interleaved rounds. End to end (processor included) and forward only (the same preprocessed batches)
are timed; a ratio is the median of the rounds' ratios (ONNX speed / PyTorch speed), its range beside.
ONNX Runtime gets as many intra-op threads as torch. Also printed: the files' sizes and the largest
difference of the ONNX embeddings from PyTorch's on these products. Last line: `ratio 1.42` (ONNX float32
/ PyTorch products/s, end to end).

    python bench/onnx_throughput.py --quick
    python bench/onnx_throughput.py --config vit-b-32 --threads 1 --num-products 32 --batch-size 16 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from clipita.bootstrap import add_sentence_transformers_files, register_auto_classes
from clipita.onnx_encoder import OnnxEncoder, distinct_attributes
from clipita.onnx_export import add_int8, export_onnx

if __package__:  # imported: python -m bench.onnx_throughput, or the tests
    from bench import _machine, common
else:  # run as a script, python bench/onnx_throughput.py: its folder is on sys.path
    import _machine
    import common

SIDES = {
    "torch": "PyTorch",
    "onnx": "ONNX fp32",
    "int8": "int8 dyn.",
    "int8mx": "int8 mixed",
    "int8wo": "int8 w-o",
}
INT8_SIDES = {
    "int8": "dynamic",
    "int8mx": "mixed",
    "int8wo": "weight-only",
}  # clipita.onnx_export.INT8_METHODS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--num-products", type=int, default=None, help="per round (default: 64 quick, 512 full)"
    )
    parser.add_argument("--num-categories", type=int, default=None, help="default: as many as products")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes over all products first")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 3 quick, 7 full)")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error("ONNX Runtime runs here on the CPU provider: --device cpu")
    args.num_products = args.num_products or (64 if args.quick else 512)
    args.num_categories = args.num_categories or args.num_products
    args.repeats = args.repeats or (3 if args.quick else 7)
    if min(args.batch_size, args.num_products, args.num_categories, args.repeats) < 1 or args.warmup < 0:
        parser.error("batch size, counts and repeats must be positive, warmup non-negative")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    device = torch.device("cpu")
    model, processor = common.build_model(args.config, seed=args.seed)
    model = model.eval()
    products = common.synthetic_products(args.num_products, seed=args.seed)
    categories = common.synthetic_category_names(args.num_categories, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="clipita-onnx-bench-") as scratch:
        folder = Path(scratch) / "model"
        register_auto_classes()
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        add_sentence_transformers_files(folder)
        manifest = export_onnx(folder, int8="dynamic")  # the others are re-quantised from copies
        sizes = dict(manifest["sizes"])
        encoders = {"onnx": OnnxEncoder(folder, "fp32", torch.get_num_threads())}
        for side, method in INT8_SIDES.items():
            copy = folder
            if method != "dynamic":
                copy = Path(shutil.copytree(folder, Path(scratch) / method))
                other = add_int8(copy, method)["sizes"]
                sizes.update({f"{k} ({method})": v for k, v in other.items() if "int8" in k})
            encoders[side] = OnnxEncoder(copy, "int8", torch.get_num_threads())
        threads = torch.get_num_threads()
        batches = [products.slice(i, i + args.batch_size) for i in range(0, len(products), args.batch_size)]
        processed = [processor(images=b.images, titles=b.titles, attributes=b.attributes) for b in batches]
        feeds = [{k: v.numpy() for k, v in inputs.items()} for inputs in processed]
        columns = (products.images, products.titles, products.attributes)
        runs = {
            "torch_e2e": lambda: model.encode_products(
                *columns, batch_size=args.batch_size, processor=processor, show_progress_bar=False
            ),
            "torch_forward": lambda: [model.get_product_features(**inputs) for inputs in processed],
            "torch_categories": lambda: model.encode_categories(
                categories, batch_size=args.batch_size, processor=processor, show_progress_bar=False
            ),
        }
        for side, encoder in encoders.items():
            runs[f"{side}_e2e"] = lambda e=encoder: e.encode_products(*columns, batch_size=args.batch_size)
            # picking the distinct attributes is part of the ONNX side's forward, as torch.unique is PyTorch's
            runs[f"{side}_forward"] = lambda e=encoder: [
                e.product_session.run(["embeddings"], {n: d[n] for n in e.product_inputs})
                for d in map(distinct_attributes, feeds)
            ]
            runs[f"{side}_categories"] = lambda e=encoder: e.encode_categories(
                categories, batch_size=args.batch_size
            )
        with torch.no_grad():
            times = _machine.interleaved_times(runs, device, args.warmup, args.repeats)
            reference = runs["torch_e2e"]()
        differences = {side: float(np.abs(runs[f"{side}_e2e"]() - reference).max()) for side in encoders}

    seconds = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"== onnx_throughput: config {args.config}, float32 weights, batch {args.batch_size}, "
        f"{args.num_products} products ({common.ATTRIBUTES_PER_PRODUCT} attributes each), "
        f"{args.num_categories} categories, warmup {args.warmup}, median of {args.repeats}"
    )
    print(_machine.command_line())
    print(_machine.describe_machine(device))
    import onnxruntime

    print(
        f"onnxruntime {onnxruntime.__version__}, {threads} intra-op thread(s); "
        f"parameters {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M"
    )
    mib = 1024 * 1024
    print(
        "files: "
        + ", ".join(f"{name} {size / mib:.2f} MiB" for name, size in sizes.items())
        + f" (model.safetensors: {sum(p.numel() for p in model.parameters()) * 4 / mib:.2f} MiB of float32)"
    )
    print(
        "max abs difference from PyTorch (normalised product embeddings): "
        + ", ".join(f"{side} {diff:.2e}" for side, diff in differences.items())
    )
    print(
        f"{'':28}"
        + "".join(f"{label:>11}" for label in SIDES.values())
        + "   ONNX/PyTorch (median, range): "
        + "; ".join(list(SIDES.values())[1:])
    )
    ratio = None
    for label, key, count in (
        ("products/s end-to-end", "e2e", args.num_products),
        ("products/s forward only", "forward", args.num_products),
        ("categories/s end-to-end", "categories", args.num_categories),
    ):
        speeds = [count / seconds[f"{side}_{key}"] for side in SIDES]
        cells = []
        for side in encoders:
            ratios = [t / o for t, o in zip(times[f"torch_{key}"], times[f"{side}_{key}"])]
            cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
            if key == "e2e" and side == "onnx":
                ratio = statistics.median(ratios)
        print(f"{label:28}" + "".join(f"{speed:11.1f}" for speed in speeds) + "   " + "; ".join(cells))
    print(f"ratio {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
