"""Which int8 recipes keep retrieval: the trials behind clipita.onnx_export's `mixed` method (issue 16).

A trained model folder is copied to a temporary folder and exported to float32 ONNX there; a catalogue split
is encoded once by PyTorch (the reference) and the processor's arrays are kept, so each trial only
quantises the two encoders and runs them. Printed for each: recall@10 of its top 10 against PyTorch's
(every category node on the split's paths a query, exact search, as bench/onnx_int8_recall.py) and the
largest product / category embedding difference. Trials:

1. `quantize_dynamic` with one group of nodes int8 and the rest float32 (groups: per text and vision
   layer its attention q/k/v, attention output, MLP fc1, MLP fc2; the projections; the heads and attribute
   projection (Gemm); the embedding tables (Gather); the patch convolution): what each group costs.
2. `quantize_dynamic` with groups kept float32, adding the costly ones in turn (`mixed` is the last but one),
   each with per-tensor int8 weights (`mixed`'s) and with per-channel ones.
3. `quantize_static` (QDQ, per-channel int8 weights, MatMul / Conv / Gemm, the attention-score MatMuls
   left float) calibrated by MinMax, Percentile or Entropy on 256 random products from
   clipita.onnx_export.random_products or on 256 products (and their category nodes) of a calibration split.

    python bench/onnx_int8_trials.py --model outputs/ablation_tree/demo/paper-s0 --threads 1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from clipita.data import load_catalogue
from clipita.evaluation import clipita_embeddings
from clipita.loading import load_model
from clipita.onnx_encoder import distinct_attributes
from clipita.onnx_export import MIXED_FLOAT_MODULES, export_onnx, random_products, tower_linears
from clipita.tree import category_nodes

if __package__:
    from bench import _machine, common
    from bench.onnx_int8_recall import copy_model, overlaps, top10
else:
    import _machine
    import common
    from onnx_int8_recall import copy_model, overlaps, top10

ENCODERS = ("category_encoder", "product_encoder")
ROLE = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "out_proj": "attn-out", "fc1": "fc1", "fc2": "fc2"}


def group_of(node, linears: dict[str, tuple[str, int, str]]) -> str | None:
    """The trial group of a node quantize_dynamic could quantise (`linears`: `tower_linears` of its graph);
    None: an attention-score MatMul, a shape Gather."""
    if node.op_type == "Conv":
        return "patch-conv"
    if node.op_type == "Gather":
        return "embeddings"
    if node.op_type not in ("MatMul", "Gemm"):
        return None
    if node.name in linears:
        tower, layer, linear = linears[node.name]
        return f"{tower}.L{layer}.{ROLE[linear]}"
    if "/text_projection" in node.name:
        return "text-proj"
    if "/visual_projection" in node.name:
        return "visual-proj"
    if node.op_type == "Gemm" or MIXED_FLOAT_MODULES.search(node.name):
        return "heads+attr-proj"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained CLIP-ITA folder (copied, never written)")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--calibration-split", default="train", help="static trials' real calibration data")
    parser.add_argument("--calibration-count", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    args = parse_args(argv)
    common.apply_threads(args.threads)
    products = load_catalogue(args.dataset, args.split)
    paths = [list(p) for p in products["category"]]
    scratch = Path(tempfile.mkdtemp(prefix="clipita-int8-trials-"))
    try:
        folder = copy_model(args.model, scratch)
        export_onnx(folder, int8=None)
        model, processor = load_model(folder, device="cpu")
        nodes = sorted({n for p in paths for n in category_nodes(p)})
        texts = [processor.category_text(list(n)) for n in nodes]
        embeds, encode_queries = clipita_embeddings(model, processor, products, 64)
        queries = encode_queries(texts)
        reference = top10(queries @ embeds.T)
        feeds = {
            "product_encoder": [
                distinct_attributes(
                    processor(
                        images=b["image"], titles=b["title"], attributes=b["attributes"], return_tensors="np"
                    )
                )
                for b in (products[i : i + 64] for i in range(0, len(products), 64))
            ],
            "category_encoder": [
                dict(processor(categories=texts[i : i + 64], return_tensors="np"))
                for i in range(0, len(texts), 64)
            ],
        }
        prepared, groups, scores = {}, {}, set()  # scores: attention-score MatMuls (left float by static)
        for name in ENCODERS:
            prepared[name] = scratch / f"{name}_prepared.onnx"
            quant_pre_process(
                str(folder / "onnx" / f"{name}.onnx"), str(prepared[name]), skip_symbolic_shape=True
            )
            graph = onnx.load(str(prepared[name]))
            linears = tower_linears(graph)
            for node in graph.graph.node:
                group = group_of(node, linears)
                if node.op_type == "MatMul" and group is None:
                    scores.add(node.name)
                if group:  # a Gemm is quantised as `<name>_MatMul`
                    groups.setdefault(group, set()).update({node.name, f"{node.name}_MatMul"})
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()

        def encode(path: Path, name: str) -> np.ndarray:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            inputs = [i.name for i in session.get_inputs()]
            return np.concatenate(
                [session.run(["embeddings"], {k: f[k] for k in inputs})[0] for f in feeds[name]]
            )

        def score(label: str, quantise) -> None:
            out = {}
            for name in ENCODERS:
                target = scratch / f"{name}_trial.onnx"
                quantise(name, prepared[name], target)
                out[name] = encode(target, name)
            top = top10(out["category_encoder"] @ out["product_encoder"].T)
            recall = np.mean(overlaps(top, reference))
            print(
                f"{label:58}{recall:10.4f}{np.abs(out['product_encoder'] - embeds).max():12.2e}"
                f"{np.abs(out['category_encoder'] - queries).max():12.2e}",
                flush=True,
            )

        def dynamic(keep_float: set, per_channel: bool = False):
            return lambda name, source, target: quantize_dynamic(
                source,
                target,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                nodes_to_exclude=sorted(keep_float),
            )

        every = set().union(*groups.values())
        print(
            f"== onnx_int8_trials: {args.model} on {args.dataset} [{args.split}], {len(paths)} products, {len(nodes)} queries"
        )
        print(_machine.command_line())
        print(_machine.describe_machine(torch.device("cpu")))
        print(f"{'trial':58}{'recall@10':>10}{'products':>12}{'categories':>12}  (max abs diff from PyTorch)")
        score("dynamic, every group int8 (INT8_METHODS dynamic)", dynamic(set()))
        print("-- 1. dynamic, only this group int8:")
        for group in sorted(groups):
            score(f"   {group}", dynamic(every - groups[group]))
        print("-- 2. dynamic, these groups kept float32; per-tensor weights, then per-channel:")
        steps = {  # each adds to the float32 set; the last but one is INT8_METHODS mixed
            "heads+attr-proj": ["heads+attr-proj"],
            "+ embeddings": ["embeddings"],
            "+ text-proj": ["text-proj"],
            "+ text.L0.* (= mixed)": [g for g in groups if g.startswith("text.L0.")],
            "+ text.* (only the vision tower int8)": [g for g in groups if g.startswith("text.")],
        }
        kept: set[str] = set()
        for label, step in steps.items():
            kept |= set().union(*(groups[g] for g in step))
            score(f"   {label}", dynamic(kept))
            score(f"   {label.replace(' (= mixed)', '')}, per-channel", dynamic(kept, True))
            if label.endswith("(= mixed)"):
                mixed_int8_tables = kept - groups["embeddings"]
        score("   mixed with int8 embedding tables", dynamic(mixed_int8_tables))
        print("-- 3. static QDQ, per-channel weights (heads kept float32 / all int8):")
        images, titles, attributes = random_products(args.calibration_count, seed=7)
        calibration_products = load_catalogue(args.dataset, args.calibration_split).shuffle(seed=0)
        calibration_products = calibration_products.select(
            range(min(args.calibration_count, len(calibration_products)))
        )
        calibration_texts = [
            processor.category_text(list(n))
            for n in sorted({n for p in calibration_products["category"] for n in category_nodes(list(p))})
        ]
        # one batch each: the histogram calibrators need every batch's tensors of one shape
        calibration = {
            "random_products": {
                "product_encoder": distinct_attributes(
                    processor(images=images, titles=titles, attributes=attributes, return_tensors="np")
                ),
                "category_encoder": dict(
                    processor(
                        categories=[" > ".join(t.split()[:3]) or "Mugs" for t in titles], return_tensors="np"
                    )
                ),
            },
            f"{args.calibration_split} split": {
                "product_encoder": distinct_attributes(
                    processor(
                        images=calibration_products["image"],
                        titles=calibration_products["title"],
                        attributes=calibration_products["attributes"],
                        return_tensors="np",
                    )
                ),
                "category_encoder": dict(processor(categories=calibration_texts, return_tensors="np")),
            },
        }

        class Reader(CalibrationDataReader):
            def __init__(self, batch: dict, inputs: list[str]):
                self.batches = iter([{k: batch[k] for k in inputs}])

            def get_next(self):
                return next(self.batches, None)

        def static(data: dict, method, keep_float: set):
            def run(name, source, target):
                inputs = [i.name for i in onnx.load(str(source)).graph.input]
                quantize_static(
                    source,
                    target,
                    Reader(data[name], inputs),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul", "Conv", "Gemm"],
                    per_channel=True,
                    calibrate_method=method,
                    nodes_to_exclude=sorted(keep_float | scores),
                )

            return run

        for data_name, data in calibration.items():
            for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile, CalibrationMethod.Entropy):
                for keep in ("heads+attr-proj", None):
                    label = f"   {data_name}, {method.name}, " + ("heads float32" if keep else "all int8")
                    score(label, static(data, method, groups[keep] if keep else set()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
