"""search.py past one process: sharded encoding under `accelerate launch`, resumed after a kill, gives the
index of one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

import search as search_cli
from clipita.bootstrap import build_default_model, register_auto_classes
from clipita.catalogue import generate_catalogue
from clipita.index import CatalogueIndex
from clipita.index.vector_db import DEFAULT_COLLECTION
from clipita.schema import normalise_attribute
from tests.conftest import TINY_TEXTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(tmp folder, catalogue folder, model folder) with a 32-d untrained model."""
    tmp = tmp_path_factory.mktemp("search_scale")
    generate_catalogue(tmp / "catalogue", num_products=400, progress=False)
    register_auto_classes()
    model, processor = build_default_model(TINY_TEXTS, hidden_size=32, layers=1, image_size=32)
    model.save_pretrained(tmp / "model")
    processor.save_pretrained(tmp / "model")
    return tmp, tmp / "catalogue", tmp / "model"


def build_args(world, output: Path, *extra: str) -> list[str]:
    _, catalogue, model = world
    return [
        "build", "--model", str(model), "--dataset", str(catalogue), "--split", "test", "--output", str(output),
        "--batch_size", "4", "--shard_size", "8", *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes 2` of search.py build on CPU (gloo)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1", **env)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "tests.helpers.sharded_build", *argv,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.multiprocess  # accelerate launch, two processes, one killed
@pytest.mark.slow
def test_two_processes_killed_and_resumed_give_the_one_process_index(world, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert search_cli.main(build_args(world, one)) == 0

    killed = launch(build_args(world, two, "--keep_shards"), KILL_RANK="1", KILL_AFTER="3")
    assert killed.returncode != 0
    part = two / "encode-2procs" / "part-00001"
    progress = json.loads((part / "progress.json").read_text())
    assert not progress["complete"] and progress["rows_done"] == 8  # shard 0 done, killed in shard 1
    first_shard = (part / "emb-00000.npy").stat()

    resumed = launch(build_args(world, two, "--keep_shards"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "by 2 processes" in resumed.stdout
    kept = (part / "emb-00000.npy").stat()  # the finished shard was kept, not encoded again
    assert (kept.st_ino, kept.st_mtime_ns) == (first_shard.st_ino, first_shard.st_mtime_ns)
    assert json.loads((part / "progress.json").read_text())["complete"]

    a, b = CatalogueIndex.load(one), CatalogueIndex.load(two)
    assert len(a) > 16 and a.metadata.equals(b.metadata)  # the same products in the same order
    np.testing.assert_allclose(np.asarray(b.embeddings), np.asarray(a.embeddings), atol=1e-6)
    assert b.manifest["encode"]["processes"] == 2 and b.manifest["encode"]["encoded"] == len(a)
    queries = np.asarray(a.embeddings[:20])
    top_a = [[h.product_id for h in hits] for hits in a.search(queries, k=10)]
    top_b = [[h.product_id for h in hits] for hits in b.search(queries, k=10)]
    assert top_a == top_b


@pytest.mark.slow  # two builds of the tiny catalogue
def test_build_writes_an_embeddings_dataset_and_an_index_with_lists_on_disk(world, tmp_path, capsys):
    out, vectors = tmp_path / "index", tmp_path / "vectors"
    argv = build_args(world, out, "--embeddings_dataset", str(vectors), "--index_kind", "ivfpq_disk")
    assert search_cli.main(argv) == 0
    index = CatalogueIndex.load(out)
    assert index.kind == "ivfpq_disk" and (out / "index.ivfdata").is_file()

    # the Hub layout: data/test-*.parquet + card (a cache of its own: datasets' cache keys local folders loosely)
    loaded = datasets.load_dataset(str(vectors), split="test", cache_dir=str(tmp_path / "cache"))
    assert loaded.column_names == ["product_id", "embedding", "title", "category", "attributes"]
    assert loaded.features["embedding"] == datasets.List(datasets.Value("float32"), length=32)
    assert loaded["product_id"] == index.metadata.column("product_id").to_pylist()
    assert loaded["category"] == index.metadata.column("category").to_pylist()
    np.testing.assert_array_equal(loaded.with_format("numpy")["embedding"], np.asarray(index.embeddings))
    assert "split: test" in (vectors / "README.md").read_text()

    capsys.readouterr()
    assert search_cli.main(["query", "--index", str(out), "--json", "--k", "3", "Mugs"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["hits"]) == 3
    assert search_cli.main([*build_args(world, tmp_path / "x", "--embeddings_dataset", str(vectors)),
                            "--split", "test[:10]"]) == 2  # fmt: skip
    assert "not a dataset split name" in capsys.readouterr().err


def answers(capsys, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert search_cli.main(["query", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def ids(result: list[dict]) -> list[list[str]]:
    return [[h["product_id"] for h in a["hits"]] for a in result]


@pytest.mark.slow  # a build, a Milvus Lite server, the Space's loader
def test_milvus_export_answers_as_exact_faiss_search_and_honours_filters(world, tmp_path, capsys):
    """Milvus Lite, the same pymilvus API as a cluster: recall@10 against the exact FAISS index >= 0.95."""
    out, db = tmp_path / "index", str(tmp_path / "vectors.db")
    assert search_cli.main(build_args(world, out)) == 0
    assert search_cli.main(["export", "--index", str(out), "--to", db]) == 0
    index = CatalogueIndex.load(out)
    paths = index.metadata.column("category").to_pylist()
    leaves = sorted({p[-1] for p in paths})
    faiss_args, milvus_args = ["--index", str(out)], ["--backend", "milvus", "--index", db]

    exact = ids(answers(capsys, *faiss_args, *leaves))
    served = served_top = ids(answers(capsys, *milvus_args, *leaves))
    assert len(leaves) > 10 and all(len(row) == 10 for row in served)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, served)]) >= 0.95

    node = " > ".join(paths[0][:2])  # a middle node, and an attribute some of its products carry
    attribute = next(a for p, attrs in zip(paths, index.metadata.column("attributes").to_pylist())
                     if p[:2] == paths[0][:2] for a in attrs if ":" in a)  # fmt: skip
    wanted = attribute.split(":")[0].upper() + ":" + attribute.split(":", 1)[1]  # filters fold case
    filters = ["--category", node, "--filter", wanted, "--k", "5"]
    for result in (
        answers(capsys, *faiss_args, *filters, *leaves),
        answers(capsys, *milvus_args, *filters, *leaves),
    ):
        for a in result:
            assert all(" > ".join(h["category"]).startswith(node) for h in a["hits"])
            assert all(normalise_attribute(attribute) in {normalise_attribute(x) for x in h["attributes"]}
                       for h in a["hits"])  # fmt: skip
            assert a["hits"] and (len(a["hits"]) == 5 or a["note"])
    exact, served = (
        ids(answers(capsys, *faiss_args, *filters, *leaves)),
        ids(answers(capsys, *milvus_args, *filters, *leaves)),
    )
    assert np.mean([len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(exact, served)]) >= 0.95

    assert search_cli.main(["export", "--index", str(out), "--to", db]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    from space import answers as space_answers
    from space import variants  # the Space searches the same collection (--backend milvus)

    loaded = variants.load_variants([None], [str(out)], cache_dir=tmp_path / "space")
    variants.serve_from_milvus(loaded, db, [DEFAULT_COLLECTION])
    _, hits, _ = space_answers.search_category(loaded[0], leaves[0], 10)
    assert [h["product_id"] for h in hits] == served_top[0]


@pytest.mark.slow  # a benchmark run, seven processes
def test_large_index_bench_measures_both_kinds_against_exact_search(capsys, tmp_path):
    from bench import large_index_bench

    large_index_bench.main(["--num-products", "20000", "--queries", "30", "--single", "5",
                            "--settings", "1:30", "1:100:4", "--folder", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")] for line in out.splitlines() if line.startswith("| IVF-PQ")]
    assert [(r[1], r[3], r[5], r[6]) for r in rows] == [
        ("IVF-PQ, lists in memory", "pread", "-", "30"),
        ("IVF-PQ, lists in memory", "pread", "100", "4"),
        ("IVF-PQ, lists on disk (mmap)", "pread", "-", "30"),
        ("IVF-PQ, lists on disk (mmap)", "pread", "100", "4"),
        ("IVF-PQ, lists on disk (mmap)", "mmap", "-", "30"),
    ]
    assert all(float(r[9]) >= 0.9 for r in rows) and "peak RSS of building and serving" in out
    assert "train + encode SQ8 copy (shared)" in out
    assert not list(tmp_path.iterdir())  # the data and indexes went with their temporary folder
