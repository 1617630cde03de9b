"""Release folder checks, loading the folder as a Hub user would, the thin upload, and release.py."""

from __future__ import annotations

import json
import pickle
import re
import shutil

import numpy as np
import pytest
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.repocard import metadata_load, metadata_save
from PIL import Image

import release as release_cli
from clipita import hub, secrets
from clipita.card import render_model_card
from clipita.hub import ReleaseError, check_index_folder, check_release_folder, push_folder
from clipita.index import CatalogueIndex
from tests.conftest import run_clean_python
from tests.test_card import FAKE_TOKEN, fake_eval_file, fake_training, save_tiny_release

CATEGORIES = ["Ceramic Mugs", "Home > Kitchen > Glass Mugs", "Kids T-Shirts"]


def product_inputs():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    titles = ["red ceramic mug", "organic cotton kids t-shirt", "glass mug"]
    attributes = [["colour: red", "material: ceramic"], ["audience: kids"], []]
    return images, titles, attributes


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release") / "clip-ita"
    model, processor = save_tiny_release(folder)
    training_args, metrics = fake_training()
    render_model_card(folder, model_config=model.config, training_args=training_args, metrics=metrics)
    (folder / "training_args.json").write_text(json.dumps(training_args))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder, model, processor


@pytest.fixture
def folder(built, tmp_path):
    """A fresh copy of the release folder that a test may damage."""
    return shutil.copytree(built[0], tmp_path / "clip-ita")


@pytest.fixture
def index_dir(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(6, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    rows = [
        {
            "product_id": str(i),
            "title": f"mug {i}",
            "category": ["Home", "Mugs"],
            "attributes": ["colour: red"],
        }
        for i in range(6)
    ]
    index = CatalogueIndex.build(
        embeddings, rows, kind="flat", progress=False, model_info={"name_or_path": "x"}
    )
    return index.save(tmp_path / "index")


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records what would be sent (the Hub is unreachable here)."""

    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"


@pytest.fixture
def hf_api(monkeypatch):
    RecordingHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    return RecordingHfApi


def test_saved_folder_is_ready(built):
    assert check_release_folder(built[0]) == []


def drop_auto_map(folder, file_name, key):
    config = json.loads((folder / file_name).read_text())
    del config["auto_map"][key]
    (folder / file_name).write_text(json.dumps(config))


def plant_image_link(folder):
    readme = folder / "README.md"
    readme.write_text(readme.read_text() + "\n![plot](plots/ablation.png)\n")


def break_model_index(folder):
    readme = folder / "README.md"
    readme.write_text(
        readme.read_text().replace("license: apache-2.0", "license: apache-2.0\nmodel-index: 3", 1)
    )


def model_index_with(folder, metric: dict):
    """Replace the card's model-index by one holding `metric`."""
    data = metadata_load(folder / "README.md")
    data["model-index"] = [
        {
            "name": "clip-ita",
            "results": [
                {
                    "task": {"type": "zero-shot-image-classification"},
                    "dataset": {"type": "demo", "name": "demo"},
                    "metrics": [metric],
                }
            ],
        }
    ]
    metadata_save(folder / "README.md", data)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda f: (f / "pytorch_model.bin").write_bytes(b"\x80\x04pickle"), "pytorch_model.bin"),
        (
            lambda f: (
                (f / "checkpoint-5").mkdir()
                or (f / "checkpoint-5" / "optimizer.pt").write_bytes(pickle.dumps({"step": 5}))
            ),
            "optimizer.pt",
        ),
        (lambda f: drop_auto_map(f, "config.json", "AutoModel"), "auto_map lacks AutoModel"),
        (
            lambda f: drop_auto_map(f, "processor_config.json", "AutoProcessor"),
            "auto_map lacks AutoProcessor",
        ),
        (lambda f: (f / "modeling_clipita.py").unlink(), "modeling_clipita.py"),
        (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda f: (f / "tokenizer.json").unlink(), "tokenizer files are missing"),
        (lambda f: (f / "README.md").unlink(), "README.md (the model card) is missing"),
        (plant_image_link, "plots/ablation.png"),
        (break_model_index, "metadata does not parse"),
        (
            lambda f: model_index_with(f, {"type": "precision_at_10", "value": "about 40 %"}),
            "non-numeric values for precision_at_10",
        ),
        (
            lambda f: model_index_with(f, {"type": "precision_at_10", "value": 40.0, "unit": "%"}),
            "fields EvalResult does not keep",
        ),
        (lambda f: (f / "notes.txt").write_text(f"token {FAKE_TOKEN}"), "notes.txt contains"),
    ],
)
def test_check_finds_what_breaks_a_release(folder, damage, expected):
    damage(folder)
    problems = check_release_folder(folder)
    assert any(expected in p for p in problems), problems


def test_env_token_is_found_but_never_printed(folder, monkeypatch):
    secret = "some-environment-secret-1"
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", secret)
    (folder / "config.json").write_text(
        (folder / "config.json").read_text().replace("}", f', "x": "{secret}"}}', 1)
    )
    problems = check_release_folder(folder)
    assert any(p.startswith("config.json contains") for p in problems), problems
    assert not any(secret in p for p in problems)


def test_secret_scan_reads_big_files_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(secrets, "SCAN_CHUNK", 1000)
    filler = bytes(range(256)) * 4
    (tmp_path / "embeddings.npy").write_bytes(
        filler[:990] + f" {FAKE_TOKEN} ".encode() + filler
    )  # across 1000
    (tmp_path / "code.py").write_text("from huggingface_hub import hf_hub_download_with_a_long_name_abcdef\n")
    problems = hub.scan_for_secrets(tmp_path)
    assert problems == ["embeddings.npy contains a string shaped like a Hugging Face access token (hf_...)"]


@pytest.mark.slow  # a fresh interpreter
def test_folder_loads_offline_in_a_clean_process(built, tmp_path, monkeypatch):
    folder, model, processor = built
    images, titles, attributes = product_inputs()
    expected_categories = model.encode_categories(CATEGORIES, processor=processor)
    expected_products = model.encode_products(images, titles, attributes, processor=processor)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    np.save(tmp_path / "inputs.npy", np.stack([np.asarray(image) for image in images]))
    code = f"""
import numpy as np
from PIL import Image
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
images = [Image.fromarray(a) for a in np.load("inputs.npy")]
np.save("categories.npy", model.encode_categories({CATEGORIES!r}, processor=processor))
np.save("products.npy", model.encode_products(images, {titles!r}, {attributes!r}, processor=processor))
print(type(model).__module__)
"""
    # The card's own usage example must run too, on this folder and with these images.
    usage = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL)[0]
    usage = usage.replace('"your-org/clip-ita"', repr(str(folder)))
    usage = re.sub(r'Image\.open\("[^"]+"\)', "images[0]", usage)
    code += usage + "\nprint('usage example:', scores.shape, ranking.shape)\n"
    done = run_clean_python(code, cwd=tmp_path)
    assert "transformers_modules" in done.stdout  # the folder's code ran, not the checkout's
    assert "usage example: (2, 2) (2, 2)" in done.stdout
    assert np.allclose(np.load(tmp_path / "categories.npy"), expected_categories, atol=1e-5)
    assert np.allclose(np.load(tmp_path / "products.npy"), expected_products, atol=1e-5)


def test_load_check_reports_broken_remote_code(folder):
    with (folder / "modeling_clipita.py").open("a") as f:
        f.write('\nraise ImportError("deliberately broken remote code")\n')
    assert check_release_folder(folder) == []  # the file still parses: only loading it shows the fault
    problems = hub.load_check(folder)
    assert len(problems) == 1 and "deliberately broken remote code" in problems[0], problems


def test_push_folder_checks_then_uploads_model_and_index(folder, index_dir, hf_api):
    urls = push_folder(
        folder, "org/clip-ita", private=True, index_dir=index_dir, index_repo_id="org/clip-ita-index"
    )
    calls = hf_api.calls
    assert [name for name, _ in calls] == ["create_repo", "upload_folder", "create_repo", "upload_folder"]
    assert calls[0][1] == {"repo_id": "org/clip-ita", "private": True, "exist_ok": True}
    assert calls[1][1]["repo_id"] == "org/clip-ita" and calls[1][1]["folder_path"] == str(folder)
    assert calls[1][1].get("repo_type") is None  # a model repo
    assert calls[2][1]["repo_type"] == "dataset" and calls[2][1]["repo_id"] == "org/clip-ita-index"
    assert calls[3][1]["folder_path"] == str(index_dir) and calls[3][1]["repo_type"] == "dataset"
    assert not any("token" in kwargs for _, kwargs in calls)  # huggingface_hub finds the token itself
    assert urls == {
        "model": "https://huggingface.co/org/clip-ita/commit/0",
        "index": "https://huggingface.co/org/clip-ita-index/commit/0",
    }


def test_training_artefacts_are_neither_checked_nor_uploaded(folder, hf_api):
    (folder / "checkpoints" / "step-5").mkdir(parents=True)
    (folder / "checkpoints" / "step-5" / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    (folder / "logs").mkdir()
    (folder / "logs" / "events.out").write_bytes(b"x")
    assert check_release_folder(folder) == []
    assert not any(f.startswith(("checkpoints/", "logs/")) for f in hub.release_files(folder))
    push_folder(folder, "org/clip-ita")
    assert hf_api.calls[1][1]["ignore_patterns"] == ["checkpoints/**", "logs/**"]


def test_push_folder_uploads_nothing_when_a_check_fails(folder, index_dir, hf_api):
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ReleaseError, match="training_args.bin"):
        push_folder(folder, "org/clip-ita")
    (folder / "training_args.bin").unlink()
    (index_dir / "manifest.json").unlink()
    with pytest.raises(ReleaseError, match="manifest.json"):
        push_folder(folder, "org/clip-ita", index_dir=index_dir, index_repo_id="org/clip-ita-index")
    with pytest.raises(ValueError, match="both index_dir and index_repo_id"):
        push_folder(folder, "org/clip-ita", index_dir=index_dir)
    assert hf_api.calls == []


def test_release_cli_renders_checks_and_pushes_only_when_asked(folder, index_dir, tmp_path, hf_api, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(fake_eval_file(model=str(folder))))  # found by its path: no --eval_model
    plot = tmp_path / "ablation.png"
    Image.new("RGB", (8, 8)).save(plot)
    args = ["--model", str(folder), "--eval_results", str(results)]

    assert release_cli.main(args + ["--ablation_plot", str(plot), "--index", str(index_dir)]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "ready for the Hub" in out and "not uploaded" in out
    assert hf_api.calls == []
    card = ModelCard.load(folder / "README.md")
    assert len(card.data.eval_results) == 3 * 3 * 9 - 9
    assert "| best (step 120) | overall | 12 | 41.00 |" in card.text  # training metrics found in the folder
    assert (folder / "ablation.png").is_file() and "| BM25 |" in card.text
    assert check_index_folder(index_dir) == []
    index_card = DatasetCard.load(index_dir / "README.md")
    assert (
        index_card.data.license == "apache-2.0"
        and index_card.data.configs[0]["data_files"] == "metadata.parquet"
    )
    assert "6 products" in index_card.text and 'faiss.read_index(f"{path}/index.faiss")' in index_card.text

    assert release_cli.main(args + ["--push", "--repo_id", "org/clip-ita", "--skip_load_check"]) == 0
    assert [(name, kwargs["repo_id"]) for name, kwargs in hf_api.calls] == [
        ("create_repo", "org/clip-ita"),
        ("upload_folder", "org/clip-ita"),
    ]
    assert 'from_pretrained("org/clip-ita"' in (folder / "README.md").read_text()


def test_release_cli_refuses_a_broken_folder(folder, tmp_path, hf_api, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(fake_eval_file(model="elsewhere/v2")))  # no run of this folder
    with pytest.raises(SystemExit, match=r"no single run of .*\['v2', 'BM25'\].*--eval_model"):
        release_cli.main(["--model", str(folder), "--eval_results", str(results)])
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [0.0]}))
    args = ["--model", str(folder), "--eval_results", str(results), "--eval_model", "v2"]
    assert release_cli.main(args + ["--push", "--repo_id", "org/clip-ita"]) == 1
    assert "pytorch_model.bin" in capsys.readouterr().err and hf_api.calls == []
