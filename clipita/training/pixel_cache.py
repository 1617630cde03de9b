"""Processed pixels kept between epochs: each training image is resized and normalised once.

The training loader decodes every product image and runs the image processor (resize, crop, normalise)
on it each epoch, with the same result each time. `PixelMemo` wraps the processor's image processor for
the training collator and keeps each image's `pixel_values` row, keyed by a hash of the decoded image
(mode, size and pixels), up to a memory budget; images past the budget are processed as before. The
result is the same tensor, so training is unchanged; once the towers are cached too
(`--cache_tower_features`), this resize was most of an epoch's time.

The memo lives in the process that collates: the main process with `--dataloader_num_workers 0` (the
default); a worker process's memo ends with its epoch unless the workers persist.
"""

from __future__ import annotations

import copy
import hashlib

import torch
from PIL import Image


def image_key(image: Image.Image) -> str:
    digest = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class PixelMemo:
    """Calls the wrapped image processor only for images it has not seen; `hits` / `misses` count images."""

    def __init__(self, image_processor, max_bytes: int):
        self.image_processor = image_processor
        self.max_bytes = max_bytes
        self.rows: dict[str, torch.Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    def __call__(self, images, return_tensors: str = "pt", **kwargs):
        if kwargs or return_tensors != "pt":
            return self.image_processor(images=images, return_tensors=return_tensors, **kwargs)
        images = list(images)
        keys = [image_key(image) for image in images]
        new = {key: image for key, image in zip(keys, images) if key not in self.rows}
        computed = {}
        if new:
            pixels = self.image_processor(images=list(new.values()), return_tensors="pt")["pixel_values"]
            computed = dict(zip(new, pixels))
            for key, row in computed.items():
                if self.bytes + row.numel() * row.element_size() <= self.max_bytes:
                    self.rows[key] = row
                    self.bytes += row.numel() * row.element_size()
        self.misses += len(new)
        self.hits += len(images) - len(new)
        rows = [self.rows[key] if key in self.rows else computed[key] for key in keys]
        return {"pixel_values": torch.stack(rows)}


def with_pixel_memo(processor, max_bytes: int):
    """A shallow copy of `processor` whose image processor is memoised (the original stays as it was: it
    is the one saved with the model)."""
    if max_bytes <= 0 or getattr(processor, "image_processor", None) is None:
        return processor
    memoised = copy.copy(processor)
    memoised.image_processor = PixelMemo(processor.image_processor, max_bytes)
    return memoised
