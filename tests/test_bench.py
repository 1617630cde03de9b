"""Smoke tests of the model benchmarks: each --quick run, on the tiniest setting, exits 0 and prints its
figures, the machine and a `ratio` last line. No timing is asserted: speed is the scripts' output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RATIO = re.compile(r"^ratio (\d+(?:\.\d+)?(?:e-?\d+)?)$")
TINY = ["--quick", "--threads", "1", "--warmup", "0"]


def run_bench(script: str, *flags: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *TINY, *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    match = RATIO.match(lines[-1])
    assert match, f"last line is not 'ratio <number>': {lines[-1]!r}"
    assert float(match.group(1)) > 0
    machine = "\n".join(lines)
    for field in ("cpu:", "torch threads 1", "torch ", "device: cpu"):
        assert field in machine, f"machine description lacks {field!r}"
    return lines


def figures(lines: list[str], label: str) -> list[float]:
    """The numbers on the first line that starts with `label`."""
    line = next((line for line in lines if line.startswith(label)), None)
    assert line is not None, f"no line starting with {label!r} in:\n" + "\n".join(lines)
    return [float(x) for x in re.findall(r"\d+\.\d+", line[len(label) :])]


@pytest.mark.slow  # a benchmark run
def test_encode_throughput_quick():
    lines = run_bench("encode_throughput.py", "--num-products", "4", "--batch-size", "2", "--repeats", "1")
    for label in ("products/s end-to-end", "products/s processing only", "products/s forward only"):
        ours, theirs, ratio, low, high = figures(lines, label)
        assert ours > 0 and theirs > 0 and low <= ratio <= high
    assert len(figures(lines, "categories/s end-to-end")) == 5
    assert float(lines[-1].split()[1]) == figures(lines, "products/s end-to-end")[2]


@pytest.fixture(scope="module")
def small_catalogue(tmp_path_factory) -> Path:
    """A 60-product catalogue from the demo generator: batches with the demo's kind of repetition."""
    from clipita.catalogue import generate_catalogue

    return generate_catalogue(tmp_path_factory.mktemp("catalogue"), num_products=60, progress=False)


@pytest.mark.slow  # a benchmark run
def test_train_throughput_quick_checkpointing_reaches_the_clip_towers(small_catalogue):
    lines = run_bench(
        "train_throughput.py",
        *("--batch-size", "4", "--steps", "1", "--checkpointing", "on", "--levels", "general"),
        *("--dataset", str(small_catalogue)),
    )
    rows = {}
    for line in lines:
        parts = re.match(
            r"^on\s+general\s+(CLIP-ITA, whole towers|CLIP-ITA, every text|CLIP-ITA|plain CLIP)\s+\d.*"
            r"\s(\d+) / (\d+) \((\d+)/(\d+)\)$",
            line,
        )
        if parts:
            rows[parts.group(1)] = tuple(int(x) for x in parts.groups()[1:])
    assert set(rows) == {"CLIP-ITA", "CLIP-ITA, whole towers", "CLIP-ITA, every text", "plain CLIP"}
    for model, (forward, step, checkpointed, layers) in rows.items():
        assert checkpointed == layers, model
        # the pooled-token last layer (1 of layers / 2 per tower call) is not recomputed
        if model == "CLIP-ITA":
            assert step * layers == forward * (2 * layers - 2), model
        else:  # every tower layer is checkpointed, so backward runs each layer's forward once more
            assert step == 2 * forward, model
    # Encoding every text runs the towers four times (image, title, attributes, category), plain CLIP twice;
    # unique-text encoding runs the text tower once per length bucket of the step's distinct texts.
    assert rows["CLIP-ITA, every text"][0] == 2 * rows["plain CLIP"][0]
    assert rows["plain CLIP"][0] <= rows["CLIP-ITA"][0] <= rows["CLIP-ITA, every text"][0]
    assert rows["CLIP-ITA"][0] == rows["CLIP-ITA, whole towers"][0]
    # "general": the batch's 4 category names come from a few roots, so deduplication removes some
    removed = next(line for line in lines if line.startswith("general "))
    assert re.search(r"\d+ / \d+ \(\d+%\)", removed)
    samples = figures(lines, "CLIP-ITA / plain, level general, checkpointing on: samples/s")
    assert float(lines[-1].split()[1]) == samples[0]
    assert any(line.startswith("data pipeline, level general:") for line in lines)


@pytest.mark.slow  # a benchmark run
def test_cached_features_quick(small_catalogue):
    lines = run_bench(
        "cached_features.py", "--products", "8", "--batch-size", "4", "--dataset", str(small_catalogue)
    )
    epochs = [line.split() for line in lines if re.match(r"^(uncached|cached)\s+\d+\s", line)]
    assert [(side, epoch) for side, epoch, *_ in epochs] == [
        ("uncached", "0"), ("uncached", "1"), ("cached", "0"), ("cached", "1")
    ]  # fmt: skip
    assert figures(lines, "first (caching) epoch / the same epoch uncached: time")[0] > 0
    assert re.search(
        r"\(8 image, \d+ text computed\)", next(x for x in lines if x.startswith("features stored"))
    )


@pytest.mark.slow  # a benchmark run
def test_flops_quick():
    lines = run_bench(
        "flops.py",
        *("--count-configs", "default", "--count-products", "2", "--num-products", "4"),
        *("--batch-size", "2", "--repeats", "1", "--matmul-size", "128"),
    )
    row = next(line for line in lines if line.startswith("default "))
    assert re.search(r"\d+(\.\d+)? [kMG]\b", row), row
    assert any(line.startswith("machine: 128x128 float32 matmul") for line in lines)
    assert any(line.startswith("utilisation: forward") for line in lines)


@pytest.mark.slow  # a benchmark run
def test_flop_counts_split_by_pass():
    """The per-pass counts add up, and ViT-B/32's image pass costs what the architecture says."""
    import torch

    from bench.common import build_model, synthetic_category_names, synthetic_products
    from bench.flops import flops_per_pass

    model, processor = build_model("default")
    per_pass = flops_per_pass(
        model.eval(), processor, synthetic_products(2), synthetic_category_names(2), torch.device("cpu")
    )
    parts = per_pass["image"] + per_pass["title"] + per_pass["attributes"] + per_pass["heads"]
    assert per_pass["product"] == pytest.approx(parts)
    assert min(per_pass.values()) > 0
    # default: 64 px, patch 8 -> 64 patches + CLS; 3 layers of width 128 (MLP 512), the last one for CLS only
    tokens, width, layers = 65, 128, 3
    linear = 2 * tokens * (4 * width * width + 2 * width * 4 * width) * (layers - 1)
    attention = 2 * 2 * tokens * tokens * width * (layers - 1)
    last = (
        2 * tokens * 2 * width * width
        + 2 * (2 * width * width + 2 * width * 4 * width)
        + 2 * 2 * tokens * width
    )
    patch = 2 * 64 * (3 * 8 * 8) * width
    assert per_pass["image"] == pytest.approx(linear + attention + last + patch + 2 * width * width, rel=1e-6)


@pytest.mark.slow  # a benchmark run
def test_onnx_throughput_quick():
    pytest.importorskip("onnxruntime")
    lines = run_bench("onnx_throughput.py", "--num-products", "4", "--batch-size", "2", "--repeats", "1")
    for label in ("products/s end-to-end", "products/s forward only", "categories/s end-to-end"):
        # PyTorch, fp32, int8 dynamic, int8 mixed, int8 weight-only; then fp32's ratio and range
        *speeds, ratio, low, high = figures(lines, label)[:8]
        assert len(speeds) == 5 and min(speeds) > 0 and low <= ratio <= high
    assert float(lines[-1].split()[1]) == figures(lines, "products/s end-to-end")[5]
    difference = next(line for line in lines if line.startswith("max abs difference"))
    onnx_diff = float(re.search(r"onnx (\S+),", difference).group(1))
    assert onnx_diff <= 1e-4  # the float export is the model


@pytest.mark.slow  # a benchmark run
def test_onnx_int8_recall_quick(tmp_path):
    pytest.importorskip("onnxruntime")
    from clipita.catalogue import generate_catalogue
    from tests.test_card import save_tiny_release

    save_tiny_release(tmp_path / "model")
    generate_catalogue(tmp_path / "catalogue", num_products=150, progress=False)
    done = subprocess.run(
        [sys.executable, "bench/onnx_int8_recall.py", "--quick", "--threads", "1"]
        + [
            "--model",
            str(tmp_path / "model"),
            "--dataset",
            str(tmp_path / "catalogue"),
            "--batch-size",
            "16",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert RATIO.match(lines[-1]) and 0 < float(lines[-1].split()[1]) <= 1
    torch_row, fp32_row = figures(lines, "PyTorch"), figures(lines, "ONNX fp32")
    assert 0 < figures(lines, "int8 w-only")[0] <= 1 and 0 < figures(lines, "int8 mixed")[0] <= 1
    assert torch_row[0] == 1.0 and fp32_row[0] == 1.0  # the float export returns PyTorch's top 10
    assert not (tmp_path / "model" / "onnx").exists()  # the bench exports into a copy


@pytest.mark.slow  # a benchmark run
def test_onnx_int8_trials_run_on_a_tiny_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from clipita.catalogue import generate_catalogue
    from tests.test_card import save_tiny_release

    save_tiny_release(tmp_path / "model")
    generate_catalogue(tmp_path / "catalogue", num_products=150, progress=False)
    command = [sys.executable, "bench/onnx_int8_trials.py", "--model", str(tmp_path / "model")]
    command += ["--dataset", str(tmp_path / "catalogue"), "--calibration-count", "32", "--threads", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    for label in (
        "dynamic, every group int8",
        "   + text.L0.* (= mixed)",
        "   train split, Percentile, all int8",
    ):
        recall, products, categories = figures(lines, label)[-3:]
        assert 0 < recall <= 1 and products >= 0 and categories >= 0
    assert not (tmp_path / "model" / "onnx").exists()  # the bench exports into a copy
