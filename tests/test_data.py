"""The catalogue loader: every supported layout, presets, column checks, skipped rows, seen / unseen."""

import argparse
import io
import json
import subprocess
import sys

import datasets
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from clipita import cli, data, tree
from clipita.catalogue import generate_catalogue
from clipita.schema import FEATURES


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path_factory, monkeypatch):
    """Keep datasets' cache out of ~/.cache and out of the folders the tests load."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate_catalogue(
        tmp_path_factory.mktemp("gen") / "cat", num_products=120, seed=1, image_size=32, progress=False
    )


def _png(colour="red", size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _check_canonical(ds: datasets.Dataset):
    assert ds.column_names == list(data.CANONICAL_COLUMNS)
    row = ds[0]
    assert isinstance(row["image"], Image.Image)
    assert isinstance(row["attributes"], list) and isinstance(row["category"], list) and row["category"]
    assert len(set(ds["product_id"])) == len(ds)


def test_generated_parquet_folder(generated):
    dsd, report = data.load_catalogue(str(generated), return_report=True)
    assert set(dsd) == {"train", "validation", "test"}
    for ds in dsd.values():
        _check_canonical(ds)
    assert sum(len(ds) for ds in dsd.values()) == 120
    assert report.total_skipped == 0 and "skipped 0 of 120 rows" in str(report)
    assert dsd["train"].features == FEATURES


def test_imagefolder_with_metadata_jsonl(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    rows = {
        "train": [
            {"file_name": "a.png", "title": "Red Mug", "attributes": {"colour": "red", "size": None},
             "category": "Home > Kitchen > Mugs", "sku": "A1", "price": 3.5},
            {"file_name": "b.png", "title": None, "attributes": {"colour": "blue"}, "category": "Home > Decor", "sku": "B2", "price": 1.0},
        ],
        "test": [{"file_name": "c.png", "title": "x", "attributes": {}, "category": "Toys", "sku": "C3", "price": 2.0}],
    }  # fmt: skip
    for split, items in rows.items():
        for r in items:
            (tmp_path / split / r["file_name"]).write_bytes(_png())
        (tmp_path / split / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in items))
    dsd = data.load_catalogue(str(tmp_path), id_column="sku")
    assert set(dsd) == {"train", "validation", "test"}  # validation carved from train
    assert dsd["train"].column_names == list(data.CANONICAL_COLUMNS)  # price and file_name dropped
    assert list(dsd["test"]["product_id"]) == ["C3"]
    rows = {r["product_id"]: r for split in dsd.values() for r in split}
    assert set(rows) == {"A1", "B2", "C3"}
    assert rows["A1"]["category"] == ["Home", "Kitchen", "Mugs"]
    assert rows["A1"]["attributes"] == ["colour: red"]
    assert rows["B2"]["title"] == "" and rows["C3"]["attributes"] == []


def test_imagefolder_with_metadata_csv_and_json_strings(tmp_path):
    (tmp_path / "test").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "test" / f"{name}.jpg").write_bytes(_png())
    pd.DataFrame(
        {
            "file_name": ["a.jpg", "b.jpg", "c.jpg"],
            "name": ["A", "B", "C"],
            "attrs": ['["colour: red", "material: wood"]', '{"colour": "blue"}', "size: M; fit: slim"],
            "path": ["Home/Kitchen", "Home/Decor", "Toys"],
        }
    ).to_csv(tmp_path / "test" / "metadata.csv", index=False)
    ds = data.load_catalogue(
        str(tmp_path), "test", title_column="name", attributes_column="attrs", category_column="path",
        category_separator="/",
    )  # fmt: skip
    _check_canonical(ds)
    by_title = {r["title"]: r for r in ds}
    assert by_title["A"]["attributes"] == ["colour: red", "material: wood"]
    assert by_title["B"]["attributes"] == ["colour: blue"]
    assert by_title["C"]["attributes"] == ["size: M", "fit: slim"]
    assert by_title["A"]["category"] == ["Home", "Kitchen"]


def _table(n=20, bad=()):
    rows = []
    for i in range(n):
        rows.append(
            {
                "product_id": f"p{i}",
                "image": {"bytes": _png(), "path": None},
                "title": f"item {i}",
                "attributes": ["colour: red"],
                "category": ["Home", "Kitchen" if i % 2 else "Decor"],
            }
        )
    for i, kind in bad:
        if kind == "unreadable":
            rows[i]["image"] = {"bytes": b"not an image", "path": None}
        elif kind == "empty":
            rows[i]["category"] = []
        elif kind == "large":
            rows[i]["image"] = {"bytes": _png(size=(400, 300)), "path": None}
    return rows


def test_save_to_disk_and_arrow_and_single_file(tmp_path):
    ds = datasets.Dataset.from_list(_table(), features=FEATURES)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "saved"))
    _check_canonical(data.load_catalogue(str(tmp_path / "saved"), "test"))

    (tmp_path / "arrow").mkdir()
    table = pa.Table.from_pylist(_table(), schema=FEATURES.arrow_schema)
    for split in ("train", "test"):
        with pa.ipc.new_stream(str(tmp_path / "arrow" / f"{split}.arrow"), table.schema) as writer:
            writer.write_table(table)
    _check_canonical(data.load_catalogue(str(tmp_path / "arrow"), "test"))

    ds.to_parquet(str(tmp_path / "one.parquet"))
    dsd = data.load_catalogue(str(tmp_path / "one.parquet"))
    assert sum(len(d) for d in dsd.values()) == 20 and set(dsd) == {"train", "validation", "test"}


def test_bad_rows_are_skipped_counted_and_reported(tmp_path):
    rows = _table(30, bad=[(3, "unreadable"), (7, "unreadable"), (11, "empty"), (20, "large")])
    datasets.Dataset.from_list(rows, features=FEATURES).to_parquet(str(tmp_path / "test.parquet"))
    ds, report = data.load_catalogue(str(tmp_path), "test", max_image_pixels=50_000, return_report=True)
    assert len(ds) == 26
    assert report.skipped == {"unreadable image": 2, "empty category": 1, "image over pixel budget": 1}
    text = str(report)
    assert text.startswith("skipped 4 of 30 rows")
    assert "2 unreadable image in column 'image' (ids: p3, p7)" in text
    assert "empty category in column 'category' (ids: p11)" in text and "p20" in text
    assert [im.size for im in ds["image"][:2]] == [(12, 10), (12, 10)]


def test_streaming_skips_as_it_reads(tmp_path):
    rows = _table(12, bad=[(2, "unreadable"), (5, "empty")])
    datasets.Dataset.from_list(rows, features=FEATURES).to_parquet(str(tmp_path / "test.parquet"))
    ds, report = data.load_catalogue(str(tmp_path), "test", streaming=True, return_report=True)
    assert isinstance(ds, datasets.IterableDataset)
    got = list(ds)
    assert len(got) == 10 and isinstance(got[0]["image"], Image.Image)
    assert report.rows == 12 and report.total_skipped == 2 and "p2" in str(report) and "p5" in str(report)


def test_missing_column_is_named_with_the_columns_present(tmp_path):
    datasets.Dataset.from_list(_table(4), features=FEATURES).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(data.CatalogueSchemaError) as err:
        data.load_catalogue(str(tmp_path), title_column="name")
    message = str(err.value)
    assert "'name' (--title_column)" in message
    assert "['product_id', 'image', 'title', 'attributes', 'category']" in message
    data.load_catalogue(
        str(tmp_path), title_column=None
    )  # a catalogue without titles is allowed when said so


@pytest.mark.slow  # a fresh interpreter
def test_check_cli_exits_non_zero_on_a_missing_column(tmp_path, capsys):
    datasets.Dataset.from_list(_table(4), features=FEATURES).to_parquet(str(tmp_path / "train.parquet"))
    cmd = [sys.executable, "-m", "clipita.data", "--dataset", str(tmp_path), "--category_column", "cat"]
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode != 0 and "'cat' (--category_column)" in bad.stderr
    assert cli.check_catalogue(["--dataset", str(tmp_path)]) == 0
    assert "skipped 0 of 4 rows" in capsys.readouterr().out


def test_fashion_preset_on_a_kaggle_layout(tmp_path):
    (tmp_path / "images").mkdir()
    lines = [
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName",
        "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
        "39386,Women,Apparel,Bottomwear,Jeans,Blue,Summer,2012,,Peter England Women Party Blue Jeans",
        "59263,Women,Accessories,Watches,Watches,Silver,Winter,2016,Casual,Titan Women Silver Watch, extra, commas",
        "21379,Men,Apparel,Bottomwear,Track Pants,Black,Fall,2011,Casual,Manchester United Men Black Track Pants",
    ]
    (tmp_path / "styles.csv").write_text("\n".join(lines) + "\n")
    for pid in ("15970", "39386"):  # 21379 has no image file
        (tmp_path / "images" / f"{pid}.jpg").write_bytes(_png())
    dsd, report = data.load_catalogue(str(tmp_path), preset="fashion", return_report=True)
    rows = {r["product_id"]: r for split in dsd.values() for r in split}
    assert set(rows) == {"15970", "39386"}
    assert rows["15970"]["category"] == ["Apparel", "Topwear", "Shirts"]
    assert rows["15970"]["attributes"] == [
        "gender: Men",
        "colour: Navy Blue",
        "season: Fall",
        "usage: Casual",
    ]
    assert rows["39386"]["attributes"] == ["gender: Women", "colour: Blue", "season: Summer"]
    assert report.skipped == {"malformed line in styles.csv": 1, "unreadable image": 1}
    assert "59263" in str(report) and "21379" in str(report)


def test_fashion_preset_on_a_hub_shaped_parquet(tmp_path):
    frame = {
        "id": [1, 2, 3],
        "gender": ["Men", "Women", "Unisex"],
        "masterCategory": ["Apparel", "Footwear", "Apparel"],
        "subCategory": ["Topwear", "Shoes", "Topwear"],
        "articleType": ["Tshirts", "Heels", "Tshirts"],
        "baseColour": ["Red", None, "Blue"],
        "season": ["Summer", "Winter", "Fall"],
        "year": [2012, 2013, 2014],
        "usage": ["Casual", "Formal", "Sports"],
        "productDisplayName": ["Red Tee", "Heels", "Blue Tee"],
        "image": [{"bytes": _png(), "path": None}] * 3,
    }
    features = datasets.Features(
        {k: datasets.Value("string") for k in frame if k not in ("id", "year", "image")}
        | {"id": datasets.Value("int64"), "year": datasets.Value("int64"), "image": datasets.Image()}
    )
    datasets.Dataset.from_dict(frame, features=features).to_parquet(
        str(tmp_path / "train-00000-of-00001.parquet")
    )
    dsd = data.load_catalogue(str(tmp_path), preset="fashion")
    rows = {r["product_id"]: r for split in dsd.values() for r in split}
    assert rows["2"]["category"] == ["Footwear", "Shoes", "Heels"]
    assert rows["2"]["attributes"] == ["gender: Women", "season: Winter", "usage: Formal"]
    assert rows["1"]["title"] == "Red Tee"


def test_query_title_image_preset(tmp_path):
    (tmp_path / "data").mkdir()
    frame = {
        "image": [{"bytes": _png(), "path": None}] * 3,
        "item_ID": ["i1", "i2", "i3"],
        "query": ["men's running shoes", "coffee mugs > ceramic", "coffee mugs > ceramic"],
        "title": ["Fast Runner 2", "Blue Mug", "White Mug"],
        "position": [1, 2, 3],
        "source": ["gs", "gs", "gs"],
    }
    datasets.Dataset.from_dict(frame).cast_column("image", datasets.Image()).to_parquet(
        str(tmp_path / "data" / "data-00000-of-00001.parquet")
    )
    dsd = data.load_catalogue(str(tmp_path), preset="query_title_image")
    assert list(dsd) == ["test"]  # an eval set
    test = dsd["test"]
    assert list(test["category"]) == [
        ["men's running shoes"],
        ["coffee mugs > ceramic"],
        ["coffee mugs > ceramic"],
    ]
    assert list(test["attributes"]) == [[], [], []] and list(test["product_id"]) == ["i1", "i2", "i3"]


def test_carved_splits_are_deterministic_and_disjoint(tmp_path):
    datasets.Dataset.from_list(_table(200), features=FEATURES).to_parquet(str(tmp_path / "train.parquet"))
    a = data.load_catalogue(str(tmp_path))
    b = data.load_catalogue(str(tmp_path))
    ids = {k: set(a[k]["product_id"]) for k in a}
    assert {k: set(b[k]["product_id"]) for k in b} == ids
    assert ids["train"].isdisjoint(ids["validation"]) and ids["train"].isdisjoint(ids["test"])
    assert ids["validation"].isdisjoint(ids["test"])
    assert len(ids["train"]) + len(ids["validation"]) + len(ids["test"]) == 200
    assert 5 <= len(ids["validation"]) <= 40 and 5 <= len(ids["test"]) <= 40


def test_demo_is_generated_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPITA_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(data, "DEMO_ARGS", dict(data.DEMO_ARGS, num_products=60, image_size=32))
    calls = []
    real = data.generate_catalogue
    monkeypatch.setattr(
        data, "generate_catalogue", lambda *a, **k: calls.append(1) or real(*a, **k, progress=False)
    )
    first = data.load_catalogue("demo", "train")
    second = data.load_catalogue("demo", "train")
    assert len(calls) == 1 and list(first["product_id"]) == list(second["product_id"])
    assert (tmp_path / "home" / "demo" / "catalogue.json").is_file()


def test_hub_ids_go_to_load_dataset(monkeypatch, tmp_path):
    seen = {}
    local = datasets.Dataset.from_list(_table(6), features=FEATURES)

    def fake_load_dataset(path, **kwargs):
        seen.update(path=path, **kwargs)
        return datasets.IterableDatasetDict(
            {"train": local.to_iterable_dataset(), "test": local.to_iterable_dataset()}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dsd = data.load_catalogue("some-org/some-catalogue", streaming=True)
    assert seen == {"path": "some-org/some-catalogue", "data_dir": None, "streaming": True}
    assert len(list(dsd["test"])) == 6


def test_loader_flags(tmp_path):
    parser = cli.add_loader_arguments(argparse.ArgumentParser())
    frame = {
        "image": [{"bytes": _png(), "path": None}] * 2,
        "sku": ["a", "b"],
        "dept": ["Home", "Toys"],
        "aisle": ["Kitchen", "Plush"],
        "colour": ["red", None],
        "material": ["wood", "plush"],
    }
    datasets.Dataset.from_dict(frame).cast_column("image", datasets.Image()).to_parquet(
        str(tmp_path / "test.parquet")
    )
    args = parser.parse_args(["--dataset", str(tmp_path), "--category_column", "dept,aisle", "--title_column", "",
                              "--attributes_column", "colour,material", "--id_column", "sku"])  # fmt: skip
    ds, report = cli.load_from_args(args, "test")
    assert list(ds["category"]) == [["Home", "Kitchen"], ["Toys", "Plush"]]
    assert list(ds["attributes"]) == [["colour: red", "material: wood"], ["material: plush"]]
    assert list(ds["title"]) == ["", ""] and report.rows == 2


def test_seen_and_unseen_nodes():
    assert tree.category_nodes(["Home", "Kitchen", "Mugs"]) == [
        ("Home",),
        ("Home", "Kitchen"),
        ("Home", "Kitchen", "Mugs"),
    ]
    seen = tree.seen_nodes([["Home", "Kitchen", "Mugs"], ["Toys", "Plush"]])
    assert not tree.is_unseen(("Home", "Kitchen"), seen)
    assert tree.is_unseen(["Home", "Kitchen", "Bowls"], seen)
    assert tree.is_unseen(("Toys", "Kitchen"), seen), "the same name in another branch is another node"
