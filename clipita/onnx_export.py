"""Export a CLIP-ITA folder's two encoders to ONNX (`onnx/` in the folder), with an int8 variant.

The graphs are traced from the model's own modules (towers, attribute projection and pooler, heads), so
the numbers are the model's and preprocessing stays the processor's: an ONNX user runs
`CLIPITAProcessor` and feeds its arrays (`clipita.onnx_encoder.OnnxEncoder` does). Exported:

- `onnx/category_encoder.onnx`: category_input_ids, category_attention_mask -> embeddings [N, d]
- `onnx/product_encoder.onnx`: the processor's product arrays for the model's modalities, the attribute
  slots as `distinct_attributes` gives them (each distinct string once, plus each slot's index) -> [B, d]
- `onnx/*_int8.onnx`: the same with int8 weights (INT8_METHODS: `quantize_dynamic`; `mixed`, the default, the same with
  the nodes that cost recall kept in float32; or weight-only blocks)
- `onnx/manifest.json`: inputs, opset, the weights' sha256 they were exported from, and the parity measured

Every output is L2-normalised like `encode_categories` / `encode_products`.

    python -m clipita.onnx_export --model outputs/clip-ita [--int8 dynamic|mixed|weight-only|none] [--parity 200]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipita.cli import run_command
from clipita.fileio import write_json
from clipita.loading import load_model, weights_sha256
from clipita.onnx_encoder import (
    CATEGORY_INPUTS,
    MANIFEST,
    ONNX_DIR,
    VARIANT_FILES,
    OnnxEncoder,
    distinct_attributes,
    product_inputs_of,
)

OPSET = 17


class CategoryEncoder(nn.Module):
    """`model.get_category_features` as a graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, category_input_ids: torch.Tensor, category_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.model.get_category_features(category_input_ids, category_attention_mask)


class ProductEncoder(nn.Module):
    """`model.get_product_features` as a graph with shapes fixed only by its inputs; the towers run as
    `get_product_features` runs them (`_image_tower` / `_text_tower`: the last layer at the pooled token).

    The model encodes each distinct attribute string of a batch once (`torch.unique`, whose output size
    depends on the data, which a trace would freeze); here the caller does that (`distinct_attributes`) and
    the graph takes the distinct strings and each slot's index into them: the same embeddings and work.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.modalities = list(model.config.product_modalities)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(product_inputs_of(self.modalities), inputs))
        embeds = {}
        if "image" in self.modalities:
            embeds["image"] = self.model._image_tower(given["pixel_values"]).pooler_output
        if "title" in self.modalities:
            embeds["title"] = self.model._text_tower(
                given["title_input_ids"], given["title_attention_mask"]
            ).pooler_output
        if "attributes" in self.modalities:
            text = self.model._text_tower(
                given["attribute_input_ids"], given["attribute_attention_mask"]
            ).pooler_output
            mask = given["attribute_mask"]
            features = self.model.attribute_projection(text)[given["attribute_index"]]
            features = features * mask.unsqueeze(-1).to(features.dtype)
            embeds["attributes"] = self.model.attribute_pooler(features, mask.bool())
        return self.model._fuse(embeds)


def example_inputs(processor, modalities: list[str]) -> tuple[dict, dict]:
    """Tiny category and product batches from the processor: the trace's example inputs."""
    from PIL import Image

    categories = processor(categories=["Home > Kitchen > Mugs", "Kids T-Shirts"], return_tensors="pt")
    columns = {
        "images": [Image.new("RGB", (64, 48), (200, 40, 45)), Image.new("RGB", (48, 64), (20, 90, 200))],
        "titles": ["red ceramic mug 12 oz", "organic cotton kids t-shirt"],
        "attributes": [["colour: red", "material: ceramic"], ["audience: kids"]],
    }
    wanted = {"image": "images", "title": "titles", "attributes": "attributes"}
    products = processor(**{wanted[m]: columns[wanted[m]] for m in modalities}, return_tensors="np")
    products = distinct_attributes(products)
    return dict(categories), {name: torch.from_numpy(np.asarray(value)) for name, value in products.items()}


DYNAMIC_AXES = {
    "category_input_ids": {0: "categories", 1: "tokens"},
    "category_attention_mask": {0: "categories", 1: "tokens"},
    "pixel_values": {0: "products"},
    "title_input_ids": {0: "products", 1: "title_tokens"},
    "title_attention_mask": {0: "products", 1: "title_tokens"},
    "attribute_input_ids": {0: "attribute_texts", 1: "attribute_tokens"},
    "attribute_attention_mask": {0: "attribute_texts", 1: "attribute_tokens"},
    "attribute_index": {0: "products", 1: "attributes"},
    "attribute_mask": {0: "products", 1: "attributes"},
    "embeddings": {0: "items"},
}


def _export(module: nn.Module, inputs: dict, names: list[str], path: Path) -> None:
    torch.onnx.export(
        module,
        tuple(inputs[name] for name in names),
        str(path),
        input_names=names,
        output_names=["embeddings"],
        dynamic_axes={name: DYNAMIC_AXES[name] for name in [*names, "embeddings"]},
        opset_version=OPSET,
        dynamo=False,
    )


INT8_METHODS = {
    "dynamic": "quantize_dynamic: int8 weights, activations quantised per tensor at run time (MatMulInteger)",
    "mixed": "quantize_dynamic with per-tensor int8 weights, keeping in float32 the nodes that cost recall "
    "(heads, attribute projection, embedding tables, text projection, the text tower's first layer)",
    "weight-only": "int8 weights in blocks of 32, float activations (MatMulNBits, bits=8)",
}
# `mixed` keeps these float32: every node of the text tower's first encoder layer (attention and MLP), the text
# projection, the heads' and attribute projection's layers, and every Gather (embedding tables; no int8 kernel
# to gain). Measured on the demo model: quantising one group at a time, these lost the most recall@10; the
# vision tower and later text layers hardly any. Its weights are int8 per tensor: per-channel scales put more
# weights near +-127, whose products with uint8 activations the int16 sums of ONNX Runtime's AVX2 kernels
# (no AVX-512 VNNI) saturate, so on such a CPU a per-channel file was less accurate than `dynamic`
# (docs/BENCHMARKS.md); a file served anywhere must not depend on the serving CPU.
# the default: the one whose recall@10 against PyTorch meets the 0.98 (docs/BENCHMARKS.md)
DEFAULT_INT8_METHOD = "mixed"
MIXED_FLOAT_MODULES = re.compile(r"/(text_projection|attribute_projection|attribute_pooler|\w+_head)(_\d+)?/")
# a tower layer's linear node: `/text_model/encoder/layers.0/self_attn/q_proj/MatMul` in a whole tower,
# `/layers.0/mlp/fc1_2/MatMul` for an earlier layer called by `_text_tower`, `/mlp/fc1/Gemm` for the last layer
# called at the pooled token (no layer index: the highest index seen plus one)
TOWER_LINEAR = re.compile(
    r"(?:/layers\.(\d+))?/(?:(?:self_attn|mlp)[^/]*/)?(q_proj|k_proj|v_proj|out_proj|fc1|fc2)(?:_\d+)?/(?:MatMul|Gemm)$"
)


def tower_linears(model) -> dict[str, tuple[str, int, str]]:
    """{node name: (tower, layer, linear)} for the towers' linear nodes of an exported graph, e.g.
    ("text", 0, "fc1"). The tower is told by which inputs reach the node (pixels: "vision", token ids:
    "text"; both: the heads), the layer and linear by its name. Not by parameter names: the exporter merges
    initializers of equal value (a fresh model's zero biases), and a layer called outside its tower's
    forward is named without the tower's path."""
    reach: dict[str, set] = {}
    for graph_input in model.graph.input:
        if graph_input.name == "pixel_values":
            reach[graph_input.name] = {"vision"}
        elif graph_input.name.endswith("input_ids"):
            reach[graph_input.name] = {"text"}
    found, highest = {}, {}
    for node in model.graph.node:  # topologically sorted
        sources = set().union(*(reach.get(name, set()) for name in node.input))
        for name in node.output:
            reach[name] = sources
        match = TOWER_LINEAR.search(node.name)
        if match and node.op_type in ("MatMul", "Gemm") and len(sources) == 1:
            tower = next(iter(sources))
            layer = None if match.group(1) is None else int(match.group(1))
            found[node.name] = (tower, layer, match.group(2))
            if layer is not None:
                highest[tower] = max(highest.get(tower, -1), layer)
    return {
        name: (tower, highest.get(tower, -1) + 1 if layer is None else layer, linear)
        for name, (tower, layer, linear) in found.items()
    }


def mixed_float_nodes(model) -> list[str]:
    """The node names `mixed` leaves in float32. quantize_dynamic first rewrites each Gemm as a MatMul named
    `<gemm>_MatMul` (and an Add), so a Gemm is excluded under both names."""
    first_text_layer = {
        name for name, (tower, layer, _) in tower_linears(model).items() if (tower, layer) == ("text", 0)
    }
    names = []
    for node in model.graph.node:
        if node.op_type == "Gather":
            names.append(node.name)
        elif node.op_type in ("MatMul", "Gemm") and (
            node.name in first_text_layer or MIXED_FLOAT_MODULES.search(node.name)
        ):
            names += [node.name, f"{node.name}_MatMul"]
    return names


def quantize(source: Path, target: Path, method: str = DEFAULT_INT8_METHOD) -> None:
    """An int8 copy of an exported encoder by one of INT8_METHODS. ONNX Runtime's pre-processing first folds
    the Identity nodes the exporter puts before weights shared by two tower calls (title and attributes),
    which the quantiser would otherwise leave in float32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in INT8_METHODS:
        raise ValueError(f"int8 method must be one of {sorted(INT8_METHODS)}, got {method!r}")
    with tempfile.TemporaryDirectory(prefix="clipita-onnx-") as scratch:
        prepared = Path(scratch) / source.name
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if method == "dynamic":
            quantize_dynamic(prepared, target, weight_type=QuantType.QInt8)
            return
        if method == "mixed":
            quantize_dynamic(
                prepared,
                target,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=mixed_float_nodes(onnx.load(str(prepared))),
            )
            return
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(onnx.load(str(prepared)), bits=8, block_size=32, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), False)


def add_int8(model_dir: str | os.PathLike, method: str = DEFAULT_INT8_METHOD) -> dict:
    """(Re)write the int8 encoders of a folder's float export by `method`; the manifest records it."""
    out = Path(model_dir) / ONNX_DIR
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    for source, target in zip(VARIANT_FILES["fp32"], VARIANT_FILES["int8"]):
        quantize(out / source, out / target, method)
    manifest["files"]["int8"] = list(VARIANT_FILES["int8"])
    manifest["int8_method"] = method
    manifest["sizes"] = {
        name: (out / name).stat().st_size for names in manifest["files"].values() for name in names
    }
    manifest.pop("parity", None)  # measured on the files it names
    write_json(out / MANIFEST, manifest)
    return manifest


def export_onnx(model_dir: str | os.PathLike, int8: str | None = DEFAULT_INT8_METHOD) -> dict:
    """Write `onnx/` into the model folder: the float encoders, and int8 variants by method `int8` (one of
    INT8_METHODS; None: no int8)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a model folder (the export is written into it)")
    model, processor = load_model(model_dir, device="cpu")
    # unique-text encoding picks rows by the data (torch.unique), which a trace would freeze to the example's
    # duplicates; the graph encodes every row, the same embeddings
    model.config.deduplicate_texts = False
    modalities = list(model.config.product_modalities)
    out = model_dir / ONNX_DIR
    out.mkdir(exist_ok=True)
    categories, products = example_inputs(processor, modalities)
    product_names = product_inputs_of(modalities)
    with torch.no_grad():
        _export(
            CategoryEncoder(model).eval(), categories, list(CATEGORY_INPUTS), out / VARIANT_FILES["fp32"][0]
        )
        _export(ProductEncoder(model).eval(), products, product_names, out / VARIANT_FILES["fp32"][1])
    files = {"fp32": list(VARIANT_FILES["fp32"])}
    manifest = {
        "opset": OPSET,
        "product_modalities": modalities,
        "projection_dim": model.config.projection_dim,
        "logit_scale": model.logit_scale.item(),  # log of the temperature's inverse, as the model holds it
        "category_inputs": list(CATEGORY_INPUTS),
        "product_inputs": product_names,
        "files": files,
        "sizes": {name: (out / name).stat().st_size for name in files["fp32"]},
        "weights_sha256": weights_sha256(model_dir),
    }
    for name in VARIANT_FILES["int8"]:
        (out / name).unlink(missing_ok=True)  # an older int8 export does not match these float files
    write_json(out / MANIFEST, manifest)
    return add_int8(model_dir, int8) if int8 else manifest


def random_products(count: int, seed: int = 0) -> tuple[list, list[str], list[list[str]]]:
    """Products with random pixels, titles and 0-6 attributes: inputs for a parity check."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = ["red", "ceramic", "mug", "kids", "cotton", "t-shirt", "glass", "blue", "12", "oz", "gift", "set"]
    keys = ["colour", "material", "audience", "pattern", "size", "style"]
    images, titles, attributes = [], [], []
    for _ in range(count):
        h, w = rng.integers(24, 96, size=2)
        images.append(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
        titles.append(" ".join(rng.choice(words, size=rng.integers(1, 12))))
        attributes.append(
            [f"{k}: {rng.choice(words)}" for k in rng.choice(keys, size=rng.integers(0, 7), replace=False)]
        )
    return images, titles, attributes


def parity(
    model_dir: str | os.PathLike, count: int = 200, variant: str = "fp32", batch_size: int = 32
) -> dict:
    """Max abs difference of the ONNX embeddings against PyTorch's on `count` random products and categories."""
    model, processor = load_model(model_dir, device="cpu")
    encoder = OnnxEncoder.from_folder(model_dir, variant=variant)
    images, titles, attributes = random_products(count)
    given = {
        "image": ("images", images),
        "title": ("titles", titles),
        "attributes": ("attributes", attributes),
    }
    columns = dict(given[m] for m in model.config.product_modalities)
    categories = [" > ".join(t.split()[:3]) or "Mugs" for t in titles]
    torch_products = model.encode_products(**columns, batch_size=batch_size, show_progress_bar=False)
    torch_categories = model.encode_categories(categories, batch_size=batch_size, show_progress_bar=False)
    onnx_products = encoder.encode_products(**columns, batch_size=batch_size)
    onnx_categories = encoder.encode_categories(categories, batch_size=batch_size)
    return {
        "variant": variant,
        "count": count,
        "products_max_abs_diff": float(np.abs(onnx_products - torch_products).max()),
        "categories_max_abs_diff": float(np.abs(onnx_categories - torch_categories).max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a CLIP-ITA model folder (onnx/ is written into it)")
    parser.add_argument(
        "--int8",
        choices=[*INT8_METHODS, "none"],
        default=DEFAULT_INT8_METHOD,
        help="how the int8 variant is made: " + "; ".join(f"{k}: {v}" for k, v in INT8_METHODS.items()),
    )
    parser.add_argument("--parity", type=int, default=200, help="products and categories compared (0: none)")
    args = parser.parse_args(argv)

    def work() -> None:
        manifest = export_onnx(args.model, int8=None if args.int8 == "none" else args.int8)
        if args.parity:
            manifest["parity"] = [parity(args.model, args.parity, v) for v in manifest["files"]]
            write_json(Path(args.model) / ONNX_DIR / MANIFEST, manifest)
        print(json.dumps(manifest, indent=1))

    return run_command(work)  # a missing or truncated model folder: one line, exit status 2


if __name__ == "__main__":
    sys.exit(main())
