"""Products/s of CLIP-ITA's `encode_products` against plain CLIP doing the same tower passes.

Both sides encode the same synthetic products in the same run: the image through the vision tower,
the title and every attribute string through the text tower. CLIP-ITA adds its processor (RGB
conversion, attribute padding), the attribute projection and pooling and the product head; the
ratio (CLIP-ITA / plain) is that overhead. Processing (image resize, tokenisation) and the model
forward are also timed apart, as on a CPU the processing can dominate. All are timed in
interleaved rounds; a ratio is the median of the rounds' ratios. Last line: `ratio 0.97`.

    python bench/encode_throughput.py --quick
    python bench/encode_throughput.py --config vit-b-32 --device cuda
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

if __package__:  # imported: python -m bench.encode_throughput, or the tests
    from bench import _machine, common
else:  # run as a script, python bench/encode_throughput.py: its folder is on sys.path
    import _machine
    import common


class PlainCLIP:
    """What a user of a plain `CLIPModel` runs for the same product: its image processor and tokenizer,
    then get_image_features on the image and get_text_features on the title and on each attribute."""

    def __init__(self, clip, processor, device: torch.device):
        self.clip, self.image_processor, self.tokenizer, self.device = (
            clip,
            processor.image_processor,
            processor.tokenizer,
            device,
        )

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def process(self, products: common.Products) -> dict[str, object]:
        return {
            "pixel_values": self.image_processor(images=products.images, return_tensors="pt")["pixel_values"],
            "title": self.tokenize(products.titles),
            "attributes": self.tokenize([a for product in products.attributes for a in product]),
        }

    def forward(self, inputs: dict[str, object]) -> list[torch.Tensor]:
        image = self.clip.get_image_features(
            pixel_values=inputs["pixel_values"].to(self.device)
        ).pooler_output
        texts = [
            self.clip.get_text_features(
                **{k: v.to(self.device) for k, v in inputs[key].items()}
            ).pooler_output
            for key in ("title", "attributes")
        ]
        return [F.normalize(t, dim=-1).float().cpu() for t in [image, *texts]]

    def encode_categories(self, names: list[str], batch_size: int) -> list[torch.Tensor]:
        out = []
        for start in range(0, len(names), batch_size):
            inputs = {
                k: v.to(self.device) for k, v in self.tokenize(names[start : start + batch_size]).items()
            }
            out.append(F.normalize(self.clip.get_text_features(**inputs).pooler_output, dim=-1).float().cpu())
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument(
        "--dtype", choices=sorted(_machine.DTYPES), default="float32", help="model weights' dtype"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--num-products", type=int, default=None, help="per repeat (default: 64 quick, 512 full)"
    )
    parser.add_argument("--num-categories", type=int, default=None, help="default: as many as products")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes over all products first")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 3 quick, 7 full)")
    args = parser.parse_args(argv)
    args.num_products = args.num_products or (64 if args.quick else 512)
    args.num_categories = args.num_categories or args.num_products
    args.repeats = args.repeats or (3 if args.quick else 7)
    if min(args.batch_size, args.num_products, args.num_categories, args.repeats) < 1 or args.warmup < 0:
        parser.error("batch size, counts and repeats must be positive, warmup non-negative")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    device = _machine.resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, processor = common.build_model(args.config, seed=args.seed)
    model = model.to(device=device, dtype=_machine.DTYPES[args.dtype]).eval()
    plain = PlainCLIP(model.clip, processor, device)
    products = common.synthetic_products(args.num_products, seed=args.seed)
    categories = common.synthetic_category_names(args.num_categories, seed=args.seed)
    batches = [products.slice(i, i + args.batch_size) for i in range(0, len(products), args.batch_size)]

    def process_clipita():
        return [processor(images=b.images, titles=b.titles, attributes=b.attributes) for b in batches]

    clipita_inputs, plain_inputs = process_clipita(), [plain.process(b) for b in batches]

    def forward_clipita():
        return [
            model.get_product_features(**{k: v.to(device) for k, v in inputs.items()}).float().cpu()
            for inputs in clipita_inputs
        ]

    runs = {
        "clipita_e2e": lambda: model.encode_products(
            products.images,
            products.titles,
            products.attributes,
            batch_size=args.batch_size,
            processor=processor,
            show_progress_bar=False,
        ),
        "plain_e2e": lambda: [plain.forward(plain.process(b)) for b in batches],
        "clipita_processing": process_clipita,
        "plain_processing": lambda: [plain.process(b) for b in batches],
        "clipita_forward": forward_clipita,
        "plain_forward": lambda: [plain.forward(inputs) for inputs in plain_inputs],
        "clipita_categories": lambda: model.encode_categories(
            categories, batch_size=args.batch_size, processor=processor, show_progress_bar=False
        ),
        "plain_categories": lambda: plain.encode_categories(categories, args.batch_size),
    }
    with torch.no_grad():
        times = _machine.interleaved_times(runs, device, args.warmup, args.repeats)
    seconds = {name: statistics.median(t) for name, t in times.items()}

    def round_ratios(key: str) -> list[float]:
        """CLIP-ITA / plain speed in each round: both ran back to back, under the same load."""
        return [p / c for p, c in zip(times[f"plain_{key}"], times[f"clipita_{key}"])]

    title_tokens = torch.cat([i["title_attention_mask"].sum(1) for i in clipita_inputs]).float().mean()
    attribute_tokens = (
        torch.cat([i["attributes"]["attention_mask"].sum(1) for i in plain_inputs]).float().mean()
    )
    print(
        f"== encode_throughput: config {args.config}, {args.dtype}, batch {args.batch_size}, "
        f"{args.num_products} products ({common.ATTRIBUTES_PER_PRODUCT} attributes each), "
        f"{args.num_categories} categories, warmup {args.warmup}, median of {args.repeats}"
    )
    print(_machine.command_line())
    print(_machine.describe_machine(device))
    print(
        f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M CLIP-ITA, "
        f"{sum(p.numel() for p in model.clip.parameters()) / 1e6:.1f} M in the CLIP towers; "
        f"tokens per title {title_tokens:.1f}, per attribute {attribute_tokens:.1f}"
    )
    print(f"{'':28}{'CLIP-ITA':>12}{'plain CLIP':>12}{'ratio':>8}   (ratio: median over rounds, range)")
    for label, key, count in (
        ("products/s end-to-end", "e2e", args.num_products),
        ("products/s processing only", "processing", args.num_products),
        ("products/s forward only", "forward", args.num_products),
        ("categories/s end-to-end", "categories", args.num_categories),
    ):
        ours, theirs = count / seconds[f"clipita_{key}"], count / seconds[f"plain_{key}"]
        ratios = round_ratios(key)
        print(
            f"{label:28}{ours:12.1f}{theirs:12.1f}{statistics.median(ratios):8.2f}"
            f"   ({min(ratios):.2f}-{max(ratios):.2f})"
        )
    for side in ("clipita", "plain"):
        share = seconds[f"{side}_processing"] / (seconds[f"{side}_processing"] + seconds[f"{side}_forward"])
        print(f"processing share of processing + forward, {side}: {share:.0%}")
    ratio = statistics.median(round_ratios("e2e"))
    print(f"ratio {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
