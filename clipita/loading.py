"""Load a trained CLIP-ITA folder or Hub id the way its users do: through the folder's remote code.

Every consumer (eval, search, the Space, benchmarks) loads here, so they all run the code that ships
with the weights, not whatever version of the model classes the checkout has.
"""

from __future__ import annotations

import os

from clipita.progress import quiet_loading


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name_or_path: str | os.PathLike, device: str | None = None, **kwargs):
    """A CLIP-ITA folder or Hub id -> (model in eval mode on `device`, its processor).

    `kwargs` go to `AutoModel.from_pretrained` (revision, dtype, ...). The processor is attached to the
    model, so `model.encode_*` work without passing it.
    """
    from transformers import AutoModel, AutoProcessor

    name_or_path = str(name_or_path)
    with quiet_loading():
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, **kwargs)
    model = model.to(device or default_device()).eval()
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    model.processor = processor
    return model, processor
