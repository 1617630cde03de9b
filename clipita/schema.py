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
        # imported here: the processor brings torch and transformers, which processes that only read or
        # generate catalogues (the generator's spawned workers, `python -m clipita.data`) never need
        from processing_clipita import attribute_strings

        return attribute_strings(value)
    return [str(value)]


# Spellings of one attribute key or value, canonical -> variants: filters and stored attributes are compared
# after mapping every variant onto its canonical form. Small on purpose; extend it per catalogue with
# `synonym_table(extra)` (search.py query --synonyms FILE: a JSON object of this shape).
ATTRIBUTE_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "keys": {
        "colour": ("color", "colours", "colors"),
        "size": ("sizes",),
        "material": ("materials",),
    },
    "values": {"grey": ("gray",)},
}


def synonym_table(extra: Mapping | None = None) -> dict[str, dict[str, str]]:
    """{"keys" | "values": {variant: canonical}} from `ATTRIBUTE_SYNONYMS` plus `extra` (same shape:
    {"keys": {canonical: [variant, ...]}, "values": {...}}), all lower case."""
    table: dict[str, dict[str, str]] = {"keys": {}, "values": {}}
    for source in (ATTRIBUTE_SYNONYMS, extra or {}):
        if not isinstance(source, Mapping) or set(source) - set(table):
            raise ValueError(
                f'synonyms must be an object with "keys" and/or "values", got {sorted(source)!r}'
                if isinstance(source, Mapping)
                else f"synonyms must be a JSON object, got {type(source).__name__}"
            )
        for part, groups in source.items():
            if not isinstance(groups, Mapping):
                raise ValueError(f'synonyms "{part}" must map a canonical form to a list of variants')
            for canonical, variants in groups.items():
                if isinstance(variants, str) or not all(isinstance(v, str) for v in variants):
                    raise ValueError(
                        f'synonyms "{part}" -> {canonical!r}: variants must be a list of strings'
                    )
                for variant in (canonical, *variants):
                    table[part][variant.strip().lower()] = str(canonical).strip().lower()
    return table


def normalise_attribute(text: str, synonyms: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """'Color : Red ' -> 'colour: red': the form filters and stored attributes are compared in (case and
    spaces folded, key and value spellings mapped by `synonyms`, a `synonym_table`; default: the built-in)."""
    key, sep, value = text.partition(":")
    if not sep or not key.strip():
        raise ValueError(f"attribute {text!r} is not of the form 'key: value'")
    table = synonym_table() if synonyms is None else synonyms
    key, value = key.strip().lower(), value.strip().lower()
    return f"{table['keys'].get(key, key)}: {table['values'].get(value, value)}"


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
