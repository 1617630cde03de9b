"""Model card: metadata that huggingface_hub parses, model-index EvalResults, body content, no secret leaks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image

from clipita.card import TAGS, render_model_card
from clipita.results import select_result
from tests.conftest import ROOT, tiny_model

METRICS = ("P@1", "P@5", "P@10", "mAP@5", "mAP@10", "R-precision", "R@10", "MRR", "nDCG@10")
FAKE_TOKEN = "hf_FakeTokenForTheTests0123456789abcd"
OTHER_SECRET = "plain-secret-value-42"  # not shaped like an hf_ token: found only as an env value


def fake_results(model: str = "clip-ita", dataset: str = "data/demo", shift: float = 0.0) -> dict:
    """One run of results.json in eval.py's schema with distinct values; general has no unseen roots."""
    settings = {}
    for s, setting in enumerate(("all", "general", "specific")):
        groups = {}
        for g, group in enumerate(("overall", "seen", "unseen")):
            empty = setting == "general" and group == "unseen"
            groups[group] = {
                metric: None if empty else round(0.05 + 0.3 * s + 0.1 * g + 0.01 * m - shift, 4)
                for m, metric in enumerate(METRICS)
            }
        groups["num_queries"] = {"overall": 40 - 10 * s, "seen": 30, "unseen": 0 if s == 1 else 10}
        settings[setting] = groups
    name = model.rstrip("/").split("/")[-1]
    return {
        "name": name,
        "model": model,
        "dataset": dataset,
        "split": "test",
        "num_products": 90,
        "settings": settings,
    }


def fake_eval_file(model: str = "outputs/clip-ita") -> dict:
    """results.json as eval.py writes it: the model's run on top, BM25 under "baselines"."""
    bm25 = {**fake_results(model="bm25", shift=0.05), "name": "BM25"}
    return {**fake_results(model=model), "per_depth": fake_per_depth(), "baselines": [bm25]}


def fake_per_depth() -> dict:
    """eval.py's "per_depth" of a three-level tree with distinct values (a middle-level gap: 0.11)."""
    entry = {"P@10": 0.5, "mAP@10": 0.6, "num_queries": 3}
    middle = {**entry, "mAP@10": 0.11}
    placed = {"top1": 0.25, "top3": 0.75, "num_products": 8}
    return {
        "node_scoring": "max_leaf",
        "retrieval": {
            "root": {g: entry for g in ("all", "seen", "unseen", "known_leaves", "new_leaves")},
            "depth2": {
                "all": middle,
                "seen": middle,
                "unseen": None,
                "known_leaves": middle,
                "new_leaves": None,
            },
            "leaf": {"all": entry, "seen": entry, "unseen": entry},
        },
        "placement": {d: {"known": placed, "new": placed} for d in ("root", "depth2", "leaf")},
        "path_placement": {d: {"known": placed, "new": None} for d in ("root", "depth2", "leaf")},
    }


def fake_validation(step: int, value: float) -> dict:
    scores = {metric: value for metric in METRICS}
    return {
        "step": step,
        "overall": scores,
        "seen": scores,
        "unseen": dict.fromkeys(METRICS),
        "num_queries": {"overall": 12, "seen": 12, "unseen": 0},
    }


def fake_training() -> tuple[dict, dict]:
    """train.py's training_args.json and metrics.json, in their shape (clipita.training.export)."""
    training_args = {
        "dataset": "data/demo",
        "learning_rate": 5e-4,
        "num_train_epochs": 3,
        "variant": "clip-ita",
        "category_level": "all",
    }
    metrics = {
        "category_level": "all",
        "validation": {
            "step_0": fake_validation(0, 0.02),
            "best": fake_validation(120, 0.41),
            "last": fake_validation(200, 0.4),
            "final_model": "best",
        },
        "train": {"steps": 200, "loss": {"first": 4.1, "last": 1.25}},
        "history": {"loss": [[step, 4.0 - 0.01 * step] for step in range(200)]},
    }
    return training_args, metrics


def save_tiny_release(folder):
    """A tiny CLIP-ITA with weights moved away from their initial values, saved with its processor."""
    # imported here: test_no_token_reaches_the_folder_or_the_logs imports this module in a fresh process
    from clipita.bootstrap import add_sentence_transformers_files, register_auto_classes

    register_auto_classes()  # the folder gets its auto_map and code files, as a release needs
    model, processor = tiny_model()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    add_sentence_transformers_files(folder)
    return model, processor


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release") / "clip-ita"
    model, processor = save_tiny_release(folder)
    plot = tmp_path_factory.mktemp("plots") / "ablation.png"
    Image.new("RGB", (16, 8), "white").save(plot)
    Image.new("RGB", (16, 8), "white").save(folder / "training_curve.png")  # as train.py leaves it
    training_args, metrics = fake_training()
    results = fake_eval_file()
    render_model_card(
        folder,
        model_config=model.config,
        training_args=training_args,
        metrics=metrics,
        eval_results=results,
        ablation_plot=str(plot),
        repo_id="org/clip-ita",
    )
    return folder, results


def test_card_metadata_parses_with_huggingface_hub(release):
    folder, _ = release
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert set(TAGS) <= set(card.data.tags) and "clip-ita" in card.data.tags
    assert card.data.base_model is None  # from scratch: no base CLIP to credit
    assert card.data.datasets is None  # the synthetic catalogue is not a Hub dataset
    assert card.data.language == "en"  # the synthetic catalogue's language
    assert card.data.model_name == "clip-ita"


def test_model_index_round_trips_to_eval_results(release):
    folder, results = release
    name, eval_results = model_index_to_eval_results(metadata_load(folder / "README.md")["model-index"])
    assert name == "clip-ita"
    by_key = {(r.dataset_config, r.metric_type): r for r in eval_results}
    expected = {
        (setting, metric, group): value
        for setting, groups in results["settings"].items()
        for group in ("overall", "seen", "unseen")
        for metric, value in groups[group].items()
        if value is not None
    }
    assert len(eval_results) == len(expected) == 3 * 3 * 9 - 9  # general/unseen is empty: left out
    for (setting, metric, group), value in expected.items():
        metric_id = {"P@10": "precision_at_10", "mAP@5": "map_at_5", "R-precision": "r_precision"}.get(metric)
        if metric_id is None:
            continue
        key = (setting, metric_id if group == "overall" else f"{metric_id}_{group}")
        assert by_key[key].metric_value == pytest.approx(round(100 * value, 2))
        assert by_key[key].dataset_split == "test"
        assert by_key[key].task_type == "zero-shot-image-classification"
    assert not any(r.dataset_config == "general" and r.metric_type.endswith("_unseen") for r in eval_results)


def test_card_body_shows_usage_results_plot_and_citation(release):
    folder, results = release
    text = (folder / "README.md").read_text()
    assert 'AutoModel.from_pretrained("org/clip-ita", trust_remote_code=True)' in text
    assert "model.encode_categories(" in text and "model.encode_products(" in text
    assert "attributes=[[" in text and "titles=[" in text  # CLIP-ITA needs all three modalities
    assert 'SentenceTransformer("org/clip-ita", trust_remote_code=True)' in text and '"title": "Red' in text
    specific_unseen = results["settings"]["specific"]["unseen"]
    row = [f"{100 * specific_unseen[m]:.2f}" for m in METRICS]
    assert "| specific | unseen | 10 | " + " | ".join(row) + " |" in text
    assert "| general | unseen | 0 | " + " | ".join(["–"] * 9) + " |" in text
    assert (folder / "ablation.png").is_file() and "](ablation.png)" in text
    assert "](training_curve.png)" in text
    assert "not comparable with the paper's XMarket numbers" in text
    assert "Test results of this checkpoint (`clip-ita`)" in text and "(90 products)" in text
    assert "### Per depth of the category tree" in text and "(node scoring: max_leaf)" in text
    assert "| depth2 | 50.0 / 11.0 | 50.0 / 11.0 | - | 50.0 / 11.0 | - |" in text  # the middle gap shows
    assert "| leaf | 25.0 / 75.0 | 25.0 / 75.0 | 25.0 / 75.0 | - |" in text
    assert "| BM25 | 2.00 / 4.00 |" in text and "| clip-ita | 7.00 / 9.00 |" in text  # all: P@10 / mAP@10
    assert "| `learning_rate` | 0.0005 |" in text and "<summary>Every training argument" in text
    assert "| trained against | a random category on each product's path (all) |" in text
    assert "| steps | 200 |" in text and "| final model | best |" in text
    assert "| best (step 120) | overall | 12 | " + " | ".join(["41.00"] * 9) + " |" in text
    assert "| step_0 | unseen | 0 | " + " | ".join(["–"] * 9) + " |" in text
    assert "| `validation/final_model` | best |" in text and "| `train/loss/last` | 1.25 |" in text
    assert "| `history/loss` | (200 values) |" in text
    for fact in ("Hendriksen, Mariya", "de Rijke, Maarten", "ECIR 2022", "13185", "289--303", "2112.11294"):
        assert fact in text


def test_card_credits_base_model_and_hub_dataset(release, tmp_path):
    folder, _ = release
    config = json.loads((folder / "config.json").read_text())
    config["base_clip_model"] = "openai/clip-vit-base-patch32"
    card = render_model_card(
        tmp_path,
        model_config=config,
        training_args={"dataset": "someorg/xmarket-us"},
        eval_results=fake_results(dataset="someorg/xmarket-us"),
    )
    assert ModelCard.load(tmp_path / "README.md").data.base_model == "openai/clip-vit-base-patch32"
    assert card.data.datasets == ["someorg/xmarket-us"]
    assert card.data.language is None  # unknown for a user's catalogue
    assert {r.dataset_type for r in card.data.eval_results} == {"someorg/xmarket-us"}
    assert "synthetic" not in card.text.lower()
    assert "openai/clip-vit-base-patch32" in card.text


def test_card_without_results_says_how_to_add_them(release, tmp_path):
    folder, _ = release
    card = render_model_card(tmp_path, model_config=json.loads((folder / "config.json").read_text()))
    assert card.data.eval_results is None and "model-index" not in metadata_load(tmp_path / "README.md")
    assert "release.py --eval_results" in card.text


def test_bad_eval_results_name_the_field(release, tmp_path):
    folder, _ = release
    config = json.loads((folder / "config.json").read_text())
    results = fake_results()
    results["settings"]["specific"]["seen"]["P@10"] = 42.0  # a percentage where a fraction belongs
    with pytest.raises(ValueError, match=r"settings\.specific\.seen\.P@10"):
        render_model_card(tmp_path, model_config=config, eval_results=results)
    with pytest.raises(ValueError, match="several models.*bm25"):
        render_model_card(
            tmp_path, model_config=config, eval_results={"a": fake_results(), "bm25": fake_results()}
        )
    assert select_result({"clip-ita": fake_results()})["model"] == "clip-ita"
    results = fake_eval_file()
    results["baselines"][0]["settings"]["all"]["overall"]["MRR"] = -0.1
    with pytest.raises(ValueError, match=r"baselines\[0\]\.settings\.all\.overall\.MRR"):
        render_model_card(tmp_path, model_config=config, eval_results=results)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        render_model_card(tmp_path, model_config=config, ablation_plot=str(tmp_path / "missing.png"))


@pytest.mark.slow  # a fresh interpreter
def test_no_token_reaches_the_folder_or_the_logs(release, tmp_path):
    """Render in a process whose environment holds tokens, with a token planted in the inputs too."""
    folder = tmp_path / "clip-ita"
    shutil.copytree(release[0], folder)
    (folder / "README.md").unlink()
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from clipita.card import render_model_card
from clipita.hub import check_release_folder
from tests.test_card import fake_results, fake_training
args, metrics = fake_training()
args.update(hub_token={FAKE_TOKEN!r}, push_command="hf upload --token " + {FAKE_TOKEN!r})
metrics["note"] = "trained by " + {OTHER_SECRET!r}
results = fake_results(model={OTHER_SECRET!r})
config = json.load(open({str(folder / "config.json")!r}))
render_model_card({str(folder)!r}, model_config=config, training_args=args, metrics=metrics, eval_results=results)
print(json.dumps(check_release_folder({str(folder)!r})))
"""
    env = {
        **os.environ,
        "HF_TOKEN": FAKE_TOKEN,
        "HUGGING_FACE_HUB_TOKEN": OTHER_SECRET,
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    for secret in (FAKE_TOKEN, OTHER_SECRET):
        assert secret not in done.stdout + done.stderr
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"{secret[:5]}... leaked into {path.name}"
    assert "<redacted>" in (folder / "README.md").read_text()
