"""What each cue of the hard catalogue carries for a model, two reports:

- placement: middle-level placement (top-1 among the middle nodes, each node's own score) of the test
  products whose leaf training never saw, split by whether their attributes carry their group's attribute
  (the one cue a new type shares with its group), and the same products with their titles removed;
- seen leaves: mAP@10 of the leaves seen in training, by the cue that tells a leaf from its siblings (the
  image's material, an attribute such as "audience: kids", a title phrase such as "Vintage"), and for the
  attribute-cue leaves the mean cosine of their test products to their own leaf with and without that
  attribute (how much the model reads it).

    python scripts/hard_cues.py --dataset outputs/ablation_tree_1600/data/hard \
        --model outputs/ablation_tree_1600/hard/broad-dropout-s0 [--model ...]
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import numpy as np

from clipita.catalogue import HARD_LEAVES
from clipita.data import load_catalogue
from clipita.metrics import metric_module


def group_attribute_keys() -> dict[tuple[str, str], str]:
    """(root, group) -> the key of the group's attribute ("food contact", ...)."""
    return {leaf.path[:2]: leaf.context[0][0] for leaf in HARD_LEAVES}


def leaf_cues() -> dict[tuple[str, ...], tuple[str, str | None]]:
    """Leaf path -> (its cue: "image", "attribute" or "title"; the attribute's key for an attribute cue)."""
    return {leaf.path: (leaf.cue, leaf.hidden[0] if leaf.hidden else None) for leaf in HARD_LEAVES}


def without_key(attributes: list[str], key: str) -> list[str]:
    return [a for a in attributes if not a.lower().startswith(key + ":")]


class TestProducts(NamedTuple):
    """The test split's columns, read (images decoded) once and encoded by every model."""

    paths: list[tuple[str, ...]]
    images: list
    titles: list[str]
    attributes: list[list[str]]

    def take(self, rows: list[int]) -> tuple[list, list[str], list[list[str]]]:
        return tuple([column[i] for i in rows] for column in (self.images, self.titles, self.attributes))


def placement(model, test: TestProducts, embeds: np.ndarray, groups: list, seen: set) -> str:
    rows = [i for i, path in enumerate(test.paths) if path not in seen]
    keys = group_attribute_keys()
    truth = np.array([groups.index(test.paths[i][:2]) for i in rows])
    images, _, attributes = test.take(rows)
    has_cue = np.array(
        [
            any(a.lower().startswith(keys[test.paths[i][:2]] + ":") for a in attrs)
            for i, attrs in zip(rows, attributes)
        ]
    )
    nodes = model.encode_categories([list(g) for g in groups], show_progress_bar=False)
    untitled = model.encode_products(images, [""] * len(rows), attributes, show_progress_bar=False)
    right = (embeds[rows] @ nodes.T).argmax(1) == truth
    right_untitled = (untitled @ nodes.T).argmax(1) == truth
    return (
        f"new-leaf products placed {right.mean():.3f} ({len(rows)}); with the group's attribute "
        f"{right[has_cue].mean():.3f} ({has_cue.sum()}), without {right[~has_cue].mean():.3f}; "
        f"titles removed {right_untitled.mean():.3f}"
    )


def seen_leaves(model, test: TestProducts, embeds: np.ndarray, seen: set) -> str:
    cues = leaf_cues()
    paths = test.paths
    leaves = sorted({p for p in paths if p in seen})
    relevant = np.array([[p == leaf for p in paths] for leaf in leaves])
    queries = model.encode_categories([list(leaf) for leaf in leaves], show_progress_bar=False)
    top = np.argsort(-(queries @ embeds.T), axis=1, kind="stable")[:, :10]
    ap = metric_module().per_query_scores(np.take_along_axis(relevant, top, 1), relevant.sum(1))["mAP@10"]
    kinds = np.array([cues[leaf][0] for leaf in leaves])
    parts = [f"seen leaves mAP@10 {ap.mean():.3f} ({len(leaves)})"]
    parts += [
        f"{k} cue {ap[kinds == k].mean():.3f} ({(kinds == k).sum()})" for k in ("image", "attribute", "title")
    ]
    rows = [i for i, p in enumerate(paths) if p in seen and cues[p][1]]
    own = queries[[leaves.index(paths[i]) for i in rows]]
    images, titles, attributes = test.take(rows)
    stripped = [without_key(a, cues[paths[i]][1]) for a, i in zip(attributes, rows)]
    no_cue = (model.encode_products(images, titles, stripped, show_progress_bar=False) * own).sum(1)
    with_cue = (embeds[rows] * own).sum(1)
    parts.append(
        f"attribute-cue products' cosine to their leaf {with_cue.mean():.3f}, without it {no_cue.mean():.3f}"
    )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a catalogue made with --layout hard")
    parser.add_argument("--model", action="append", required=True, help="a trained model folder (repeatable)")
    args = parser.parse_args(argv)
    from transformers import AutoModel

    data = load_catalogue(args.dataset)
    seen = {tuple(path) for path in data["train"]["category"]}
    groups = sorted({path[:2] for path in seen})
    split = data["test"]
    test = TestProducts(
        [tuple(p) for p in split["category"]],
        list(split["image"]),
        list(split["title"]),
        list(split["attributes"]),
    )
    for folder in args.model:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        embeds = model.encode_products(test.images, test.titles, test.attributes, show_progress_bar=False)
        print(
            f"{folder}:\n  {placement(model, test, embeds, groups, seen)}\n  {seen_leaves(model, test, embeds, seen)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
