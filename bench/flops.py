"""The limit: FLOPs per product and per category, and how close encoding gets to the machine's matmul FLOP/s.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and
attention, the CPU attention kernel added; one multiply-add = 2 FLOPs; elementwise work is not
counted; causal text attention is counted as full) for the default config and
for ViT-B/32, split by pass: image, title, the attributes (each through the text tower, then
projected and pooled) and the product head. The achieved FLOP/s of encoding (model forward alone,
and `encode_products` with its processor) are set against a square float32 matmul timed in turns
with them in the same run. Last line: forward FLOP/s / matmul FLOP/s, `ratio 0.31`.

    python bench/flops.py --quick
    python bench/flops.py --config vit-b-32 --device cuda
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

if __package__:  # imported: python -m bench.flops, or the tests
    from bench import _machine, common
else:  # run as a script, python bench/flops.py: its folder is on sys.path
    import _machine
    import common


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU one, which it would count as zero.
CPU_ATTENTION = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
EXTRA_FORMULAS = {CPU_ATTENTION: _cpu_attention_flops} if CPU_ATTENTION is not None else {}


def count_flops(run) -> int:
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        run()
    return counter.get_total_flops()


def flops_per_pass(
    model, processor, products, categories: list[str], device: torch.device
) -> dict[str, float]:
    """FLOPs per product of each pass of `get_product_features` (one batch of all `products`), and
    per category of `get_category_features`."""
    batch = {
        k: v.to(device)
        for k, v in processor(
            images=products.images, titles=products.titles, attributes=products.attributes
        ).items()
    }
    names = {k: v.to(device) for k, v in processor(categories=categories).items()}
    with torch.no_grad():
        counts = {
            # the towers as the product pass runs them (the last layer at the pooled token only)
            "image": count_flops(lambda: model._image_tower(batch["pixel_values"])),
            "title": count_flops(
                lambda: model._text_tower(batch["title_input_ids"], batch["title_attention_mask"])
            ),
            "attributes": count_flops(
                lambda: model.encode_attributes(
                    batch["attribute_input_ids"], batch["attribute_attention_mask"], batch["attribute_mask"]
                )
            ),
            "product": count_flops(lambda: model.get_product_features(**batch)),
            "category": count_flops(lambda: model.get_category_features(**names)),
        }
    per_product = {k: v / len(products) for k, v in counts.items() if k != "category"}
    per_product["heads"] = (
        per_product["product"] - per_product["image"] - per_product["title"] - per_product["attributes"]
    )
    per_product["category"] = counts["category"] / len(categories)
    return per_product


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument(
        "--dtype", choices=sorted(_machine.DTYPES), default="float32", help="model and matmul dtype"
    )
    parser.add_argument(
        "--count-configs",
        default=",".join(common.CONFIGS),
        help=f"comma-separated configs to count FLOPs of ({common.CONFIGS})",
    )
    parser.add_argument(
        "--count-products",
        type=int,
        default=None,
        help="products (and categories) to count on (4 quick, 8 full)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size for the FLOP/s")
    parser.add_argument(
        "--num-products", type=int, default=None, help="encoded per repeat (default: 32 quick, 256 full)"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="default: 3 quick, 5 full")
    parser.add_argument(
        "--matmul-size", type=int, default=None, help="side of the square matmul (1024 quick, 2048 full)"
    )
    args = parser.parse_args(argv)
    args.count_configs = [c.strip() for c in args.count_configs.split(",") if c.strip()]
    unknown = [c for c in args.count_configs if c not in common.CONFIGS]
    if unknown:
        parser.error(f"--count-configs: unknown {unknown}; choose from {common.CONFIGS}")
    args.num_products = args.num_products or (32 if args.quick else 256)
    args.count_products = args.count_products or (4 if args.quick else 8)
    args.matmul_size = args.matmul_size or (1024 if args.quick else 2048)
    args.repeats = args.repeats or (3 if args.quick else 5)
    if min(args.count_products, args.batch_size, args.num_products, args.repeats, args.matmul_size) < 1:
        parser.error("counts, sizes and repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    device = _machine.resolve_device(args.device)
    dtype = _machine.DTYPES[args.dtype]
    counted = common.synthetic_products(args.count_products, seed=args.seed)
    category_names = common.synthetic_category_names(args.count_products, seed=args.seed)
    tables, models = {}, {}
    for config in dict.fromkeys([*args.count_configs, args.config]):
        model, processor = common.build_model(config, seed=args.seed)
        model = model.to(device=device, dtype=dtype).eval()
        models[config] = (model, processor)
        if config in args.count_configs:
            tables[config] = (
                sum(p.numel() for p in model.parameters()),
                flops_per_pass(model, processor, counted, category_names, device),
            )
        if config != args.config:
            del models[config]

    model, processor = models[args.config]
    products = common.synthetic_products(args.num_products, seed=args.seed)
    batches = [
        {
            k: v.to(device)
            for k, v in processor(images=b.images, titles=b.titles, attributes=b.attributes).items()
        }
        for b in (products.slice(i, i + args.batch_size) for i in range(0, len(products), args.batch_size))
    ]

    def forward():
        return [model.get_product_features(**batch) for batch in batches]

    a = torch.randn(args.matmul_size, args.matmul_size, device=device, dtype=dtype)
    b = torch.randn(args.matmul_size, args.matmul_size, device=device, dtype=dtype)
    with torch.no_grad():
        workload_flops = count_flops(forward)
        seconds = _machine.interleaved_medians(
            {
                "forward": forward,
                "encode_products": lambda: model.encode_products(
                    products.images,
                    products.titles,
                    products.attributes,
                    batch_size=args.batch_size,
                    processor=processor,
                    show_progress_bar=False,
                ),
                "matmul": lambda: a @ b,
            },
            device,
            args.warmup,
            args.repeats,
        )
    matmul = 2 * args.matmul_size**3 / seconds["matmul"]

    print(
        f"== flops: counted on {args.count_products} products ({common.ATTRIBUTES_PER_PRODUCT} attributes each) and "
        f"{args.count_products} category names; FLOP/s of config {args.config}, {args.dtype}, batch {args.batch_size}, "
        f"{args.num_products} products, warmup {args.warmup}, median of {args.repeats}"
    )
    print(_machine.command_line())
    print(_machine.describe_machine(device))
    print("FLOPs per product (forward; FlopCounterMode: matmul/conv/attention, 1 multiply-add = 2 FLOPs)")
    columns = ("image", "title", "attributes", "heads", "product", "category")
    print(f"{'config':10}{'params':>9}" + "".join(f"{c:>12}" for c in columns[:-1]) + f"{'per category':>14}")
    for config, (params, per_pass) in tables.items():
        print(
            f"{config:10}{params / 1e6:8.1f}M"
            + "".join(f"{_machine.human(per_pass[c]):>12}" for c in columns[:-1])
            + f"{_machine.human(per_pass['category']):>14}"
        )
    per_product = workload_flops / args.num_products
    achieved_forward = workload_flops / seconds["forward"]
    achieved_e2e = workload_flops / seconds["encode_products"]
    print(
        f"{args.config}, encoding {args.num_products} products: {_machine.human(per_product, 'FLOP')} per product "
        f"(as batched, padding included)"
    )
    print(
        f"  model forward:    {args.num_products / seconds['forward']:10.1f} products/s = {_machine.human(achieved_forward, 'FLOP/s')}"
    )
    print(
        f"  encode_products:  {args.num_products / seconds['encode_products']:10.1f} products/s = "
        f"{_machine.human(achieved_e2e, 'FLOP/s')} (processor included)"
    )
    print(
        f"machine: {args.matmul_size}x{args.matmul_size} {args.dtype} matmul = {_machine.human(matmul, 'FLOP/s')}"
    )
    print(
        f"utilisation: forward {achieved_forward / matmul:.1%}, encode_products {achieved_e2e / matmul:.1%}"
    )
    ratio = achieved_forward / matmul
    print(f"ratio {ratio:.3g}")
    return ratio


if __name__ == "__main__":
    main()
