"""The Space end to end: `python space/app.py` serves two tiny variants over a tiny catalogue (configured by
CLIPITA_MODEL / CLIPITA_INDEX, port by GRADIO_SERVER_PORT); gradio_client calls both named endpoints.

Tests that need the running Space are marked `slow` (building the fixtures and starting the server is
most of this file's time); the pieces without a server are not.

The endpoints are checked against the same model and index queried directly in this process, so an
answer that is not the index's own top-k (wrong model, wrong variant, lost order, wrong images) fails.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from clipita.index import CatalogueIndex, search
from clipita.tree import CategoryTree
from space import answers, app, variants
from tests.helpers.tiny_catalogue import tiny_catalogue

ROOT = Path(__file__).resolve().parents[1]
APP_PATH = ROOT / "space" / "app.py"
VARIANTS = ("clip-ita", "clip-i")
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningSpace:
    """A `python space/app.py` process and what it serves, loaded here too for expected answers."""

    url: str
    process: subprocess.Popen
    log: Path
    catalogue: object
    models: dict = field(default_factory=dict)  # variant -> (model, processor)
    indexes: dict = field(default_factory=dict)  # variant -> CatalogueIndex
    index_dirs: dict = field(default_factory=dict)  # variant -> index folder

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def build_variant(variant: str, catalogue, catalogue_dir: Path, root: Path):
    """A tiny from-scratch model of `variant`, saved, and its index of the train split built by search.py."""
    import search as search_cli
    from clipita.bootstrap import build_default_model, register_auto_classes

    rows = catalogue["train"]
    texts = list(rows["title"]) + [a for row in rows["attributes"] for a in row]
    texts += [part for row in rows["category"] for part in row]
    model, processor = build_default_model(
        texts, variant=variant, hidden_size=32, layers=1, image_size=32, vocab_size=256
    )
    model_dir, index_dir = root / f"model-{variant}", root / f"index-{variant}"
    register_auto_classes()  # the folder gets its auto_map and code files: the Space loads its remote code
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    argv = ["build", "--model", str(model_dir), "--dataset", str(catalogue_dir), "--split", "train"]
    assert search_cli.main([*argv, "--output", str(index_dir), "--device", "cpu"]) == 0
    return model_dir, index_dir, (model.eval(), processor), CatalogueIndex.load(index_dir)


_RUNNING: dict[str, RunningSpace] = {}


def start_space(root: Path) -> RunningSpace:
    """Build the fixtures and start the app once per test session (shared by the browser test)."""
    if "space" in _RUNNING:
        return _RUNNING["space"]
    root.mkdir(parents=True, exist_ok=True)
    catalogue = tiny_catalogue(num_train=48, num_validation=24)
    catalogue_dir = root / "catalogue"
    for split, rows in catalogue.items():
        (catalogue_dir / split).mkdir(parents=True)
        rows.to_parquet(str(catalogue_dir / split / f"{split}-00000-of-00001.parquet"))
    built = {v: build_variant(v, catalogue, catalogue_dir, root) for v in VARIANTS}

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPITA_", "GRADIO_"))}
    env.update(
        CLIPITA_MODEL=",".join(str(built[v][0]) for v in VARIANTS),
        CLIPITA_INDEX=",".join(str(built[v][1]) for v in VARIANTS),
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
    )
    log = root / "space.log"
    with open(log, "wb") as out:  # started outside the checkout: the app must find the project itself
        process = subprocess.Popen([sys.executable, str(APP_PATH)], cwd=root, env=env, stdout=out, stderr=out)
    space = RunningSpace(f"http://127.0.0.1:{port}/", process, log, catalogue)
    space.models = {v: built[v][2] for v in VARIANTS}
    space.indexes = {v: built[v][3] for v in VARIANTS}
    space.index_dirs = {v: built[v][1] for v in VARIANTS}
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"space/app.py exited with code {process.returncode}:\n{space.log_tail()}")
        try:
            with urllib.request.urlopen(space.url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            space.stop()
            pytest.fail(
                f"space/app.py did not answer on port {port} in {START_TIMEOUT_S} s:\n{space.log_tail()}"
            )
        time.sleep(0.5)
    _RUNNING["space"] = space
    return space


@pytest.fixture(scope="session")
def space(tmp_path_factory):
    running = start_space(tmp_path_factory.getbasetemp() / "space")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(space):
    c = Client(space.url, verbose=False)
    yield c
    c.close()


def catalogue_image(space: RunningSpace, product_id: str) -> np.ndarray:
    """The image of an indexed (train split) product, as stored in the catalogue."""
    ids = space.catalogue["train"]["product_id"]
    assert product_id in ids, f"{product_id} is not an indexed catalogue product"
    return np.asarray(space.catalogue["train"][ids.index(product_id)]["image"].convert("RGB"))


def category_nodes(space: RunningSpace, variant: str = "clip-ita") -> set[str]:
    """Every category of the indexed products, inner and leaf, as "A > B > C"."""
    paths = space.indexes[variant].metadata.column("category").to_pylist()
    return {" > ".join(p[:depth]) for p in paths for depth in range(1, len(p) + 1)}


# ----- /search_category ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_api_names_both_endpoints_with_optional_extras(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/search_category", "/classify_image"} <= set(endpoints)
    search_params = {p["parameter_name"]: p for p in endpoints["/search_category"]["parameters"]}
    assert not search_params["query"]["parameter_has_default"]
    assert search_params["k"]["parameter_has_default"] and search_params["variant"]["parameter_has_default"]
    classify_params = {p["parameter_name"]: p for p in endpoints["/classify_image"]["parameters"]}
    assert not classify_params["image"]["parameter_has_default"]
    assert all(
        classify_params[name]["parameter_has_default"] for name in ("title", "attributes", "top", "variant")
    )


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_search_category_returns_the_index_top_k_with_images(space, client, variant):
    query = "Home > Home Indoor > Red Things"  # a seen category
    gallery, records, latency = client.predict(query, 5, variant, api_name="/search_category")
    model, processor = space.models[variant]
    expected = search(query, 5, model=model, index=space.indexes[variant], processor=processor)[0]
    assert [r["product_id"] for r in records] == [h.product_id for h in expected]
    assert np.allclose([r["score"] for r in records], [h.score for h in expected], atol=1e-4)
    assert [r["score"] for r in records] == sorted((r["score"] for r in records), reverse=True)
    assert len(gallery) == 5
    for item, record in zip(gallery, records):
        shown = np.asarray(Image.open(item["image"]).convert("RGB"))
        assert np.array_equal(shown, catalogue_image(space, record["product_id"])), record["product_id"]
        assert record["title"] in item["caption"] and f"{record['score']:.3f}" in item["caption"]
        assert " > ".join(record["category"]) in item["caption"]
    assert " ms" in latency and variant in latency


@pytest.mark.slow
def test_search_category_variants_answer_with_their_own_model(client):
    ita = client.predict("Blue Things", 10, "clip-ita", api_name="/search_category")[1]
    i = client.predict("Blue Things", 10, "clip-i", api_name="/search_category")[1]
    assert [r["score"] for r in ita] != [r["score"] for r in i]


@pytest.mark.slow
def test_search_category_takes_any_text_and_defaults_k(space, client):
    gallery, records, _ = client.predict("striped velvet armchair for cats", api_name="/search_category")
    assert len(gallery) == len(records) == answers.DEFAULT_K
    products = set(space.indexes["clip-ita"].metadata.column("product_id").to_pylist())
    assert {r["product_id"] for r in records} <= products


# ----- /classify_image ------------------------------------------------------------------------------------


def product_png(space: RunningSpace, tmp_path: Path, row: int = 0) -> tuple[Path, dict]:
    product = space.catalogue["validation"][row]
    path = tmp_path / "product.png"
    product["image"].save(path)
    return path, product


def expected_categories(
    space: RunningSpace, variant: str, image: Image.Image, title: str, attributes: list[str]
):
    """Leaf paths ranked by the mean cosine of their nodes (root, middle, leaf) with the product."""
    model, processor = space.models[variant]
    nodes = sorted(category_nodes(space))
    embeds = model.encode_categories(nodes, processor=processor)
    product = model.encode_products(
        images=[image], titles=[title], attributes=[attributes], processor=processor
    )[0]
    score = dict(zip(nodes, embeds @ product))
    leaves = [n for n in nodes if not any(m.startswith(n + " > ") for m in nodes)]
    prefixes = {
        leaf: [" > ".join(leaf.split(" > ")[:d]) for d in range(1, leaf.count(" > ") + 2)] for leaf in leaves
    }
    mean = {leaf: float(np.mean([score[p] for p in prefixes[leaf]])) for leaf in leaves}
    return sorted(leaves, key=lambda leaf: -mean[leaf])


@pytest.mark.slow
def test_classify_image_ranks_tree_consistent_category_paths(space, client, tmp_path):
    path, product = product_png(space, tmp_path)
    attributes = ", ".join(product["attributes"])
    label, latency = client.predict(
        handle_file(str(path)), product["title"], attributes, 4, "clip-ita", api_name="/classify_image"
    )
    confidences = label["confidences"]
    assert len(confidences) == 4
    assert {c["label"] for c in confidences} <= category_nodes(space)
    scores = [c["confidence"] for c in confidences]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    expected = expected_categories(
        space, "clip-ita", Image.open(path), product["title"], product["attributes"]
    )
    assert [c["label"] for c in confidences] == expected[:4]
    assert label["label"] == expected[0]
    assert " ms" in latency


@pytest.mark.slow
def test_classify_image_needs_only_the_image(space, client, tmp_path):
    path, _ = product_png(space, tmp_path, row=1)
    label, _ = client.predict(handle_file(str(path)), api_name="/classify_image")
    assert len(label["confidences"]) == answers.DEFAULT_TOP_CATEGORIES
    expected = expected_categories(space, "clip-ita", Image.open(path), "", [])
    assert label["label"] == expected[0]


# ----- bad input: a message, and the server keeps answering --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("query", ["", "   ", " > "])
def test_empty_query_gets_a_message(client, query):
    with pytest.raises(AppError, match="Type a category"):
        client.predict(query, 5, api_name="/search_category")


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, answers.MAX_K + 1, 2.5, None, "nan", "ten"])
def test_out_of_range_k_gets_a_message(client, k):
    with pytest.raises(AppError, match="minimum value|maximum value|whole number"):
        client.predict("Red Things", k, api_name="/search_category")


@pytest.mark.slow
def test_non_image_upload_gets_a_message(client, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(AppError, match="notes.txt is not an image"):
        client.predict(handle_file(str(path)), api_name="/classify_image")


@pytest.mark.slow
def test_huge_image_gets_a_message(client, tmp_path):
    path = tmp_path / "huge.png"  # 81 megapixels, a few hundred kB on disk
    Image.new("L", (9000, 9000), 128).save(path, optimize=True)
    with pytest.raises(AppError, match="megapixels"):
        client.predict(handle_file(str(path)), api_name="/classify_image")


@pytest.mark.slow
def test_damaged_image_gets_a_message(client, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[:80])
    with pytest.raises(AppError, match="cut.png"):
        client.predict(handle_file(str(path)), api_name="/classify_image")


@pytest.mark.slow
def test_server_survives_bad_input(space, client):
    with pytest.raises(AppError):
        client.predict("", api_name="/search_category")
    gallery, _, _ = client.predict("Sports", 3, api_name="/search_category")
    assert len(gallery) == 3 and space.process.poll() is None


# ----- pieces without a server ----------------------------------------------------------------------------------


def test_category_tree_lists_every_node_root_to_leaf():
    tree = CategoryTree(
        [["Home", "Kitchen", "Mugs"], ["Home", "Kitchen", "Bowls"], ["Home", "Decor"], ["Toys"]]
    )
    assert tree.children() == ["Home", "Toys"]
    assert tree.children(["Home"]) == ["Decor", "Kitchen"]
    assert tree.children(["Home", "Kitchen"]) == ["Bowls", "Mugs"]
    assert tree.children(["Toys"]) == [] and tree.depth == 3
    assert tree.nodes() == [
        ("Home",),
        ("Home", "Decor"),
        ("Home", "Kitchen"),
        ("Home", "Kitchen", "Bowls"),
        ("Home", "Kitchen", "Mugs"),
        ("Toys",),
    ]


def test_attribute_text_splits_on_commas_and_lines():
    assert answers.split_attributes("colour: red, material: ceramic\nsize:  L \n\n") == [
        "colour: red",
        "material: ceramic",
        "size:  L",
    ]
    assert answers.split_attributes(None) == [] and answers.split_attributes("  ") == []


@pytest.mark.slow
def test_index_alone_brings_its_model_and_catalogue(space, tmp_path):
    (variant,) = variants.load_variants([None], [str(space.index_dirs["clip-i"])], cache_dir=tmp_path)
    assert variant.source == space.indexes["clip-i"].manifest["model"]["name_or_path"]
    assert variant.model.config.variant == variant.name == "clip-i"
    assert set(variant.category_paths) == category_nodes(space, "clip-i")
    hit = variant.index.metadata.column("product_id")[0].as_py()
    assert np.array_equal(
        np.asarray(Image.open(variant.images.path(hit)).convert("RGB")), catalogue_image(space, hit)
    )


def test_space_card_front_matter_points_at_the_app():
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(ROOT / "space" / "README.md").data
    assert card.sdk == "gradio" and (APP_PATH.parent / card.app_file).is_file()
    assert card.models and card.datasets and len(card.short_description) <= 60
    requirements = (ROOT / "space" / "requirements.txt").read_text()
    assert "gradio" in requirements and "faiss-cpu" in requirements


def test_space_requirements_are_the_packages_core_index_and_space_dependencies():
    """space/requirements.txt installs on the Hub what `pip install clip-ita[space]` installs here."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def expand(requirements: list[str]) -> set[str]:
        out = set()
        for line in requirements:
            req = Requirement(line)
            if req.name == project["name"]:  # a self-reference, clip-ita[index]
                out |= expand([r for extra in req.extras for r in project["optional-dependencies"][extra]])
            else:
                out.add(f"{req.name.lower().replace('_', '-')}{req.specifier}")
        return out

    wanted = expand([*project["dependencies"], *project["optional-dependencies"]["space"]])
    lines = (ROOT / "space" / "requirements.txt").read_text().splitlines()
    listed = expand([line for line in lines if line.strip() and not line.startswith("#")])
    assert listed == wanted


def test_command_line_reads_env_and_flags(monkeypatch):
    monkeypatch.setenv("CLIPITA_MODEL", "a, b")
    monkeypatch.setenv("CLIPITA_INDEX", "ia,ib")
    args = app.parse_args([])
    assert args.model == ["a", "b"] and args.index == ["ia", "ib"]
    args = app.parse_args(["--model", "m", "--index", "i"])
    assert args.model == ["m"] and args.index == ["i"]
    monkeypatch.delenv("CLIPITA_MODEL")
    monkeypatch.delenv("CLIPITA_INDEX")
    assert app.parse_args(["--index", "i1", "--index", "i2"]).model == [None, None]  # the indexes' models
    args = app.parse_args([])
    assert args.model[0].endswith(app.DEFAULT_MODEL) and args.index[0].endswith(app.DEFAULT_INDEX)
    with pytest.raises(SystemExit):
        app.parse_args(["--model", "a", "--model", "b", "--index", "i"])


def test_a_missing_index_is_an_error_message_not_a_traceback(tmp_path, capsys):
    assert app.main(["--index", str(tmp_path / "no-index")]) == 2
    assert "no-index is not an index folder" in capsys.readouterr().err


@pytest.mark.slow
def test_latency_benchmark_times_queries_in_process_and_through_the_api(space, capsys):
    from bench import space_latency

    assert space_latency.main(["--index", str(space.index_dirs["clip-i"]), "--queries", "2"]) == 0
    out = capsys.readouterr().out
    assert "device: " in out and "torch threads" in out
    products = len(space.indexes["clip-i"])
    assert re.search(
        rf"^clip-i: {products} products, k={answers.DEFAULT_K}, 2 queries: median [\d.]+ ms in process "
        r"\(max [\d.]+\), median [\d.]+ ms through the API \(max [\d.]+\)$",
        out,
        re.M,
    ), out
