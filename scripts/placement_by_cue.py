"""Why new product types are misplaced on the hard catalogue: middle-level placement (top-1 among the middle
nodes, each node's own score) of the test products whose leaf training never saw, split by whether their
attributes carry their group's attribute (the one cue a new type shares with its group), and the same
products with their titles removed.

    python scripts/placement_by_cue.py --dataset outputs/ablation_tree_1600/data/hard \
        --model outputs/ablation_tree_1600/hard/broad-dropout-s0 [--model ...]
"""

from __future__ import annotations

import argparse

import numpy as np

from clipita.catalogue import HARD_LEAVES
from clipita.data import load_catalogue


def group_attribute_keys() -> dict[tuple[str, str], str]:
    """(root, group) -> the key of the group's attribute ("food contact", ...)."""
    return {leaf.path[:2]: leaf.context[0][0] for leaf in HARD_LEAVES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a catalogue made with --layout hard")
    parser.add_argument("--model", action="append", required=True, help="a trained model folder (repeatable)")
    args = parser.parse_args(argv)
    from transformers import AutoModel

    data = load_catalogue(args.dataset)
    seen = {tuple(path) for path in data["train"]["category"]}
    test = data["test"]
    rows = test.select([i for i, path in enumerate(test["category"]) if tuple(path) not in seen])
    keys = group_attribute_keys()
    groups = sorted({tuple(path[:2]) for path in data["train"]["category"]})
    truth = np.array([groups.index(tuple(path[:2])) for path in rows["category"]])
    has_cue = np.array(
        [
            any(a.lower().startswith(keys[tuple(path[:2])] + ":") for a in attributes)
            for path, attributes in zip(rows["category"], rows["attributes"])
        ]
    )
    print(
        f"{len(rows)} test products of leaves unseen in training; {has_cue.sum()} carry their group's attribute"
    )
    images = list(rows["image"])  # decoded once, encoded by every model
    for folder in args.model:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        nodes = model.encode_categories([list(g) for g in groups], show_progress_bar=False)
        full = model.encode_products(images, rows["title"], rows["attributes"], show_progress_bar=False)
        untitled = model.encode_products(
            images, [""] * len(rows), rows["attributes"], show_progress_bar=False
        )
        right = (full @ nodes.T).argmax(1) == truth
        right_untitled = (untitled @ nodes.T).argmax(1) == truth
        print(
            f"{folder}: placed {right.mean():.3f}; with the group's attribute {right[has_cue].mean():.3f}, "
            f"without {right[~has_cue].mean():.3f}; titles removed {right_untitled.mean():.3f}"
        )


if __name__ == "__main__":
    main()
