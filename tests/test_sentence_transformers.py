"""A model folder loads with sentence-transformers (custom_st.py + modules.json) and embeds as encode_*."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipita.hub import check_release_folder
from tests.conftest import run_clean_python
from tests.test_card import save_tiny_release

sentence_transformers = pytest.importorskip("sentence_transformers")

CATEGORIES = ["Home > Kitchen > Ceramic Mugs", "Kids T-Shirts", "Mugs"]


def products():
    rng = np.random.default_rng(0)
    rows = [
        ("red ceramic mug", ["colour: red"]),
        ("organic cotton kids t-shirt, blue", []),
        ("glass", {"material": "glass"}),
    ]
    return [
        {
            "image": Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)),
            "title": t,
            "attributes": a,
        }
        for t, a in rows
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("st") / "clip-ita"
    model, processor = save_tiny_release(folder)
    return folder, model.eval(), processor


def load(folder):
    return sentence_transformers.SentenceTransformer(
        str(folder), trust_remote_code=True, device="cpu", local_files_only=True
    )


def reference(model, processor, items):
    categories = model.encode_categories(CATEGORIES, processor=processor)
    columns = {"images": [p["image"] for p in items], "titles": [p["title"] for p in items]}
    product_embeds = model.encode_products(
        **columns, attributes=[p["attributes"] for p in items], processor=processor
    )
    return categories, product_embeds


def test_encode_equals_encode_categories_and_products_and_survives_save(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, model, processor = saved
    assert not [p for p in check_release_folder(folder) if "README" not in p]  # no card rendered here
    items = products()
    categories, product_embeds = reference(model, processor, items)
    st = load(folder)
    assert st.get_embedding_dimension() == model.config.projection_dim
    np.testing.assert_allclose(st.encode(CATEGORIES), categories, atol=1e-5)
    np.testing.assert_allclose(st.encode(items), product_embeds, atol=1e-5)
    # a mixed batch, cut into batches of 2 and length-sorted by sentence-transformers, keeps the input order
    mixed = st.encode(
        [items[0], CATEGORIES[0], items[1], CATEGORIES[1], items[2], CATEGORIES[2]], batch_size=2
    )
    np.testing.assert_allclose(mixed[1::2], categories, atol=1e-5)
    np.testing.assert_allclose(mixed[0::2], product_embeds, atol=1e-5)
    st.save(str(tmp_path / "saved"))
    again = load(tmp_path / "saved")
    np.testing.assert_allclose(
        again.encode(CATEGORIES + items), np.concatenate([categories, product_embeds]), atol=1e-5
    )
    assert st.similarity(st.encode(CATEGORIES[:1]), st.encode(items)).shape == (1, 3)


def test_a_product_without_its_modalities_is_named(saved, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st = load(saved[0])
    with pytest.raises(ValueError, match="missing: \\['image'\\]"):
        st.encode([{"title": "red mug"}])
    with pytest.raises(ValueError, match="unknown: \\['colour'\\]"):
        st.encode([{**products()[0], "colour": "red"}])


def test_release_check_requires_the_sentence_transformers_files(saved, tmp_path):
    import shutil

    folder = shutil.copytree(saved[0], tmp_path / "copy")
    (folder / "modules.json").unlink()
    assert any("modules.json is missing" in p for p in check_release_folder(folder))


@pytest.mark.slow  # a fresh interpreter
def test_loads_in_a_clean_offline_process_outside_the_project(saved, tmp_path):
    """As a Hub user: no PYTHONPATH, HF_HUB_OFFLINE=1, only the folder's remote code."""
    folder, model, processor = saved
    expected = model.encode_categories(CATEGORIES, processor=processor)
    np.save(tmp_path / "expected.npy", expected)
    code = f"""
import numpy as np
from sentence_transformers import SentenceTransformer
model = SentenceTransformer({str(folder)!r}, trust_remote_code=True, device="cpu")
assert type(model[0]).__module__.startswith("transformers_modules"), type(model[0]).__module__
np.testing.assert_allclose(model.encode({CATEGORIES!r}), np.load({str(tmp_path / "expected.npy")!r}), atol=1e-5)
"""
    run_clean_python(code, cwd=tmp_path)
