"""Catalogue index core: resumable sharded encoding, index kinds, recall, filters, bad input.

The encoder here is a stand-in (embeddings derived from product ids): it tests the index machinery,
not retrieval quality.
"""

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import faiss
import numpy as np
import pytest
from PIL import Image

from clipita.index import (
    CatalogueIndex,
    choose_index_kind,
    encode_to_shards,
    kinds,
    load_shards,
    search,
)
from clipita.index import catalogue_index as catalogue_index_module
from clipita.schema import FEATURES as CANONICAL_FEATURES
from clipita.schema import normalise_attribute, synonym_table

DIM = 16


def fake_embedding(product_id: str, dim: int = DIM) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(product_id.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def fake_encode(rows: list[dict]) -> np.ndarray:
    assert all(isinstance(r["image"], Image.Image) for r in rows)  # images arrive decoded
    return np.stack([fake_embedding(r["product_id"]) for r in rows])


def png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (i % 256, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


BROKEN = {5, 37}


def make_catalogue(n: int = 120) -> datasets.Dataset:
    colours, materials = ["red", "blue", "green"], ["wood", "steel"]
    rows = {
        "product_id": [f"p{i:04d}" for i in range(n)],
        "image": [
            {"bytes": b"not an image" if i in BROKEN else png_bytes(i), "path": None} for i in range(n)
        ],
        "title": [f"product {i}" for i in range(n)],
        "attributes": [
            [f"Colour: {colours[i % 3].title()}", f"material: {materials[i % 2]}"] for i in range(n)
        ],
        "category": [["Home", "Kitchen", "Mugs" if i % 2 else "Plates"] for i in range(n)],
    }
    return datasets.Dataset.from_dict(rows, features=CANONICAL_FEATURES)


@pytest.fixture(scope="module")
def catalogue():
    return make_catalogue()


def expected_ids(n: int = 120) -> list[str]:
    return [f"p{i:04d}" for i in range(n) if i not in BROKEN]


def test_encode_skips_broken_images_and_keeps_order(catalogue, tmp_path):
    report = encode_to_shards(catalogue, fake_encode, tmp_path, batch_size=16, shard_size=50, progress=False)
    assert report.complete and report.encoded == 118 and report.skipped == 2 and report.shards == 3
    assert report.skipped_ids == ["p0005", "p0037"]
    assert "skipped 2" in report.summary() and "p0005" in report.summary()
    emb, meta = load_shards(tmp_path)
    assert meta.column("product_id").to_pylist() == expected_ids()
    np.testing.assert_array_equal(emb, np.stack([fake_embedding(p) for p in expected_ids()]))
    assert meta.slice(0, 1).to_pylist()[0]["attributes"] == ["Colour: Red", "material: wood"]


def test_encode_streaming_and_plain_iterables_match(catalogue, tmp_path):
    encode_to_shards(catalogue, fake_encode, tmp_path / "ds", batch_size=16, shard_size=50, progress=False)
    streaming = catalogue.to_iterable_dataset()
    encode_to_shards(streaming, fake_encode, tmp_path / "stream", batch_size=7, shard_size=32, progress=False)
    plain = [{**r, "image": Image.open(io.BytesIO(png_bytes(0)))} for r in catalogue.remove_columns("image")]
    report = encode_to_shards(iter(plain), fake_encode, tmp_path / "plain", batch_size=4, progress=False)
    assert report.encoded == 120
    a, meta_a = load_shards(tmp_path / "ds")
    b, meta_b = load_shards(tmp_path / "stream")
    np.testing.assert_array_equal(a, b)
    assert meta_a.equals(meta_b)


def test_encode_skips_rows_the_encoder_rejects(catalogue, tmp_path):
    def picky(rows):
        if any(r["product_id"] == "p0010" for r in rows):
            raise RuntimeError("cannot encode p0010")
        return fake_encode(rows)

    report = encode_to_shards(catalogue, picky, tmp_path, batch_size=16, progress=False)
    assert report.skipped == 3 and "p0010" in report.skipped_ids
    assert any("cannot encode p0010" in r for r in report.skip_reasons)
    emb, meta = load_shards(tmp_path)
    assert "p0010" not in meta.column("product_id").to_pylist() and len(emb) == 117


def test_a_shard_of_only_broken_images_is_counted_not_fatal(tmp_path):
    broken_first = make_catalogue(30).map(
        lambda row, i: {"image": {"bytes": b"junk" if i < 10 else png_bytes(i), "path": None}},
        with_indices=True,
    )
    report = encode_to_shards(
        broken_first, fake_encode, tmp_path, batch_size=5, shard_size=10, progress=False
    )
    assert report.skipped == 10 and report.encoded == 20 and report.shards == 3
    emb, meta = load_shards(tmp_path)
    assert emb.shape == (20, DIM) and meta.column("product_id").to_pylist()[0] == "p0010"


def test_encode_that_always_fails_is_an_error_not_a_skip(catalogue, tmp_path):
    def broken(rows):
        raise RuntimeError("model not loaded")

    with pytest.raises(RuntimeError, match="model not loaded"):
        encode_to_shards(catalogue, broken, tmp_path, batch_size=16, progress=False)


def test_resume_refuses_another_models_work(catalogue, tmp_path):
    encode_to_shards(catalogue, fake_encode, tmp_path, progress=False, fingerprint={"model": "a"})
    with pytest.raises(ValueError, match="another output folder"):
        encode_to_shards(catalogue, fake_encode, tmp_path, progress=False, fingerprint={"model": "b"})


RESUME_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import datasets
    sys.path[:0] = [{tests!r}, {root!r}]
    from test_index import fake_encode
    from clipita.index import encode_to_shards

    calls = 0
    def encode(rows):
        global calls
        calls += 1
        if os.environ.get("KILL_AT") and calls == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill, mid-shard
        return fake_encode(rows)

    ds = datasets.load_from_disk(sys.argv[1])
    report = encode_to_shards(ds, encode, sys.argv[2], batch_size=10, shard_size=30, progress=False)
    print("RESUMED_FROM", report.resumed_from_row, "CALLS", calls)
    """
)


@pytest.mark.slow  # killed and resumed subprocesses
def test_killed_encode_resumes_to_the_same_result(catalogue, tmp_path):
    catalogue.save_to_disk(str(tmp_path / "data"))
    script = tmp_path / "encode_script.py"
    tests = Path(__file__).resolve().parent
    script.write_text(RESUME_SCRIPT.format(tests=str(tests), root=str(tests.parent)))
    cmd = [sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "resumed")]
    killed = subprocess.run(cmd, env={**os.environ, "KILL_AT": "8"}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    progress = json.loads((tmp_path / "resumed" / "progress.json").read_text())
    assert not progress["complete"] and progress["rows_done"] == 60  # 7 batches done: shards 0-1 complete

    resumed = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "RESUMED_FROM 60 CALLS 6" in resumed.stdout  # only rows 60..119 encoded again

    encode_to_shards(catalogue, fake_encode, tmp_path / "whole", batch_size=10, shard_size=30, progress=False)
    a, meta_a = load_shards(tmp_path / "resumed")
    b, meta_b = load_shards(tmp_path / "whole")
    np.testing.assert_array_equal(a, b)
    assert meta_a.equals(meta_b)


def test_choose_index_kind_by_size_and_budget():
    assert choose_index_kind(10_000, 512) == "flat"
    assert choose_index_kind(1_000_000, 512) == "hnsw"
    assert choose_index_kind(1_000_000, 512, memory_budget_mb=500) == "ivfpq"  # flat alone is 2 GB
    assert choose_index_kind(10_000, 512, memory_budget_mb=5) == "ivfpq"  # small but over budget
    assert choose_index_kind(10_000, 512, exact_threshold=1000) == "hnsw"


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def metadata_for(n: int) -> list[dict]:
    colours = ["red", "blue", "green", "black"]
    return [
        {
            "product_id": f"p{i}",
            "title": f"t{i}",
            "category": ["A", f"leaf{i % 5}"],
            "attributes": [f"colour: {colours[i % 4]}", f"size: {'large' if i % 3 == 0 else 'small'}"],
        }
        for i in range(n)
    ]


def exact_top(emb: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ emb.T), axis=1, kind="stable")[:, :k]


def test_flat_index_is_exact_and_returns_everything_past_the_catalogue_size():
    emb = clustered(300)
    index = CatalogueIndex.build(emb, metadata_for(300), progress=False)
    assert index.kind == "flat" and index.manifest["recall"]["exact"]
    q = clustered(5, seed=1)
    hits = index.search(q, k=10)
    assert [[int(h.product_id[1:]) for h in row] for row in hits] == exact_top(emb, q, 10).tolist()
    assert hits[0][0].score == pytest.approx(float(q[0] @ emb[int(hits[0][0].product_id[1:])]), abs=1e-5)
    everything = index.search(q[0], k=10_000)[0]
    assert len(everything) == 300 and len({h.product_id for h in everything}) == 300
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(q, k=0)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_index_records_recall_and_still_returns_everything(kind, tmp_path, capsys):
    emb = clustered(3000)
    text = clustered(50, seed=7)
    index = CatalogueIndex.build(
        emb, metadata_for(3000), kind=kind, text_queries=text, recall_queries=200, progress=False
    )
    recall = index.manifest["recall"]
    assert index.kind == kind and not recall["exact"]
    assert 0.0 <= recall["recall_at_10"] <= 1.0 and recall["text_queries"] == 50
    assert recall["recall_at_10_products"] > (0.9 if kind == "hnsw" else 0.8)
    if kind == "ivfpq":  # exact re-ranking of k x 30 candidates is what rescues the 4-byte codes
        assert recall["recall_at_10"] > recall["recall_at_10_without_rerank"] + 0.2
        # the SQ8 stage (100 x k re-scored, 4 x k read exactly) recalls at least what 30 x k read exactly did
        assert index.refine is not None and recall["recall_at_10"] >= recall["recall_at_10_without_refine"]
    index.save(tmp_path)
    loaded = CatalogueIndex.load(tmp_path)
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["recall"] == recall and saved["index"]["kind"] == kind
    everything = loaded.search(text[:2], k=5000)
    assert all(len(row) == 3000 and len({h.product_id for h in row}) == 3000 for row in everything)


def test_filtered_approximate_search_and_its_exact_fallback(monkeypatch):
    emb = clustered(3000)
    index = CatalogueIndex.build(emb, metadata_for(3000), kind="hnsw", recall_queries=50, progress=False)
    index.exact_subset_limit = 0  # force the FAISS id-selector path
    q = clustered(4, seed=5)
    rows = np.array([i for i in range(3000) if i % 4 == 0 and i % 3 == 0])  # 250 red, large products
    exact = rows[exact_top(emb[rows], q, 20)].tolist()
    hits = [
        [int(h.product_id[1:]) for h in r]
        for r in index.search(q, k=20, filters=["colour: red", "size: large"])
    ]
    assert all(len(r) == 20 and set(r) <= set(rows.tolist()) for r in hits)
    assert np.mean([len(set(a) & set(e)) / 20 for a, e in zip(hits, exact)]) >= 0.8
    # when the graph finds fewer than k products (-1 ids), the rest comes from exact search
    dry = (np.zeros((4, 20), np.float32), np.full((4, 20), -1, np.int64))
    monkeypatch.setattr(catalogue_index_module, "approximate_search", lambda *args, **kwargs: dry)
    hits = index.search(q, k=20, filters=["colour: red", "size: large"])
    assert [[int(h.product_id[1:]) for h in r] for r in hits] == exact


def test_save_load_roundtrip_and_dimension_mismatch(tmp_path):
    emb = clustered(200)
    model_info = {"name_or_path": "models/tiny-32", "projection_dim": 32}
    index = CatalogueIndex.build(emb, metadata_for(200), model_info=model_info, progress=False)
    index.save(tmp_path / "idx")
    loaded = CatalogueIndex.load(tmp_path / "idx")
    manifest = loaded.manifest
    assert manifest["embedding_dim"] == 32 and manifest["count"] == 200 and manifest["model"] == model_info
    assert {"created", "clipita_version", "index", "recall"} <= set(manifest)
    q = clustered(3, seed=2)
    assert [[h.product_id for h in r] for r in loaded.search(q, 7)] == [
        [h.product_id for h in r] for r in index.search(q, 7)
    ]
    with pytest.raises(ValueError, match=r"64-d.*32-d embeddings built by models/tiny-32"):
        loaded.search(np.ones((1, 64), np.float32), 5)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        CatalogueIndex.load(tmp_path)


def test_attribute_filters_case_insensitive_and_all_required():
    emb = clustered(400)
    meta = metadata_for(400)
    index = CatalogueIndex.build(emb, meta, progress=False)
    q = clustered(2, seed=3)
    wanted = {i for i in range(400) if i % 4 == 0 and i % 3 == 0}  # colour red and size large
    hits = index.search(q, k=1000, filters=["Colour : RED", "size: Large"])
    assert all({int(h.product_id[1:]) for h in row} == wanted for row in hits)
    top = index.search(q, k=5, filters=["colour: red", "size: large"])
    rows = np.array(sorted(wanted))
    best = rows[exact_top(emb[rows], q, 5)]
    assert [[int(h.product_id[1:]) for h in r] for r in top] == best.tolist()
    index.exact_subset_limit = 0  # the FAISS id-selector path must agree with the exact one
    assert [
        [int(h.product_id[1:]) for h in r]
        for r in index.search(q, k=5, filters=["colour: red", "size: large"])
    ] == (best.tolist())
    assert index.search(q, k=5, filters=["colour: purple"]) == [[], []]
    with pytest.raises(ValueError, match="'key: value'"):
        index.search(q, k=5, filters=["red"])
    assert normalise_attribute(" Colour:Red ") == "colour: red"


def test_attribute_filters_match_key_and_value_spellings_through_synonyms():
    meta = metadata_for(40)
    for i, row in enumerate(meta):  # a quarter of the red products spell the key "Color", some "COLOR"
        if i % 4 == 0 and i % 8 == 0:
            row["attributes"] = [f"{'Color' if i % 16 else 'COLOR'} : Red", *row["attributes"][1:]]
    index = CatalogueIndex.build(clustered(40), meta, progress=False)
    q = clustered(1, seed=3)
    red = {i for i in range(40) if i % 4 == 0}
    for spelling in ("colour: red", "color: RED", "Colours:red"):
        assert {int(h.product_id[1:]) for h in index.search(q, k=100, filters=[spelling])[0]} == red
    # a table the user extends: "shade" is another key for colour, "crimson" a value for red
    extra = {"keys": {"colour": ["shade"]}, "values": {"red": ["crimson"]}}
    hits = index.search(q, k=100, filters=["shade: crimson"], synonyms=extra)[0]
    assert {int(h.product_id[1:]) for h in hits} == red
    assert index.search(q, k=100, filters=["shade: crimson"]) == [[]]  # not in the built-in table
    # fewer matching products than k: only they come back, no padding with others
    assert len(index.search(q, k=50, filters=["colour: red", "size: large"])[0]) == len(
        {i for i in red if i % 3 == 0}
    )
    assert normalise_attribute("Color: Gray") == "colour: grey"
    assert synonym_table(extra)["keys"]["shade"] == "colour"
    with pytest.raises(ValueError, match="variants must be a list"):
        synonym_table({"keys": {"colour": "shade"}})
    with pytest.raises(ValueError, match='"keys" and/or "values"'):
        synonym_table({"colour": ["shade"]})


class FakeModel:
    """Stands in for CLIPITAModel.encode_categories: enough to test the search front end."""

    def __init__(self, dim: int):
        self.config = type("Config", (), {"projection_dim": dim})()
        self.name_or_path = f"fake-{dim}"

    def encode_categories(self, texts, convert_to_numpy=True, processor=None):
        return np.stack([fake_embedding(t, self.config.projection_dim) for t in texts])


def test_search_front_end_checks_queries_and_model_dimension(tmp_path):
    emb = np.stack([fake_embedding(f"p{i}") for i in range(50)])
    index = CatalogueIndex.build(
        emb, metadata_for(50), model_info={"name_or_path": "fake-16"}, progress=False
    )
    index.save(tmp_path)
    hits = search(["Mugs", "Plates"], k=3, model=FakeModel(DIM), index=tmp_path)
    assert [len(h) for h in hits] == [3, 3] and hits[0][0].score >= hits[0][1].score
    assert search("Mugs", k=100, model=FakeModel(DIM), index=index)[0][0].product_id == hits[0][0].product_id
    for empty in ([], [""], ["Mugs", "   "]):
        with pytest.raises(ValueError, match="empty query"):
            search(empty, model=FakeModel(DIM), index=index)
    with pytest.raises(ValueError, match=r"model fake-32 gives 32-d.*16-d embeddings built by fake-16"):
        search(["Mugs"], model=FakeModel(32), index=index)


def test_bench_brute_force_baseline_is_exact():
    spec = importlib.util.spec_from_file_location(
        "index_bench", Path(__file__).parents[1] / "bench" / "index_bench.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x, q = bench.synthetic(3000, 32, seed=0), bench.synthetic(70, 32, seed=1)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(bench.numpy_topk(x, q, 10), exact_top(x, q, 10))


def test_choose_index_kind_puts_the_lists_on_disk_above_the_budget():
    assert choose_index_kind(10_000_000, 128, memory_budget_mb=1000) == "ivfpq"  # 24 B a product in memory
    assert choose_index_kind(10_000_000, 128, memory_budget_mb=100) == "ivfpq_disk"  # only centroids stay


def memmapped(x: np.ndarray, path: Path) -> np.ndarray:
    np.save(path, x)
    return np.load(path, mmap_mode="r")


def test_chunked_exact_search_over_a_memory_mapped_file_is_exact(tmp_path):
    emb = clustered(3000)
    q = clustered(7, seed=3)
    scores, ids = kinds.exact_search(memmapped(emb, tmp_path / "e.npy"), q, 10, chunk=700)
    np.testing.assert_array_equal(ids, exact_top(emb, q, 10))
    np.testing.assert_allclose(scores, np.sort(q @ emb.T, axis=1)[:, ::-1][:, :10], atol=1e-5)
    chunks = list(kinds.iter_chunks(memmapped(emb, tmp_path / "e.npy"), 700))
    assert [s for s, _ in chunks] == [0, 700, 1400, 2100, 2800] and not isinstance(chunks[0][1], np.memmap)


def test_ivfpq_with_lists_on_disk_answers_as_the_in_memory_one(tmp_path, monkeypatch):
    """Chosen above the budget, built block by block, its lists memory-mapped from index.ivfdata on load;
    the same codes as in memory, so the same answers, re-ranked exactly."""
    monkeypatch.setattr(kinds, "CHUNK_ROWS", 1000)  # three blocks merged into the on-disk lists
    emb = clustered(3000)
    meta = metadata_for(3000)
    folder = tmp_path / "disk"
    folder.mkdir()
    x = memmapped(emb, folder / "embeddings.npy")
    on_disk = CatalogueIndex.build(x, meta, memory_budget_mb=0.03, recall_queries=200, progress=False,
                                   directory=folder)  # fmt: skip
    assert on_disk.kind == "ivfpq_disk" and (folder / "index.ivfdata").stat().st_size > 3000 * 4
    assert on_disk.manifest["recall"]["recall_at_10_products"] > 0.8
    on_disk.save(folder)
    loaded = CatalogueIndex.load(folder)
    lists = faiss.extract_index_ivf(loaded.index).invlists
    assert isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)
    in_memory = CatalogueIndex.build(emb, meta, kind="ivfpq", recall_queries=200, progress=False)
    q = clustered(20, seed=5)
    ids = [[h.product_id for h in row] for row in loaded.search(q, k=10)]
    assert ids == [[h.product_id for h in row] for row in in_memory.search(q, k=10)]
    assert (
        kinds.recall_at_k(np.array([[int(i[1:]) for i in row] for row in ids]), exact_top(emb, q, 10)) > 0.9
    )
    red = loaded.search(q[:2], k=5, filters=["colour: red"])  # filters still work on the on-disk index
    assert all(len(row) == 5 and all("colour: red" in h.attributes for h in row) for row in red)
    copy = tmp_path / "copy"  # saved elsewhere, the lists go along
    on_disk.save(copy)
    assert [[h.product_id for h in row] for row in CatalogueIndex.load(copy).search(q, k=10)] == ids


def test_large_catalogues_search_their_ivf_centroids_through_hnsw(monkeypatch):
    monkeypatch.setattr(kinds, "HNSW_QUANTIZER_ABOVE", 1000)  # as above 2M products, on 3000
    emb = clustered(3000)
    index = CatalogueIndex.build(emb, metadata_for(3000), kind="ivfpq", recall_queries=200, progress=False)
    params = index.manifest["index"]["params"]
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index.index).quantizer)
    assert (
        isinstance(quantizer, faiss.IndexHNSWFlat) and quantizer.hnsw.efSearch == params["quantizer_efSearch"]
    )
    assert index.manifest["recall"]["recall_at_10_products"] > 0.8


def test_sq8_scores_are_faiss_decoded_inner_products():
    emb = clustered(2000)
    refine = kinds.SQ8Codes.build(emb, emb[:1000])
    decoded = kinds.SQ8Codes.quantizer(emb[:1000]).decode(np.asarray(refine.codes))
    q = clustered(5, seed=4)
    candidates = np.tile(np.arange(2000), (5, 1))
    candidates[:, -3:] = -1  # no candidate: never chosen
    scores = refine.scores(q, candidates)
    np.testing.assert_allclose(scores[:, :-3], (q @ decoded.T)[:, :-3], atol=1e-5)
    assert np.isneginf(scores[:, -3:]).all()
    assert np.abs(scores[:, :-3] - (q @ emb.T)[:, :-3]).max() < 0.05  # 8 bits a dimension: close


def test_sq8_stage_returns_the_exact_top_k_when_its_candidates_hold_it(tmp_path):
    """Candidates covering the truth (every product, shuffled): the SQ8 stage keeps the exact top k among
    its best 4 x k, and the exact re-rank orders them as exact search does, with exact scores."""
    emb = clustered(3000)
    x = memmapped(emb, tmp_path / "embeddings.npy")  # re-ranked by pread, as served
    refine = kinds.SQ8Codes.build(x, emb[::3], tmp_path)
    q = clustered(25, seed=6)
    candidates = np.stack([np.random.default_rng(i).permutation(3000) for i in range(25)])
    scores, ids = kinds.refine_then_rerank(refine, x, q, candidates, 10, keep=40)
    np.testing.assert_array_equal(ids, exact_top(emb, q, 10))
    np.testing.assert_allclose(scores, np.sort(q @ emb.T, axis=1)[:, ::-1][:, :10], atol=1e-5)
    # through the index: probing every list and fetching every product is the same case
    index = CatalogueIndex.build(emb, metadata_for(3000), kind="ivfpq", recall_queries=50, progress=False)
    params = index.manifest["index"]["params"]
    assert params["refine"] == "sq8" and params["rerank"] < params["rerank_without_refine"]
    wide = {**params, "nprobe": params["nlist"], "refine_candidates": 300}
    _, ids = kinds.approximate_search(index.index, "ivfpq", wide, x, q, 10, refine=index.refine)
    np.testing.assert_array_equal(ids, exact_top(emb, q, 10))


def test_sq8_stage_saved_loaded_and_filtered(tmp_path, monkeypatch):
    emb = clustered(3000)
    calls = []
    staged = kinds.refine_then_rerank
    monkeypatch.setattr(kinds, "refine_then_rerank", lambda *a, **kw: calls.append(1) or staged(*a, **kw))
    index = CatalogueIndex.build(emb, metadata_for(3000), kind="ivfpq", recall_queries=50, progress=False)
    est = index.manifest["index"]["estimated_bytes"]
    no_refine = kinds.estimate_bytes("ivfpq", 3000, 32, {**index.manifest["index"]["params"], "refine": None})
    assert est - no_refine == 3000 * 32  # the copy is counted: a byte a dimension
    index.save(tmp_path / "a")
    loaded = CatalogueIndex.load(tmp_path / "a")
    assert isinstance(loaded.refine.codes, np.memmap)
    np.testing.assert_array_equal(loaded.refine.codes, index.refine.codes)
    q = clustered(10, seed=8)

    def top(idx, **kwargs):
        return [[h.product_id for h in row] for row in idx.search(q, k=10, **kwargs)]

    calls.clear()
    assert top(loaded) == top(index) and len(calls) == 2  # both searched through the SQ8 stage
    loaded.save(tmp_path / "b")  # saved elsewhere, the memory-mapped copy goes along
    assert top(CatalogueIndex.load(tmp_path / "b")) == top(index)
    loaded.exact_subset_limit = 0  # filtered search through the FAISS selector and the SQ8 stage
    rows = np.array([i for i in range(3000) if i % 4 == 0])
    calls.clear()
    red = [[int(p[1:]) for p in row] for row in top(loaded, filters=["colour: red"])]
    assert calls and all(len(r) == 10 and set(r) <= set(rows.tolist()) for r in red)
    truth = rows[exact_top(emb[rows], q, 10)]
    loaded.refine, refine = None, loaded.refine  # the old path: 30 x k PQ candidates read exactly
    old = [[int(p[1:]) for p in row] for row in top(loaded, filters=["colour: red"])]
    loaded.refine = refine
    assert kinds.recall_at_k(np.array(red), truth) >= max(0.8, kinds.recall_at_k(np.array(old), truth))
    (tmp_path / "a" / kinds.REFINE_CODES_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="refine_sq8.npy: missing from the index folder"):
        CatalogueIndex.load(tmp_path / "a")


def test_a_budget_too_small_for_the_sq8_copy_keeps_the_old_path(tmp_path):
    base = kinds._ivfpq_params(3000, 32, refine=False)
    with_copy = kinds._ivfpq_params(3000, 32)
    assert with_copy["refine"] == "sq8" and "refine" not in base and base["rerank"] == kinds.IVFPQ_RERANK
    between = (kinds.estimate_bytes("ivfpq", 3000, 32, base) + 3000 * 16) / 2**20  # codes fit, copy not
    assert "refine" not in kinds._ivfpq_params(3000, 32, between)
    assert "refine" in kinds._ivfpq_params(3000, 32, between + 3000 * 32 / 2**20)
    # on disk only the centroids and the copy count
    centroids = kinds.estimate_bytes("ivfpq_disk", 3000, 32, base) / 2**20
    assert "refine" not in kinds._ivfpq_params(3000, 32, centroids + 0.01, kind="ivfpq_disk")
    assert kinds._ivfpq_params(3000, 32, centroids + 0.1, kind="ivfpq_disk")["refine"] == "sq8"
    emb = clustered(3000)
    index = CatalogueIndex.build(emb, metadata_for(3000), kind="ivfpq", memory_budget_mb=between,
                                 recall_queries=100, progress=False)  # fmt: skip
    assert index.refine is None and "refine" not in index.manifest["index"]["params"]
    assert index.manifest["recall"]["recall_at_10_products"] > 0.8
    index.save(tmp_path)
    assert not (tmp_path / kinds.REFINE_CODES_FILE).exists()
    loaded = CatalogueIndex.load(tmp_path)
    q = clustered(5, seed=9)
    assert loaded.refine is None
    assert [[h.product_id for h in r] for r in loaded.search(q, 10)] == [
        [h.product_id for h in r] for r in index.search(q, 10)
    ]


def test_nprobe_can_be_set_at_query_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kinds, "HNSW_QUANTIZER_ABOVE", 1000)  # the centroid graph's efSearch follows nprobe
    emb = clustered(3000)
    index = CatalogueIndex.build(emb, metadata_for(3000), kind="ivfpq", recall_queries=200, progress=False)
    params = index.manifest["index"]["params"]
    q = clustered(20, seed=5)
    default = [[h.product_id for h in row] for row in index.search(q, k=10)]
    index.set_nprobe(1)
    ivf = faiss.extract_index_ivf(index.index)
    assert ivf.nprobe == 1 and faiss.downcast_index(ivf.quantizer).hnsw.efSearch == 2
    assert [[h.product_id for h in row] for row in index.search(q, k=10)] != default  # one list is too few
    index.set_nprobe(params["nlist"])
    everything = [[h.product_id for h in row] for row in index.search(q, k=10)]
    exact = exact_top(emb, q, 10)
    assert kinds.recall_at_k(np.array([[int(i[1:]) for i in row] for row in everything]), exact) >= 0.99
    for bad in (0, params["nlist"] + 1):
        with pytest.raises(ValueError, match="--nprobe must be between 1"):
            index.set_nprobe(bad)
    flat = CatalogueIndex.build(emb[:100], metadata_for(100), kind="flat", progress=False)
    with pytest.raises(ValueError, match="applies to IVF-PQ"):
        flat.set_nprobe(4)
