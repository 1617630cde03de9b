"""What a careless or hostile user sends, and what each command answers (issue #18 items 6-10, #14 item 5).

One table: each row is an input (built by its setup in a fresh folder), the command or function it goes
to, the one-line message expected and the exit status (2: a user error; 0: skipped, counted and
reported; "refused": the Space answers with a message instead of a result). A new case is one row.
Cases a row cannot hold (a resumed training run, the command lines as a user runs them) follow the table.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
from PIL import Image

import search as search_cli
from clipita.bootstrap import build_default_model, register_auto_classes
from clipita.catalogue import generate_catalogue
from clipita.cli import check_catalogue, run_command
from clipita.index import encode_to_shards
from clipita.loading import weights_sha256
from tests.conftest import ROOT, TINY_TEXTS


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Two 32-d models with different weights (a, b), a catalogue, and the index model a built of it."""
    root = tmp_path_factory.mktemp("bad_input")
    generate_catalogue(root / "catalogue", num_products=60, image_size=32, progress=False)
    register_auto_classes()
    for name, seed in (("a", 0), ("b", 1)):
        model, processor = build_default_model(TINY_TEXTS, hidden_size=32, layers=1, image_size=32, seed=seed)
        model.save_pretrained(root / f"model-{name}")
        processor.save_pretrained(root / f"model-{name}")
    build = [
        "build",
        "--model",
        str(root / "model-a"),
        "--dataset",
        str(root / "catalogue"),
        "--split",
        "test",
    ]
    assert search_cli.main([*build, "--output", str(root / "index")]) == 0
    return root


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


def _png(folder: Path, name: str) -> str:
    Image.new("RGB", (8, 8), "red").save(folder / name)
    return name


def image_folder(tmp: Path, lines: list[bytes], csv: bytes | None = None) -> Path:
    """A catalogue folder: train/ with these metadata.jsonl lines (or this metadata.csv) and 3 images."""
    train = tmp / "cat" / "train"
    train.mkdir(parents=True)
    for i in range(3):
        _png(train, f"{i}.png")
    if csv is not None:
        (train / "metadata.csv").write_bytes(csv)
    else:
        (train / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return tmp / "cat"


def row(pid: str, image: int, category: str = "Home > Mugs") -> bytes:
    return json.dumps(
        {"file_name": f"{image}.png", "product_id": pid, "title": "t", "attributes": [], "category": category}
    ).encode()


def empty_test_split(tmp: Path) -> Path:
    """train is fine; every test row names an image that is not there, so cleaning empties the split."""
    folder = image_folder(tmp, [row("a", 0), row("b", 1), row("c", 2, "Home > Bowls")])
    (folder / "test").mkdir()
    (folder / "test" / "metadata.jsonl").write_text(
        "".join(
            json.dumps(
                {"file_name": f"gone{i}.png", "title": "", "attributes": [], "category": "Home > Mugs"}
            )
            + "\n"
            for i in range(3)
        )
    )
    return folder


def copy_with(world: Path, tmp: Path, name: str, damage: Callable[[Path], None]) -> Path:
    folder = shutil.copytree(world / name, tmp / name)
    damage(folder)
    return folder


def truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def earlier_run(tmp: Path) -> Path:
    checkpoint = tmp / "run" / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "COMPLETE").write_text("")
    return tmp / "run"


def unfinished_encode_of_old_weights(world: Path, tmp: Path) -> Path:
    """An index folder whose unfinished encode was made by model-a's folder before it was retrained."""
    out = tmp / "index"
    fingerprint = {"name_or_path": str((world / "model-a").resolve()), "weights_sha256": "0" * 64}
    encode_to_shards([], lambda rows: None, out / "encode", fingerprint=fingerprint, progress=False)
    return out


# ---------------------------------------------------------------------------------------------------------
# Commands: each returns (exit status, what it printed)
# ---------------------------------------------------------------------------------------------------------


def data_cli(argv, capsys):
    return check_catalogue(argv), capsys.readouterr()


def train_cli(argv, capsys):
    train = importlib.import_module("train")
    return _exit_status(lambda: run_command(lambda: train.main(argv))), capsys.readouterr()


def eval_cli(argv, capsys):
    evaluate = importlib.import_module("eval")
    return _exit_status(lambda: run_command(lambda: evaluate.main(argv))), capsys.readouterr()


def search_query(argv, capsys):
    return search_cli.main(argv), capsys.readouterr()


def space_cli(argv, capsys):
    from space import app

    return app.main(argv), capsys.readouterr()


def space_search(k, capsys):
    from space.answers import BadInput, search_category

    try:
        search_category(None, "Mugs", k)
    except BadInput as refusal:
        return "refused", _Printed("", refusal.message)
    return 0, capsys.readouterr()


@dataclass
class _Printed:
    out: str
    err: str


def _exit_status(run: Callable[[], int]) -> int:
    try:
        return run()
    except SystemExit as exit:  # argparse's parser.error
        return exit.code


# ---------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    command: Callable
    argv: Callable[[Path, Path], object]  # (world, tmp) -> the command's input
    message: str  # a regex the one line must match
    status: int | str
    stream: str = "err"


TRAIN = ["--report_to", "none", "--hidden_size", "32", "--num_hidden_layers", "1", "--image_size", "32"]

CASES = [
    # the catalogue loader, `python -m clipita.data`
    Case("data: dataset path that does not exist", data_cli, lambda w, t: ["--dataset", "no/such/folder"],
         r"^error: no/such/folder: no such file or folder", 2),
    Case("data: metadata.jsonl line that is valid JSON but not an object", data_cli,
         lambda w, t: ["--dataset", str(image_folder(t, [row("a", 0), b"[1, 2]", row("c", 2)]))],
         r"1 malformed line in metadata.jsonl \(not a JSON object but list\) \(ids: line 2\)", 0, "out"),
    Case("data: metadata.jsonl line with a byte that is not UTF-8", data_cli,
         lambda w, t: ["--dataset", str(image_folder(t, [row("a", 0), b'{"title": "caf\xe9"}', row("c", 2)]))],
         r"1 malformed line in metadata.jsonl \(not UTF-8\) \(ids: line 2\)", 0, "out"),
    Case("data: duplicate product_id", data_cli,
         lambda w, t: ["--dataset", str(image_folder(t, [row("a", 0), row("a", 1), row("c", 2)]))],
         r"1 duplicate product_id \(the first row with it is kept\) in column 'product_id' \(ids: a\)", 0, "out"),
    Case("data: metadata.csv that is not UTF-8", data_cli,
         lambda w, t: ["--dataset", str(image_folder(t, [], csv=b"file_name,title,attributes,category\n0.png,t,,caf\xe9\n"))],
         r"^error: .*metadata\.csv: not UTF-8 text", 2),
    # train.py
    Case("train: output folder holds an earlier run", train_cli,
         lambda w, t: ["--output_dir", str(earlier_run(t)), *TRAIN],
         r"^error: .*holds checkpoints of an earlier run: pass --resume_from_checkpoint latest", 2),
    Case("train: dataset path that does not exist", train_cli,
         lambda w, t: ["--output_dir", str(t / "run"), "--dataset", "no/such/folder", *TRAIN],
         r"^error: no/such/folder: no such file or folder", 2),
    Case("train: a flag out of range", train_cli, lambda w, t: ["--output_dir", str(t / "run"), "--max_steps", "0"],
         r"error: --max_steps must be positive, got 0", 2),
    # eval.py
    Case("eval: split empty after cleaning", eval_cli,
         lambda w, t: ["--dataset", str(empty_test_split(t)), "--baselines", "bm25", "--output", str(t / "r.json")],
         r"^error: the 'test' split is empty after cleaning", 2),
    Case("eval: dataset path that does not exist", eval_cli,
         lambda w, t: ["--dataset", "no/such/folder", "--baselines", "bm25", "--output", str(t / "r.json")],
         r"^error: no/such/folder: no such file or folder", 2),
    # search.py
    Case("search: query with a model of the same dimension but other weights", search_query,
         lambda w, t: ["query", "--index", str(w / "index"), "--model", str(w / "model-b"), "Mugs"],
         r"^error: model mismatch: the index at .*index was built by .*model-a with weights \w{12}, "
         r"but model .*model-b has weights \w{12}", 2),
    Case("search: truncated index.faiss", search_query,
         lambda w, t: ["query", "--index", str(copy_with(w, t, "index", lambda f: truncate(f / "index.faiss"))), "Mugs"],
         r"^error: .*index\.faiss: unreadable, truncated or corrupted", 2),
    Case("search: truncated model.safetensors", search_query,
         lambda w, t: ["query", "--index", str(w / "index"), "--model",
                       str(copy_with(w, t, "model-a", lambda f: truncate(f / "model.safetensors"))), "Mugs"],
         r"^error: .*model\.safetensors: truncated", 2),
    Case("search: truncated config.json", search_query,
         lambda w, t: ["query", "--index", str(w / "index"), "--model",
                       str(copy_with(w, t, "model-a", lambda f: truncate(f / "config.json"))), "Mugs"],
         r"^error: .*config\.json: not valid JSON, truncated or corrupted", 2),
    Case("search: build resumes an encode made with the weights before a retrain", search_query,
         lambda w, t: ["build", "--model", str(w / "model-a"), "--dataset", str(w / "catalogue"), "--output",
                       str(unfinished_encode_of_old_weights(w, t))],
         r"^error: .*holds an unfinished encode of other work \(.*weights_sha256: 0{64} there, \w{64} now\)", 2),
    # the Space
    Case("space: k=None", space_search, lambda w, t: None,
         r"k \(the number of products\) must be a whole number from 1 to \d+, got None", "refused"),
    Case("space: k='nan'", space_search, lambda w, t: "nan",
         r"k \(the number of products\) must be a whole number from 1 to \d+, got .*nan", "refused"),
    Case("space: index with a model of other weights", space_cli,
         lambda w, t: ["--model", str(w / "model-b"), "--index", str(w / "index")], r"^error: model mismatch", 2),
    Case("space: truncated model.safetensors", space_cli,
         lambda w, t: ["--model", str(copy_with(w, t, "model-a", lambda f: truncate(f / "model.safetensors"))),
                       "--index", str(w / "index")], r"^error: .*model\.safetensors: truncated", 2),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, world, tmp_path, capsys):
    status, printed = case.command(case.argv(world, tmp_path), capsys)
    text = getattr(printed, case.stream)
    assert status == case.status, text[-3000:]
    lines = [line for line in text.splitlines() if re.search(case.message, line)]
    assert lines, f"no line matches {case.message!r} in:\n{text[-3000:]}"
    if case.status == 2:  # the error is one line: no traceback
        assert "Traceback" not in text and text.count("error:") == 1, text


# ---------------------------------------------------------------------------------------------------------
# Cases a row does not hold
# ---------------------------------------------------------------------------------------------------------


def test_weights_fingerprint_is_recorded_and_tells_retrained_weights_apart(world):
    manifest = json.loads((world / "index" / "manifest.json").read_text())
    assert manifest["model"]["weights_sha256"] == weights_sha256(world / "model-a")
    assert weights_sha256(world / "model-a") != weights_sha256(world / "model-b")
    assert search_cli.main(["query", "--index", str(world / "index"), "--model", str(world / "model-b"),
                            "--allow_model_mismatch", "Mugs"]) == 0  # fmt: skip


def test_duplicate_ids_across_splits_keep_the_first_split(tmp_path):
    from clipita.data import load_catalogue

    folder = image_folder(tmp_path, [row("a", 0), row("b", 1)])
    (folder / "test").mkdir()
    _png(folder / "test", "0.png")
    (folder / "test" / "metadata.jsonl").write_bytes(row("a", 0) + b"\n" + row("t", 0) + b"\n")
    dsd, report = load_catalogue(str(folder), return_report=True)
    assert dsd["test"]["product_id"] == ["t"] and "a" in dsd["train"]["product_id"]
    assert report.skipped["duplicate product_id (the first row with it is kept)"] == 1


@pytest.mark.slow  # training runs
def test_resume_latest_falls_back_to_the_newest_whole_checkpoint(tmp_path, caplog):
    from clipita.training import parse_args, train
    from tests.helpers.tiny_catalogue import tiny_catalogue
    from tests.helpers.train_tiny import tiny_args

    output_dir = tmp_path / "clip-ita"
    flags = ["--max_steps", "4", "--save_steps", "2", "--eval_steps", "0"]
    train(parse_args(tiny_args(output_dir, *flags)), dataset=tiny_catalogue())
    truncate(output_dir / "checkpoints" / "checkpoint-4" / "model.safetensors")
    flags = [
        "--max_steps",
        "6",
        "--save_steps",
        "2",
        "--eval_steps",
        "0",
        "--resume_from_checkpoint",
        "latest",
    ]
    with caplog.at_level("INFO"):
        metrics = train(parse_args(tiny_args(output_dir, *flags)), dataset=tiny_catalogue())
    assert metrics["train"]["steps"] == 6
    assert re.search(r"skipping checkpoint-4: .*checkpoint-4/model\.safetensors: truncated", caplog.text)
    assert "resuming from checkpoint-2, the newest checkpoint whose files are whole" in caplog.text
    assert "resumed from" in caplog.text and "checkpoint-2 at step 2" in caplog.text
    # named explicitly, a damaged checkpoint is refused with the file and what is wrong
    truncate(output_dir / "checkpoints" / "checkpoint-6" / "model.safetensors")
    flags[-1] = str(output_dir / "checkpoints" / "checkpoint-6")
    with pytest.raises(ValueError, match=r"checkpoint-6/model\.safetensors: truncated"):
        train(parse_args(tiny_args(output_dir, *flags)), dataset=tiny_catalogue())


@pytest.mark.slow  # fresh interpreters, as a user runs the commands
@pytest.mark.parametrize(
    "command",
    [
        ["-m", "clipita.data", "--dataset", "no/such/folder"],
        ["train.py", "--output_dir", "{run}", "--report_to", "none"],
    ],
    ids=["clipita.data", "train.py twice into one folder"],
)
def test_command_lines_print_one_line_and_exit_2(command, tmp_path):
    run = earlier_run(tmp_path)
    argv = [part.format(run=run) for part in command]
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
