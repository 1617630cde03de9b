"""The products' images for the gallery: the catalogue an index was built from, opened once, and each
product's stored image bytes written once into a cache folder."""

from __future__ import annotations

import inspect
import io
import logging
import os
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, ImageDraw

logger = logging.getLogger("clipita.space")


class ProductImages:
    """product_id -> an image file the gallery can serve, from the catalogue the index was built from.

    Image cells stay undecoded: the stored bytes are written once per product into a cache folder, so a
    query costs no decode / re-encode. A product without a readable image gets a placeholder (counted).
    """

    def __init__(self, catalogue: datasets.Dataset | datasets.DatasetDict, cache_dir: str | os.PathLike):
        parts = list(catalogue.values()) if isinstance(catalogue, datasets.DatasetDict) else [catalogue]
        for part in parts:
            missing = {"product_id", "image"} - set(part.column_names)
            if missing:
                raise ValueError(
                    f"the catalogue lacks column(s) {sorted(missing)}: it is not in the canonical schema"
                )
        self._parts = [part.cast_column("image", datasets.Image(decode=False)) for part in parts]
        self._rows = {
            str(pid): (p, row)
            for p, part in enumerate(self._parts)
            for row, pid in enumerate(part["product_id"])
        }
        self._cache = Path(cache_dir)
        self._cache.mkdir(parents=True, exist_ok=True)
        self._paths: dict[str, str] = {}
        self.broken: list[str] = []

    def __contains__(self, product_id: str) -> bool:
        return product_id in self._rows

    def path(self, product_id: str) -> str:
        if product_id not in self._paths:
            self._paths[product_id] = self._write(product_id)
        return self._paths[product_id]

    def _write(self, product_id: str) -> str:
        try:
            part, row = self._rows[product_id]
            cell = self._parts[part][row]["image"] or {}
            data = cell.get("bytes") or Path(cell["path"]).read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                suffix = (image.format or "png").lower()
            target = self._cache / f"{len(self._paths):06d}.{suffix}"
            target.write_bytes(data)
            return str(target)
        except Exception as err:  # one broken product image never breaks an answer
            self.broken.append(product_id)
            logger.warning(
                "no image for product %s (%d products so far): %s: %s",
                product_id,
                len(self.broken),
                type(err).__name__,
                err,
            )
            return self._placeholder()

    def _placeholder(self) -> str:
        target = self._cache / "no-image.png"
        if not target.exists():
            image = Image.new("RGB", (128, 128), (235, 235, 235))
            ImageDraw.Draw(image).text((30, 58), "no image", fill=(120, 120, 120))
            image.save(target)
        return str(target)


def open_catalogue(source: Any, recorded: dict | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """The catalogue whose images the gallery shows.

    `source`: a catalogue object, or what `clipita.data.load_catalogue` reads ("demo", a folder, a file, a
    Hub dataset id). `recorded`: the index manifest's `dataset` entry; its split and loader options
    (preset, column names, ...) are reused, so product ids come out as they did when the index was built.
    """
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return source
    from clipita.data import load_catalogue

    accepted = inspect.signature(load_catalogue).parameters.keys() - {"source", "streaming", "return_report"}
    options = {key: value for key, value in (recorded or {}).items() if key in accepted}
    return load_catalogue(str(source), **options)
