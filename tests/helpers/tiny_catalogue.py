"""A tiny catalogue in the canonical schema, built in memory: a 3-level tree whose root sets an image's
shape and whose leaf sets its colour, so a few training steps can learn something."""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict
from PIL import Image as PILImage
from PIL import ImageDraw

from clipita.schema import FEATURES

ROOTS = ["Home", "Fashion", "Sports"]
MIDS = ["Indoor", "Outdoor"]
LEAVES = ["Red Things", "Blue Things"]
COLOURS = {"Red Things": (220, 40, 40), "Blue Things": (40, 60, 220)}


def leaf_paths() -> list[list[str]]:
    return [[root, f"{root} {mid}", leaf] for root in ROOTS for mid in MIDS for leaf in LEAVES]


def product_image(path: list[str], rng: np.random.Generator, size: int = 32) -> PILImage.Image:
    image = PILImage.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 255, 3)))
    draw = ImageDraw.Draw(image)
    box = (size // 5, size // 5, size - size // 5, size - size // 5)
    colour = COLOURS[path[-1]]
    shape = ROOTS.index(path[0])
    if shape == 0:
        draw.ellipse(box, fill=colour)
    elif shape == 1:
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=colour)
    return image


def rows(n: int, seed: int, size: int = 32) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    paths = leaf_paths()
    out = {name: [] for name in FEATURES}
    for i in range(n):
        path = paths[int(rng.integers(len(paths)))]
        out["product_id"].append(f"p{seed}-{i}")
        out["image"].append(product_image(path, rng, size))
        out["title"].append(f"{path[-1].split()[0].lower()} {path[0].lower()} item {i % 7}")
        out["attributes"].append(
            [f"colour: {path[-1].split()[0].lower()}", f"room: {path[1].split()[-1].lower()}"][: i % 3]
        )
        out["category"].append(path)
    return out


def tiny_catalogue(num_train: int = 48, num_validation: int = 24, size: int = 32) -> DatasetDict:
    return DatasetDict(
        {
            "train": Dataset.from_dict(rows(num_train, 0, size), features=FEATURES),
            "validation": Dataset.from_dict(rows(num_validation, 1, size), features=FEATURES),
        }
    )
