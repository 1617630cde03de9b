"""Frozen towers computed once: their outputs stored by content, on disk next to the run.

A frozen CLIP tower is a pure function of its input, so every epoch after the first would recompute the
same image and text embeddings. `TowerFeatureCache` memoises the frozen towers' projected outputs
(`pooler_output` of the model's `_image_tower` / `_text_tower`): the key is a hash of the tower's input
(a processed image's pixel values; a text's real token ids), and the folder is named by a fingerprint of
the frozen towers' weights. A resumed or repeated run on the same data and weights reads the features
back; changed data misses and is computed, changed weights get another folder. Heads, the attribute
projection and the temperature still train on every step, from the cached features.

What it cannot combine with: unfrozen towers (their outputs change each step) and towers that draw
dropout in training (their outputs are random); random image augmentation would make every epoch's
pixels new keys (this pipeline has none: broad dropout greys an image deterministically, a key like any
other). The trainer refuses the first two with one line.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.modeling_outputs import BaseModelOutputWithPooling

from clipita.fileio import write_atomic

logger = logging.getLogger(__name__)

TOWERS = {"image": ("vision_model", "visual_projection"), "text": ("text_model", "text_projection")}
FOLDER = "tower_features"


def frozen_kinds(model) -> list[str]:
    """The towers ("image", "text") whose every parameter is frozen."""
    clip = model.clip
    return [
        kind
        for kind, modules in TOWERS.items()
        if not any(p.requires_grad for name in modules for p in getattr(clip, name).parameters())
    ]


def check_cacheable(model) -> list[str]:
    """The frozen towers to cache; a one-line error naming what makes caching impossible."""
    kinds = frozen_kinds(model)
    if not kinds:
        raise ValueError(
            "--cache_tower_features needs a frozen tower (--freeze_towers, --freeze_vision or --freeze_text): "
            "a trained tower's outputs change every step"
        )
    configs = {"image": model.config.clip_config.vision_config, "text": model.config.clip_config.text_config}
    random = [kind for kind in kinds if configs[kind].attention_dropout > 0]
    if random:
        raise ValueError(
            f"--cache_tower_features: the {' and '.join(random)} tower draws dropout in training "
            "(attention_dropout > 0), so its outputs are random and cannot be cached"
        )
    return kinds


def weights_fingerprint(model, kinds: list[str]) -> str:
    """sha256 of the frozen towers' parameters and buffers (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for kind in sorted(kinds):
        for module_name in TOWERS[kind]:
            state = getattr(model.clip, module_name).state_dict()
            for name in sorted(state):
                tensor = state[name].detach().cpu().contiguous()
                digest.update(f"{kind}.{module_name}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:24]


def _row_key(row: torch.Tensor) -> str:
    return hashlib.sha1(row.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


class TowerFeatureCache:
    """Memoised frozen towers of one model: `install()` routes the model's `_image_tower` / `_text_tower`
    (what CLIP-ITA reads of CLIP's towers) through the cache; `save()` writes the features computed since
    the last save as a safetensors shard."""

    def __init__(self, model, run_dir: str | Path, kinds: list[str], process_index: int = 0):
        self.model = model
        self.kinds = list(kinds)
        self.folder = Path(run_dir) / FOLDER / weights_fingerprint(model, self.kinds)
        self.process_index = process_index
        self.features: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in self.kinds}
        self.unsaved: dict[str, list[str]] = {kind: [] for kind in self.kinds}
        self.computed = dict.fromkeys(self.kinds, 0)  # rows each tower encoded in this process
        self.originals = {}
        self.load()

    def load(self) -> None:
        """Read every shard of this weights fingerprint (written by any process of any run)."""
        for kind in self.kinds:
            for shard in sorted(self.folder.glob(f"{kind}-*.safetensors")):
                tensors = load_file(shard)
                with safe_open(shard, framework="pt") as f:
                    keys = (f.metadata() or {}).get("keys", "").split(",")
                if len(keys) != tensors["features"].shape[0]:
                    raise ValueError(f"{shard}: {len(keys)} keys for {tensors['features'].shape[0]} features")
                self.features[kind].update(zip(keys, tensors["features"].unbind(0)))
        if any(self.features.values()):
            logger.info(
                "tower features read from %s: %s",
                self.folder,
                ", ".join(f"{len(v)} {k}" for k, v in self.features.items()),
            )

    def save(self) -> None:
        """Write the features computed since the last save (one shard per tower and process)."""
        for kind in self.kinds:
            keys = self.unsaved[kind]
            if not keys:
                continue
            self.folder.mkdir(parents=True, exist_ok=True)
            features = torch.stack([self.features[kind][key] for key in keys]).contiguous()
            joined = ",".join(keys)
            name = hashlib.sha1(joined.encode()).hexdigest()[:16]  # same features, same file name
            path = self.folder / f"{kind}-p{self.process_index}-{name}.safetensors"
            write_atomic(
                path, lambda p, f=features, k=joined: save_file({"features": f}, p, metadata={"keys": k})
            )
            self.unsaved[kind] = []

    def install(self) -> None:
        for kind in self.kinds:
            name = f"_{kind}_tower"
            self.originals[kind] = getattr(self.model, name)
            setattr(self.model, name, self._cached(kind))

    def uninstall(self) -> None:
        for kind in self.originals:
            delattr(self.model, f"_{kind}_tower")  # the instance attribute; the class's method is back
        self.originals = {}

    def _cached(self, kind: str):
        original = self.originals[kind]
        store = self.features[kind]

        def features(*args, **kwargs) -> BaseModelOutputWithPooling:
            options = (
                "output_attentions",
                "output_hidden_states",
                "interpolate_pos_encoding",
                "position_ids",
            )
            if any(kwargs.get(option) is not None and kwargs.get(option) is not False for option in options):
                return original(*args, **kwargs)  # per-token outputs and other positions are not cached
            if kind == "image":
                pixel_values = kwargs.pop("pixel_values", args[0] if args else None)
                inputs = (pixel_values,)
                keys = [_row_key(row) for row in pixel_values]
            else:
                input_ids = kwargs.pop("input_ids", args[0] if args else None)
                attention_mask = kwargs.pop("attention_mask", args[1] if len(args) > 1 else None)
                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                inputs = (input_ids, attention_mask)
                keys = [_row_key(ids[mask.bool()]) for ids, mask in zip(input_ids, attention_mask)]
            first: dict[str, int] = {}
            for index, key in enumerate(keys):
                first.setdefault(key, index)
            rows = [index for key, index in first.items() if key not in store]
            if rows:
                with torch.no_grad():
                    computed = original(*(t[rows] for t in inputs)).pooler_output
                for index, row in zip(rows, computed.float().cpu()):
                    store[keys[index]] = row.clone()
                    self.unsaved[kind].append(keys[index])
                self.computed[kind] += len(rows)
            device = inputs[0].device
            pooled = torch.stack([store[key] for key in keys]).to(device)
            return BaseModelOutputWithPooling(pooler_output=pooled)

        return features
