"""Same data and seed -> same artefacts in every process, run and thread count (issue #18 item 5)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from clipita.bootstrap import learn_merges, train_clip_tokenizer
from tests.conftest import ROOT

# The texts of the training split of `python -m clipita.catalogue --num_products 600 --seed S`, without
# drawing the images (a product's text is drawn from its rng before its image).
_CATALOGUE_TEXTS = """
import hashlib, sys, tempfile
from pathlib import Path
import numpy as np
from clipita.bootstrap import train_clip_tokenizer
from clipita.catalogue import LEAVES, generation_defaults, plan_catalogue, sample_product
d = generation_defaults()
for seed in map(int, sys.argv[1:]):
    leaf_of, split_of, _ = plan_catalogue(600, seed, d["unseen_leaf_fraction"], d["val_fraction"], d["test_fraction"])
    texts = []
    for index in np.flatnonzero(split_of == 0):
        product = sample_product(int(leaf_of[index]), np.random.default_rng([seed, int(index)]))
        texts += [product.title, *product.attributes, *LEAVES[leaf_of[index]].path]
    with tempfile.TemporaryDirectory() as folder:
        train_clip_tokenizer(texts).save_pretrained(folder)
        print(seed, hashlib.sha256((Path(folder) / "tokenizer.json").read_bytes()).hexdigest())
"""


def _tokenizer_hashes(threads: int) -> str:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env.pop("PYTHONHASHSEED", None)
    result = subprocess.run(
        [sys.executable, "-c", _CATALOGUE_TEXTS, "1", "2", "4", "5"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # fresh interpreters
def test_small_catalogues_give_byte_identical_tokenizers_in_fresh_processes_and_thread_counts():
    runs = [_tokenizer_hashes(threads) for threads in (1, 4, 2)]
    assert len(runs[0].splitlines()) == 4
    assert all(run == runs[0] for run in runs), runs


def test_merge_ties_go_to_the_smallest_pair_whatever_the_word_order():
    counts = {"art": 3, "ary": 3, "ab": 1, "ba": 1}
    expected = learn_merges(counts, max_new_tokens=10)
    assert expected[0] == ("a", "r")  # 6 occurrences
    # then ("ar", "t</w>") and ("ar", "y</w>") tie at 3: the smaller pair of strings is merged first
    assert expected[1:3] == [("ar", "t</w>"), ("ar", "y</w>")]
    for order in itertools.permutations(counts):
        assert learn_merges({w: counts[w] for w in order}, max_new_tokens=10) == expected


def test_tokenizer_does_not_depend_on_text_order_and_respects_the_vocabulary_size():
    texts = [
        f"{colour} {thing} {n}"
        for colour in ("red", "rust", "ruby")
        for thing in ("mug", "bag")
        for n in range(5)
    ]
    one = train_clip_tokenizer(texts, vocab_size=540)
    two = train_clip_tokenizer(texts[::-1], vocab_size=540)
    assert one.backend_tokenizer.to_str() == two.backend_tokenizer.to_str()
    assert len(one) <= 540


@pytest.mark.slow  # two training runs
def test_resume_loads_the_tokenizer_its_checkpoint_holds_instead_of_rebuilding_it(tmp_path, monkeypatch):
    from clipita.training import checkpoints as ckpt
    from clipita.training import parse_args, train, trainer
    from tests.helpers.tiny_catalogue import tiny_catalogue
    from tests.helpers.train_tiny import tiny_args

    output_dir = tmp_path / "clip-ita"
    flags = ["--max_steps", "2", "--save_steps", "2", "--eval_steps", "0"]
    train(parse_args(tiny_args(output_dir, *flags)), dataset=tiny_catalogue())
    saved = output_dir / "checkpoints" / "checkpoint-2" / ckpt.TOKENIZER_DIR / "tokenizer.json"
    assert saved.read_bytes() == (output_dir / "tokenizer.json").read_bytes()

    def rebuild(*args, **kwargs):
        raise AssertionError("a resumed run rebuilt its tokenizer")

    monkeypatch.setattr(trainer, "build_tokenizer", rebuild)
    flags = [
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--eval_steps",
        "0",
        "--resume_from_checkpoint",
        "latest",
    ]
    metrics = train(parse_args(tiny_args(output_dir, *flags)), dataset=tiny_catalogue())
    assert metrics["train"]["steps"] == 4
