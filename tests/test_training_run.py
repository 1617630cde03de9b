"""Whole training runs on a tiny model and catalogue: outputs, resumption after a kill, NaN, base models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel

from clipita.bootstrap import image_processor_for, train_clip_tokenizer
from clipita.training import NonFiniteLossError, export, parse_args, train, trainer
from clipita.training import checkpoints as ckpt
from tests.conftest import ROOT, TINY_TEXTS, run_clean_python
from tests.helpers.tiny_catalogue import tiny_catalogue
from tests.helpers.train_tiny import tiny_args

RUN_FLAGS = ["--max_steps", "12", "--eval_steps", "4", "--save_steps", "4"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The killed and resumed subprocesses run on one thread; the reference run must too (same float sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted 12-step run: evaluation every 4 steps, checkpoints every 4."""
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "clip-ita"
    metrics = train(parse_args(tiny_args(output_dir, *RUN_FLAGS)), dataset=tiny_catalogue())
    return output_dir, metrics


def run_helper(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "tests.helpers.train_tiny", *argv]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # a training run
def test_output_dir_is_the_model_folder_with_the_training_record(finished):
    output_dir, metrics = finished
    files = {p.name for p in output_dir.iterdir()}
    expected = {
        "config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
        "configuration_clipita.py", "modeling_clipita.py", "processing_clipita.py", "README.md",
        "training_args.json", "metrics.json", "training_curve.png",
    }  # fmt: skip
    assert expected <= files
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_clipita.CLIPITAModel"
    assert (output_dir / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = json.loads((output_dir / "training_args.json").read_text())
    assert args["max_steps"] == 12 and args["variant"] == "clip-ita"
    assert json.loads((output_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (
        "Validation" in (output_dir / "README.md").read_text()
        or "validation" in (output_dir / "README.md").read_text()
    )


@pytest.mark.slow  # a training run
def test_metrics_compare_the_best_model_with_the_untrained_one(finished):
    output_dir, metrics = finished
    validation = metrics["validation"]
    steps = [e["step"] for e in metrics["history"]["evaluations"]]
    assert steps == [0, 4, 8, 12]
    assert validation["step_0"]["step"] == 0 and validation["step_0"]["overall"]["mAP@10"] is not None
    best = validation["best"]
    assert best["step"] in (4, 8, 12) and validation["final_model"] == "best"
    assert best["overall"]["mAP@10"] == max(e["mAP@10"] for e in metrics["history"]["evaluations"][1:])
    train_figures = metrics["train"]
    assert train_figures["steps"] == 12 and train_figures["samples"] == 12 * 8
    assert train_figures["samples_per_second"] > 0 and train_figures["loss"]["last"] > 0
    # The exported weights are the best evaluation's, kept on disk under checkpoints/.
    exported = load_file(output_dir / "model.safetensors")
    kept = load_file(ckpt.best_dir(output_dir / "checkpoints", best["step"]) / ckpt.BEST_WEIGHTS)
    assert all(torch.equal(exported[k], kept[k]) for k in kept)
    last = load_file(output_dir / "checkpoints" / "checkpoint-12" / "model.safetensors")
    assert best["step"] == 12 or any(not torch.equal(exported[k], last[k]) for k in last)


@pytest.mark.slow  # a training run
def test_output_loads_as_remote_code_in_a_clean_process(finished, tmp_path):
    output_dir, _ = finished
    from modeling_clipita import CLIPITAModel
    from processing_clipita import CLIPITAProcessor

    model = CLIPITAModel.from_pretrained(output_dir)
    expected = model.encode_categories(
        ["Red Things", "Home"], processor=CLIPITAProcessor.from_pretrained(output_dir)
    )
    torch.save(torch.from_numpy(expected), tmp_path / "expected.pt")
    code = f"""
import torch
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained({str(output_dir)!r}, trust_remote_code=True)
processor = AutoProcessor.from_pretrained({str(output_dir)!r}, trust_remote_code=True)
assert type(model).__name__ == "CLIPITAModel" and type(processor).__name__ == "CLIPITAProcessor"
got = torch.from_numpy(model.encode_categories(["Red Things", "Home"]))
torch.testing.assert_close(got, torch.load({str(tmp_path / "expected.pt")!r}), atol=1e-5, rtol=1e-5)
print("loaded")
"""
    assert "loaded" in run_clean_python(code, cwd=tmp_path).stdout


@pytest.mark.slow  # a training run
def test_kill_while_saving_then_resume_reaches_the_same_weights(finished, tmp_path):
    reference_dir, reference_metrics = finished
    output_dir = tmp_path / "clip-ita"
    killed = run_helper(str(output_dir), *RUN_FLAGS, "--kill_while_saving", "8")
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoints_dir = output_dir / "checkpoints"
    assert (checkpoints_dir / "checkpoint-8.tmp" / "model.safetensors").is_file()  # half-saved...
    assert not (checkpoints_dir / "checkpoint-8").exists()  # ...never looks complete
    assert ckpt.latest_checkpoint(checkpoints_dir).name == "checkpoint-4"
    assert not (output_dir / "model.safetensors").exists()

    resumed = run_helper(str(output_dir), *RUN_FLAGS, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and not (checkpoints_dir / "checkpoint-8.tmp").exists()
    for name in ("model.safetensors", "checkpoints/checkpoint-12/model.safetensors"):
        expected, actual = load_file(reference_dir / name), load_file(output_dir / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=0, msg=f"{name}: {key}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["validation"]["best"]["step"] == reference_metrics["validation"]["best"]["step"]
    assert [loss for _, loss in metrics["history"]["loss"]] == pytest.approx(
        [loss for _, loss in reference_metrics["history"]["loss"]], abs=1e-5
    )


@pytest.mark.slow  # a training run
def test_refuses_to_start_over_an_earlier_run(finished):
    output_dir, _ = finished
    with pytest.raises(FileExistsError, match="--resume_from_checkpoint latest"):
        train(parse_args(tiny_args(output_dir, "--max_steps", "1")), dataset=tiny_catalogue())


@pytest.mark.slow  # a training run
def test_nan_loss_stops_naming_the_step_and_the_last_checkpoint(tmp_path, monkeypatch):
    step = trainer.contrastive_step
    calls = []

    def poisoned(accelerator, model, micro_batches):
        calls.append(1)
        loss = step(accelerator, model, micro_batches)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(trainer, "contrastive_step", poisoned)
    output_dir = tmp_path / "clip-ita"
    flags = ["--max_steps", "6", "--save_steps", "2", "--eval_steps", "0"]
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3.*checkpoint-2") as error:
        train(parse_args(tiny_args(output_dir, *flags)), dataset=tiny_catalogue())
    assert error.value.step == 3
    assert ckpt.latest_checkpoint(output_dir / "checkpoints").name == "checkpoint-2"
    assert not (output_dir / "model.safetensors").exists()


def tiny_clip_folder(folder):
    """A random-init CLIP with its tokenizer and image processor, saved like a Hub checkpoint."""
    tokenizer = train_clip_tokenizer(
        TINY_TEXTS + list(tiny_catalogue(48, 1)["train"]["title"]), vocab_size=600
    )
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor_for(32).save_pretrained(folder)
    return folder


@pytest.mark.slow  # a training run
def test_base_model_run_with_frozen_vision_and_the_other_knobs(tmp_path):
    """--base_model through from_clip, loaded by the catalogue loader from a saved dataset, with accumulation,
    multi-positive loss, general categories, attention pooling, checkpointing and tensorboard."""
    base = tiny_clip_folder(tmp_path / "tiny-clip")
    data = tmp_path / "catalogue"
    tiny_catalogue().save_to_disk(str(data))
    output_dir = tmp_path / "from-clip"
    flags = [
        "--output_dir", str(output_dir), "--dataset", str(data), "--base_model", str(base), "--freeze_vision",
        "--loss", "multi_positive", "--category_level", "general", "--attribute_pooling", "attention",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--gradient_checkpointing",
        "--max_steps", "2", "--eval_steps", "2", "--report_to", "tensorboard", "--warmup_steps", "0",
    ]  # fmt: skip
    metrics = train(parse_args(flags))
    assert metrics["train"]["global_batch_size"] == 8 and metrics["train"]["steps"] == 2
    config = json.loads((output_dir / "config.json").read_text())
    assert config["base_clip_model"] == str(base) and config["loss_type"] == "multi_positive"
    assert config["attribute_pooling"] == "attention"
    assert not any(key.startswith("freeze_") for key in config)  # a training choice, not the model's
    trained = load_file(output_dir / "model.safetensors")
    original = load_file(base / "model.safetensors")
    vision = [k for k in original if k.startswith("vision_model.")]
    assert vision and all(torch.equal(trained[f"clip.{k}"], original[k]) for k in vision)  # frozen
    text = [k for k in original if k.startswith("text_model.encoder")]
    assert any(not torch.equal(trained[f"clip.{k}"], original[k]) for k in text)  # fine-tuned
    assert (
        json.loads((output_dir / "tokenizer.json").read_text())["model"]["vocab"]
        == json.loads((base / "tokenizer.json").read_text())["model"]["vocab"]
    )
    assert list((output_dir / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.slow  # a training run
def test_push_to_hub_checks_then_uploads_the_model_folder_only(finished, monkeypatch):
    output_dir, _ = finished
    calls = {"create": []}

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok, **kwargs):
            calls["create"].append((repo_id, private))
            return type("Repo", (), {"repo_id": repo_id if "/" in repo_id else f"someone/{repo_id}"})()

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs
            return "https://huggingface.co/someone/clip-ita/commit/1"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    monkeypatch.setattr("clipita.hub.HfApi", FakeApi)
    args = parse_args(tiny_args(output_dir, "--push_to_hub", "--hub_private"))
    assert export.push_to_hub(output_dir, args).endswith("/commit/1")  # the release checks passed first
    assert calls["create"][0] == ("clip-ita", True)
    assert (
        calls["upload"]["folder_path"] == str(output_dir) and calls["upload"]["repo_id"] == "someone/clip-ita"
    )
    assert {"checkpoints/**", "logs/**"} <= set(calls["upload"]["ignore_patterns"])
