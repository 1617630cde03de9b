"""A saved folder loads as remote code through every path users take, each giving the same embeddings.

These are the paths where remote-code models break after a library upgrade ("Cannot copy out of meta
tensor", garbage in buffers that are not saved): `device_map`, `dtype="auto"`, `low_cpu_mem_usage`, and a
model built on the meta device, then `to_empty` and `load_state_dict`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipita.bootstrap import register_auto_classes
from tests.conftest import run_clean_python, tiny_model

LOAD_PATHS = """
import sys
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoProcessor

folders = {folders!r}
images = [Image.open(path) for path in {images!r}]
titles, attributes, categories = {titles!r}, {attributes!r}, {categories!r}


def embed(model, processor):
    products = model.encode_products(images=images, titles=titles, attributes=attributes, processor=processor)
    return np.concatenate([products, model.encode_categories(categories, processor=processor)])


def on_meta_device(folder):
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with torch.device("meta"):
        model = AutoModel.from_config(config, trust_remote_code=True)
    model.to_empty(device="cpu")
    model.load_state_dict(load_file(folder + "/model.safetensors"))
    return model


paths = {{
    "plain": {{}},
    "device_map=cpu": {{"device_map": "cpu"}},
    "device_map=auto": {{"device_map": "auto"}},
    "dtype=auto": {{"dtype": "auto"}},
    "low_cpu_mem_usage": {{"low_cpu_mem_usage": True}},
}}
failures = []
for saved_dtype, folder in folders.items():
    saved_dtype = getattr(torch, saved_dtype)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    # the reference in each compute dtype: the same weights, loaded the plain way and cast
    reference = {{
        dtype: embed(AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=dtype), processor)
        for dtype in (torch.float32, saved_dtype)
    }}
    np.testing.assert_allclose(reference[saved_dtype], np.load(folder + "/expected.npy"), atol=1e-5)
    models = {{name: lambda kw=kw: AutoModel.from_pretrained(folder, trust_remote_code=True, **kw) for name, kw in paths.items()}}
    models["meta device"] = lambda: on_meta_device(folder)
    for name, load in models.items():
        where = f"{{folder}} ({{saved_dtype}}), {{name}}"
        try:
            model = load()
            assert type(model).__name__ == "CLIPITAModel", type(model)
            if name == "dtype=auto":
                assert model.dtype == saved_dtype, f"loaded as {{model.dtype}}"
            assert all(p.device.type == "cpu" for p in model.parameters())
            got = embed(model, processor)
            np.testing.assert_allclose(got, reference[model.dtype], atol=1e-5, err_msg=where)
        except Exception as error:
            failures.append(f"{{where}}: {{type(error).__name__}}: {{error}}")
print("\\n".join(failures), file=sys.stderr)
sys.exit(1 if failures else 0)
"""


@pytest.mark.slow  # a fresh interpreter loading two folders six ways
def test_every_loading_path_gives_the_same_embeddings(tmp_path):
    model, processor = tiny_model()
    register_auto_classes()
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    titles = ["red ceramic mug", "organic cotton kids t-shirt", ""]
    attributes = [["colour: red", "material: ceramic"], [], ["audience: kids"]]
    categories = ["Ceramic Mugs", "Home > Kitchen", "Kids T-Shirts"]
    folders = {}
    for dtype in ("float32", "bfloat16"):
        folder = tmp_path / dtype
        saved = model.to(getattr(torch, dtype))
        saved.save_pretrained(folder)
        processor.save_pretrained(folder)
        pil = [Image.open(path) for path in images]
        expected = np.concatenate(
            [
                saved.encode_products(images=pil, titles=titles, attributes=attributes, processor=processor),
                saved.encode_categories(categories, processor=processor),
            ]
        )
        np.save(folder / "expected.npy", expected)
        folders[dtype] = str(folder)
    code = LOAD_PATHS.format(
        folders=folders, images=images, titles=titles, attributes=attributes, categories=categories
    )
    run_clean_python(code, cwd=tmp_path)
