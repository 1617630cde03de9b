"""The canonical catalogue schema: columns, splits, and how raw attribute / category cells are read.

The bottom of the project's dependency order: it imports no other `clipita` module. Everything that
reads or writes a catalogue (generator, loader, training, evaluation, index, Space) takes its column
names and parsing rules from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import datasets

from processing_clipita import attribute_strings

SPLITS = ("train", "validation", "test")
FEATURES = datasets.Features(
    {
        "product_id": datasets.Value("string"),
        "image": datasets.Image(),
        "title": datasets.Value("string"),
        "attributes": datasets.List(datasets.Value("string")),
        "category": datasets.List(datasets.Value("string")),
    }
)
CANONICAL_COLUMNS = tuple(FEATURES)
PATH_SEPARATOR = " > "

# Model modality -> (catalogue column, `CLIPITAModel.encode_products` argument).
MODALITY_COLUMNS = {
    "image": ("image", "images"),
    "title": ("title", "titles"),
    "attributes": ("attributes", "attributes"),
}


def modality_columns(modalities: Iterable[str]) -> list[str]:
    """Columns of the canonical schema that a model with these product modalities reads."""
    return [MODALITY_COLUMNS[m][0] for m in modalities]


def parse_attributes(value: Any) -> list[str]:
    """A list of "key: value" strings from a list, a dict, a JSON string of either, or "a: 1; b: 2"."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[{":
            try:
                return parse_attributes(json.loads(text))
            except json.JSONDecodeError:
                pass
        return [part.strip() for part in text.split(";") if part.strip()]
    if isinstance(value, Mapping) or isinstance(value, Iterable):
        return attribute_strings(value)
    return [str(value)]


def normalise_attribute(text: str) -> str:
    """'Colour : Red ' -> 'colour: red': the form filters and stored attributes are compared in."""
    key, sep, value = text.partition(":")
    if not sep or not key.strip():
        raise ValueError(f"attribute {text!r} is not of the form 'key: value'")
    return f"{key.strip().lower()}: {value.strip().lower()}"


def parse_category(value: Any, separator: str | None = PATH_SEPARATOR) -> list[str]:
    """The category path root -> leaf, from a list (or its JSON) or a separator-joined string; empty parts dropped."""
    if value is None:
        return []
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, str):
        parts = value.split(separator) if separator else [value]
    else:
        parts = [str(v) for v in value if v is not None]
    return [p.strip() for p in parts if p.strip()]


def path_text(path: Iterable[str]) -> str:
    """A category path as one query string, "Home > Kitchen > Mugs" (the processor reads it as a path)."""
    return PATH_SEPARATOR.join(path)
