"""search.py end to end: a tiny untrained CLIP-ITA indexes a tiny generated catalogue, then answers queries.

The model is untrained, so these tests check the plumbing (shapes, ranking order, filters, errors),
not retrieval quality.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import search as search_cli
from clipita.bootstrap import build_default_model, register_auto_classes
from clipita.catalogue import generate_catalogue
from tests.conftest import TINY_TEXTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(tmp folder, index folder, its test-split size) after `search.py build` with the 32-d model."""
    tmp = tmp_path_factory.mktemp("search_cli")
    generate_catalogue(tmp / "catalogue", num_products=200, progress=False)
    register_auto_classes()  # the folders get their auto_map and code files: search.py loads remote code
    for dim in (32, 64):
        model, processor = build_default_model(TINY_TEXTS, hidden_size=dim, layers=1, image_size=32)
        model.save_pretrained(tmp / f"model{dim}")
        processor.save_pretrained(tmp / f"model{dim}")
    args = ["build", "--model", str(tmp / "model32"), "--dataset", str(tmp / "catalogue"), "--split", "test"]
    assert (
        search_cli.main([*args, "--output", str(tmp / "index"), "--batch_size", "16", "--shard_size", "25"])
        == 0
    )
    count = json.loads((tmp / "catalogue" / "catalogue.json").read_text())["sizes"]["test"]
    return tmp, tmp / "index", count


def run_answers(capsys, index: Path, *args: str) -> list[dict]:
    assert search_cli.main(["query", "--index", str(index), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def run_query(capsys, index: Path, *args: str) -> list[dict]:
    """The ranked products of every query, each with its query."""
    return [{"query": a["query"], **hit} for a in run_answers(capsys, index, *args) for hit in a["hits"]]


def test_build_writes_a_complete_index_folder(built):
    tmp, index, count = built
    assert {p.name for p in index.iterdir()} == {
        "index.faiss",
        "embeddings.npy",
        "metadata.parquet",
        "manifest.json",
    }
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["count"] == count and manifest["embedding_dim"] == 32
    assert manifest["model"]["name_or_path"] == str((tmp / "model32").resolve())
    assert manifest["model"]["projection_dim"] == 32 and len(manifest["model"]["config_sha256"]) == 64
    assert manifest["index"]["kind"] == "flat" and manifest["encode"]["skipped"] == 0


def test_query_json_ranks_products_with_their_metadata(built, capsys):
    _, index, count = built
    rows = run_query(capsys, index, "--k", "5", "Mugs", "Home > Kitchen")
    assert [(r["query"], r["rank"]) for r in rows] == [("Mugs", i) for i in range(1, 6)] + [
        ("Home > Kitchen", i) for i in range(1, 6)
    ]
    assert set(rows[0]) == {"query", "rank", "product_id", "score", "title", "category", "attributes"}
    scores = [r["score"] for r in rows[:5]]
    assert scores == sorted(scores, reverse=True) and all(isinstance(r["category"], list) for r in rows)
    assert len(run_query(capsys, index, "--k", "100000", "Mugs")) == count  # k past the catalogue: everything


def test_query_filters_and_plain_text_output(built, capsys):
    _, index, _ = built
    everything = run_query(capsys, index, "--k", "1000", "Mugs")
    attribute = everything[0]["attributes"][0]
    key, value = attribute.split(":", 1)
    wanted = {
        r["product_id"] for r in everything if attribute.lower() in [a.lower() for a in r["attributes"]]
    }
    filtered = run_query(capsys, index, "--k", "1000", "--filter", f"{key.upper()}:{value.upper()}", "Mugs")
    assert {r["product_id"] for r in filtered} == wanted
    assert search_cli.main(["query", "--index", str(index), "--k", "2", "Mugs"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("query: 'Mugs' (2 products)") and "  1. " in out and "  2. " in out


@pytest.mark.slow  # a fresh interpreter
def test_query_errors_are_clear(built, capsys):
    tmp, index, _ = built
    assert search_cli.main(["query", "--index", str(index), "  "]) == 2
    assert "empty query" in capsys.readouterr().err
    assert search_cli.main(["query", "--index", str(tmp), "Mugs"]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    # as a user runs it: an index built by a 32-d model, queried with a 64-d one
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "search.py"),
            "query",
            "--index",
            str(index),
            "--model",
            str(tmp / "model64"),
            "Mugs",
        ],
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    assert result.returncode == 2
    assert (
        "64-d" in result.stderr
        and "32-d" in result.stderr
        and str((tmp / "model32").resolve()) in result.stderr
    )


@pytest.mark.slow  # a fresh interpreter
def test_a_command_logged_to_a_file_writes_stage_lines_not_bars(built):
    """Output that is not a terminal gets one line per stage: no bar refreshes, no "Loading weights" bar."""
    tmp, _, count = built
    args = ["build", "--model", str(tmp / "model32"), "--dataset", str(tmp / "catalogue"), "--split", "test"]
    args += ["--output", str(tmp / "index_logged"), "--batch_size", "16", "--shard_size", "25"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "search.py"), *args], capture_output=True, text=True, cwd=tmp
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stderr and "Loading weights" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert f"encoding catalogue: started ({count} product)" in lines
    assert any(line.startswith(f"encoding catalogue: done, {count} product in ") for line in lines)


def test_query_says_when_the_filter_leaves_fewer_than_k_and_prints_p10_of_named_categories(built, capsys):
    tmp, index, count = built
    everything = run_query(capsys, index, "--k", "1000", "Mugs")
    attribute = everything[-1]["attributes"][0]
    matching = [r for r in everything if attribute.lower() in [a.lower() for a in r["attributes"]]]
    assert 0 < len(matching) < count
    [answer] = run_answers(capsys, index, "--k", str(len(matching) + 5), "--filter", attribute, "Mugs")
    assert answer["num_matching"] == len(matching) and len(answer["hits"]) == len(matching)
    assert (
        answer["note"]
        == f"only {len(matching)} products match {attribute!r}: fewer than k={len(matching) + 5}"
    )
    [enough] = run_answers(capsys, index, "--k", "1", "--filter", attribute, "Mugs")
    assert enough["num_matching"] is None and enough["note"] is None and len(enough["hits"]) == 1
    # a query naming a category of the index: its P@10 against the indexed paths, and which node it named
    leaf = everything[0]["category"]
    [named] = run_answers(capsys, index, "--k", "3", " > ".join(leaf).lower())
    top10 = run_query(capsys, index, "--k", "10", " > ".join(leaf))
    assert named["category"] == [" > ".join(leaf)] and len(named["hits"]) == 3
    assert named["P@10"] == sum(r["category"] == leaf for r in top10) / 10
    [unnamed] = run_answers(capsys, index, "--k", "3", "no such category")
    assert unnamed["category"] is None and unnamed["P@10"] is None
    assert search_cli.main(["query", "--index", str(index), "--k", "2", " > ".join(leaf)]) == 0
    out = capsys.readouterr().out
    assert (
        f"P@10 {named['P@10']:.2f} against the index's category paths: the query names '{' > '.join(leaf)}'"
        in out
    )
    assert search_cli.main(["query", "--index", str(index), "--k", "2", "no such category"]) == 0
    assert "P@10" not in capsys.readouterr().out
    synonyms = tmp / "synonyms.json"
    synonyms.write_text('{"keys": {"colour": "shade"}}')
    assert search_cli.main(["query", "--index", str(index), "--synonyms", str(synonyms), "Mugs"]) == 2
    assert "variants must be a list" in capsys.readouterr().err


def test_max_leaf_node_scoring_ranks_a_broad_query_by_its_best_leaf(built, capsys):
    """A broad query under max_leaf: each product's score is the max of the node's own and its leaves'."""
    _, index, _ = built
    from clipita.index import CatalogueIndex

    paths = CatalogueIndex.load(index).metadata.column("category").to_pylist()
    root = paths[0][0]
    leaves = sorted({" > ".join(p) for p in paths if p[0] == root})
    every = [
        run_query(capsys, index, "--k", "100000", "--node_scoring", "node", text) for text in [root, *leaves]
    ]
    best = {}
    for rows in every:
        for r in rows:
            best[r["product_id"]] = max(best.get(r["product_id"], -2.0), r["score"])
    rows = run_query(capsys, index, "--k", "5", "--node_scoring", "max_leaf", root)
    expected = sorted(best.items(), key=lambda kv: -kv[1])[:5]
    assert [r["score"] for r in rows] == pytest.approx([s for _, s in expected], abs=1e-5)


@pytest.mark.parametrize("scoring", [None, "tree"])
def test_posterior_node_scoring_equals_the_dense_scores(built, capsys, scoring):
    """The default "marginal" scoring of a broad query, and "tree": on an index under TREE_CANDIDATES products
    every product is re-scored, so its top k equals `clipita.tree.node_scores` over the dense [nodes,
    products] scores."""
    tmp, index, _ = built
    from clipita.encoding import softmax_temperature
    from clipita.index import CatalogueIndex
    from clipita.index.catalogue_index import TREE_CANDIDATES
    from clipita.loading import load_model
    from clipita.tree import DEFAULT_NODE_SCORING, node_scores

    assert DEFAULT_NODE_SCORING == "marginal"
    loaded = CatalogueIndex.load(index)
    assert len(loaded) < TREE_CANDIDATES
    model, _ = load_model(tmp / "model32")
    nodes = loaded.category_tree().nodes()
    raw = model.encode_categories([list(n) for n in nodes]) @ np.asarray(loaded.embeddings).T
    dense = node_scores(raw, nodes, scoring or DEFAULT_NODE_SCORING, temperature=softmax_temperature(model))
    flags = ["--node_scoring", scoring] if scoring else []
    for node in (nodes[0], next(n for n in nodes if len(n) == 2)):
        rows = run_query(capsys, index, "--k", "5", *flags, " > ".join(node))
        expected = np.sort(dense[nodes.index(node)])[::-1][:5]
        assert [r["score"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-5)
        assert all(r["score"] < 0 for r in rows)  # temperature * log P(node | product) < 0
