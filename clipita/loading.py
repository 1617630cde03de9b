"""Load a trained CLIP-ITA folder or Hub id the way its users do: through the folder's remote code.

Every consumer (eval, search, the Space, benchmarks) loads here, so they all run the code that ships
with the weights, not whatever version of the model classes the checkout has.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from clipita.progress import quiet_loading


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


MODEL_JSON_FILES = ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json")


class ModelFileError(ValueError):
    """A model file is truncated or malformed: the message names the file and what is wrong."""


def safetensors_problem(file: str | os.PathLike) -> str | None:
    """What is wrong with a safetensors file (None when its header is whole and its tensors fit the file):
    a cheap check of the header and the sizes, without reading the tensors."""
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated: {size} bytes, shorter than a safetensors header"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"truncated: its header announces {length} bytes, the file has {size - 8} after the length"
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"malformed safetensors header ({err})"
    if not isinstance(header, dict):
        return "malformed safetensors header (not a JSON object)"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"truncated: {size} bytes, its tensors need {needed}"
    return None


def json_problem(file: str | os.PathLike) -> str | None:
    """What is wrong with a JSON object file (None when it parses as an object)."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing"
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"not valid JSON, truncated or corrupted ({err})"
    return None if isinstance(data, dict) else "not a JSON object"


def check_model_folder(folder: str | os.PathLike) -> None:
    """Raise `ModelFileError` naming the first truncated or malformed file of a local model folder
    (config.json, the safetensors weights), before transformers would fail on it with a traceback or,
    worse, fall back to a default config."""
    folder = Path(folder)
    if not folder.is_dir():
        return  # a Hub id: the Hub's files are checked by their download
    config = folder / "config.json"
    if not config.is_file():
        raise ModelFileError(f"{folder}: no config.json, not a model folder")
    for name in MODEL_JSON_FILES:
        problem = json_problem(folder / name) if (folder / name).is_file() else None
        if problem:
            raise ModelFileError(f"{folder / name}: {problem}")
    for file in weights_files(folder):
        problem = safetensors_problem(file)
        if problem:
            raise ModelFileError(f"{file}: {problem}")


def weights_files(name_or_path: str | os.PathLike) -> list[Path]:
    """The weight files of a model folder or Hub id (`*.safetensors`, sorted by name)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(name_or_path), allow_patterns=["*.safetensors"]))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{name_or_path}: no *.safetensors weights file")
    return files


def weights_sha256(name_or_path: str | os.PathLike) -> str:
    """sha256 of a model's weights (its safetensors files' bytes, streamed): identifies the exact weights an
    index was built with, so a retrained model in the same folder is told apart."""
    digest = hashlib.sha256()
    for file in weights_files(name_or_path):
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def load_model(name_or_path: str | os.PathLike, device: str | None = None, **kwargs):
    """A CLIP-ITA folder or Hub id -> (model in eval mode on `device`, its processor).

    `kwargs` go to `AutoModel.from_pretrained` (revision, dtype, ...). The processor is attached to the
    model, so `model.encode_*` work without passing it.
    """
    from transformers import AutoModel, AutoProcessor

    name_or_path = str(name_or_path)
    check_model_folder(name_or_path)
    with quiet_loading():
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, **kwargs)
    model = model.to(device or default_device()).eval()
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    model.processor = processor
    return model, processor
