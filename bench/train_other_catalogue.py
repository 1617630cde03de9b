"""Do train.py's defaults learn on a catalogue they were not designed on?

Builds a catalogue unlike the embedded one: a random tree of 1,000+ leaves with made-up names at depths
2 to 5, 96 px images whose root, second level and leaf set background, shape and colour, titles and
attributes that mention the category only some of the time. Then trains with train.py's default settings
(only the run length is set here) and prints validation P@10 / mAP@10 before training and at the best
evaluation, with the machine.

    python bench/train_other_catalogue.py            # 8,000 products, 1,200+ leaves, the default run length
    python bench/train_other_catalogue.py --quick    # 3,000 products, 1,000+ leaves, 200 steps
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py: before torch loads

if __package__:  # imported: python -m bench.train_other_catalogue, or the tests
    from bench import _machine
else:  # run as a script, python bench/train_other_catalogue.py: its folder is on sys.path
    import _machine

SYLLABLES = ["ka", "lo", "mi", "ran", "tu", "vek", "zor", "bel", "dri", "fen", "gal", "hos", "ith", "jun", "qua",
             "sel", "tor", "ulm", "wen", "yar", "pex", "nol", "cri", "dax"]  # fmt: skip
SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "cross", "ring", "bars", "dots")


def made_up_name(rng: np.random.Generator, words: int) -> str:
    return " ".join(
        "".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4)))).capitalize() for _ in range(words)
    )


def random_tree(rng: np.random.Generator, min_leaves: int) -> list[list[str]]:
    """Leaf paths of a random tree: 14 roots, 2-7 children per node, leaves at depths 2 to 5."""
    leaves: list[list[str]] = []
    frontier = [[made_up_name(rng, 1)] for _ in range(14)]
    while frontier:
        path = frontier.pop()
        for _ in range(int(rng.integers(2, 8))):
            child = [*path, made_up_name(rng, int(rng.integers(1, 3)))]
            stop = len(child) >= 5 or (len(child) >= 2 and rng.random() < 0.45)
            (leaves if stop else frontier).append(child)
    if len(leaves) < min_leaves:
        return random_tree(rng, min_leaves)
    return leaves


def _stable(text: str, salt: str) -> np.random.Generator:
    """A generator fixed by the text (a node's look must not change between products or runs)."""
    return np.random.default_rng(zlib.crc32(f"{salt}:{text}".encode()))


def draw_product(path: list[str], rng: np.random.Generator, size: int) -> Image.Image:
    """Root -> background hue, second level -> shape, leaf -> colour and stripe angle; position and size jitter."""
    background = _stable(path[0], "bg").integers(150, 256, 3)
    shape = SHAPES[int(_stable(" > ".join(path[:2]), "shape").integers(len(SHAPES)))]
    leaf = _stable(" > ".join(path), "leaf")
    colour, angle = tuple(int(v) for v in leaf.integers(0, 200, 3)), int(leaf.integers(0, 4))
    image = Image.new("RGB", (size, size), tuple(int(v + rng.integers(-20, 21)) for v in background))
    draw = ImageDraw.Draw(image)
    scale = rng.uniform(0.45, 0.8) * size
    x0, y0 = rng.uniform(0, size - scale, 2)
    box = (x0, y0, x0 + scale, y0 + scale)
    cx, cy = x0 + scale / 2, y0 + scale / 2
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x0, y0 + scale), (x0 + scale, y0 + scale)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x0 + scale, cy), (cx, y0 + scale), (x0, cy)], fill=colour)
    elif shape == "cross":
        draw.rectangle((cx - scale / 6, y0, cx + scale / 6, y0 + scale), fill=colour)
        draw.rectangle((x0, cy - scale / 6, x0 + scale, cy + scale / 6), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(scale / 6)))
    elif shape == "bars":
        for k in range(3):
            draw.rectangle((x0 + k * scale / 3, y0, x0 + k * scale / 3 + scale / 5, y0 + scale), fill=colour)
    else:
        for k in range(9):
            px, py = x0 + (k % 3 + 0.5) * scale / 3, y0 + (k // 3 + 0.5) * scale / 3
            draw.ellipse((px - scale / 10, py - scale / 10, px + scale / 10, py + scale / 10), fill=colour)
    stripe = tuple(255 - c for c in colour)
    for k in range(1, 4):
        t = k * scale / 4
        line = [(x0 + t, y0), (x0 + t, y0 + scale)] if angle % 2 else [(x0, y0 + t), (x0 + scale, y0 + t)]
        draw.line(line, fill=stripe, width=max(1, size // 48))
    return image


def build_catalogue(folder: Path, num_products: int, min_leaves: int, image_size: int, seed: int) -> dict:
    """Save the catalogue with `DatasetDict.save_to_disk` (train / validation / test); returns its shape."""
    from datasets import Dataset, DatasetDict, Features, List, Value
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    leaves = random_tree(rng, min_leaves)
    features = Features(
        {"product_id": Value("string"), "image": ImageFeature(), "title": Value("string"),
         "attributes": List(Value("string")), "category": List(Value("string"))}
    )  # fmt: skip
    brands = [made_up_name(rng, 1) for _ in range(40)]
    splits: dict[str, dict[str, list]] = {
        s: {name: [] for name in features} for s in ("train", "validation", "test")
    }
    for i in range(num_products):
        path = leaves[int(rng.integers(len(leaves)))] if i >= len(leaves) else leaves[i]
        words = [str(rng.choice(brands)), made_up_name(rng, 1).lower()]
        if rng.random() < 0.7:
            words.append(path[-1].lower())  # titles name the product type often, not always
        rng.shuffle(words)
        attributes = [f"colour: {made_up_name(_stable(' > '.join(path), 'c'), 1).lower()}"]
        if rng.random() < 0.5:
            attributes.append(f"line: {path[-2].lower()}")
        attributes.append(f"size: {int(rng.integers(1, 60))} cm")
        split = "train" if rng.random() < 0.8 else ("validation" if rng.random() < 0.5 else "test")
        row = splits[split]
        row["product_id"].append(f"o{i:06d}")
        row["image"].append(draw_product(path, rng, image_size))
        row["title"].append(" ".join(words))
        row["attributes"].append(attributes)
        row["category"].append(path)
    DatasetDict({s: Dataset.from_dict(rows, features=features) for s, rows in splits.items()}).save_to_disk(
        str(folder)
    )
    depths = [len(p) for p in leaves]
    return {
        "products": num_products,
        "leaves": len(leaves),
        "nodes": len({tuple(p[: d + 1]) for p in leaves for d in range(len(p))}),
        "depths": {str(d): depths.count(d) for d in sorted(set(depths))},
        "image_size": image_size,
        "split_sizes": {s: len(rows["product_id"]) for s, rows in splits.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller catalogue and a short run")
    parser.add_argument("--work_dir", default="runs/other_catalogue")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max_steps", type=int, default=None, help="default: train.py's run length (200 with --quick)"
    )
    options = parser.parse_args()
    import torch

    from clipita.training import parse_args, train

    work = Path(options.work_dir)
    num_products, min_leaves = (3000, 1000) if options.quick else (8000, 1200)
    started = time.perf_counter()
    shape = build_catalogue(work / "catalogue", num_products, min_leaves, 96, options.seed)
    built = time.perf_counter() - started
    print(f"catalogue: {json.dumps(shape)} (built in {built:.0f} s)")

    flags = [
        "--dataset",
        str(work / "catalogue"),
        "--output_dir",
        str(work / "model"),
        "--overwrite_output_dir",
    ]
    max_steps = options.max_steps or (200 if options.quick else None)
    if max_steps:
        flags += ["--max_steps", str(max_steps), "--eval_steps", str(max(1, max_steps // 3))]
    args = parse_args(flags)
    metrics = train(args)

    validation = metrics["validation"]
    print(f"\n{_machine.describe_machine(torch.device('cpu'))}\n{_machine.command_line()}")
    print(f"settings: train.py defaults; category level {args.category_level}; {metrics['train']['steps']} steps; "
          f"{metrics['train']['samples_per_second']} samples/s; wall {metrics['train']['wall_seconds']} s")  # fmt: skip
    print("| validation (all categories) | step | P@10 | mAP@10 | seen mAP@10 | unseen mAP@10 | queries |")
    print("|---|---|---|---|---|---|---|")
    for name in ("step_0", "best"):
        entry = validation[name]
        if entry is None:
            continue
        seen, unseen = entry["seen"].get("mAP@10"), entry["unseen"].get("mAP@10")
        print(
            f"| {name} | {entry['step']} | {100 * entry['overall']['P@10']:.2f} | {100 * entry['overall']['mAP@10']:.2f} "
            f"| {'-' if seen is None else f'{100 * seen:.2f}'} | {'-' if unseen is None else f'{100 * unseen:.2f}'} "
            f"| {entry['num_queries']['overall']} |"
        )
    before, best = (
        validation["step_0"]["overall"]["mAP@10"],
        (validation["best"] or validation["last"])["overall"]["mAP@10"],
    )
    print(
        f"mAP@10 {100 * before:.2f} -> {100 * best:.2f} ({best / max(before, 1e-9):.1f}x the untrained model)"
    )


if __name__ == "__main__":
    main()
