"""Contrastive gradients: feature-cache accumulation equals one big batch, two processes equal one, and
encoding each distinct text once equals encoding every text."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from clipita.training.gradcache import contrastive_step
from tests.conftest import ROOT, tiny_model
from tests.helpers.batches import fixed_batch, gradients, split

RELATIVE_TOLERANCE = 1e-5  # of each gradient tensor's largest entry: float32 rounding, not a real difference


@pytest.fixture(autouse=True)
def one_thread():
    """Exact comparisons and speed: one intra-op thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def step_gradients(model, batches):
    model = copy.deepcopy(model)
    accelerator = Accelerator()
    model.to(accelerator.device)
    batches = [{k: v.to(accelerator.device) for k, v in b.items()} for b in batches]
    loss = contrastive_step(accelerator, model, batches)
    return loss.item(), {k: v.cpu() for k, v in gradients(model).items()}


def same(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    scale = max(1.0, expected.abs().max().item())
    return (actual - expected).abs().max().item() <= RELATIVE_TOLERANCE * scale


def assert_same_gradients(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not same(expected[name], actual[name])]
    assert not different, f"gradients differ for {different}"


def test_one_batch_step_is_the_models_loss():
    model, processor = tiny_model()
    batch = fixed_batch(model, processor)
    loss, grads = step_gradients(model, [batch])
    reference = copy.deepcopy(model)
    expected = reference(**batch, return_loss=True).loss
    expected.backward()
    assert loss == pytest.approx(expected.item(), abs=1e-6)
    assert_same_gradients(gradients(reference), grads)
    assert "logit_scale" in grads  # the learnable temperature is trained too


@pytest.mark.parametrize(
    ("loss_type", "level"), [("infonce", "general"), ("multi_positive", "general"), ("path_positive", "all")]
)
def test_feature_cache_accumulation_equals_one_big_batch(loss_type, level):
    model, processor = tiny_model(loss_type=loss_type)
    batch = fixed_batch(model, processor, level=level)
    big_loss, big = step_gradients(model, [batch])
    cached_loss, cached = step_gradients(model, split(batch, 4))
    assert cached_loss == pytest.approx(big_loss, abs=1e-5)
    assert_same_gradients(big, cached)

    # Summing micro-batch losses (plain accumulation) contrasts only within micro-batches: not the same.
    naive = copy.deepcopy(model)
    for micro in split(batch, 4):
        naive(**micro, return_loss=True).loss.div(4).backward()
    different = gradients(naive)
    assert any(not same(big[k], different[k]) for k in big)


def test_feature_cache_accumulation_replays_dropout():
    model, processor = tiny_model(head_dropout=0.3)
    batch = fixed_batch(model, processor)
    micro = split(batch, 2)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(**batch).product_embeds, model(**batch).product_embeds)  # dropout is on

    torch.manual_seed(123)
    reference = copy.deepcopy(model)
    outputs = [
        reference(**{k: v for k, v in m.items() if k not in ("category_ids", "path_ids")}) for m in micro
    ]
    loss = reference.contrastive_loss(
        torch.cat([o.category_embeds for o in outputs]),
        torch.cat([o.product_embeds for o in outputs]),
        batch["category_ids"],
    )
    loss.backward()

    torch.manual_seed(123)  # the first (cached) pass draws the same masks as the reference
    cached_loss, cached = step_gradients(model, micro)
    assert cached_loss == pytest.approx(loss.item(), abs=1e-5)
    assert_same_gradients(gradients(reference), cached)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess  # accelerate launch, two processes
@pytest.mark.slow
def test_two_processes_give_the_single_process_loss_and_gradients(tmp_path):
    """Two CPU processes (gloo): gathered negatives, DDP averaging accounted for, each process encoding its
    own distinct texts once, against one process encoding every text."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "tests.helpers.distributed_check", "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    model, processor = tiny_model(loss_type="path_positive")
    batch = fixed_batch(model, processor, size=8, level="all")
    # one process, the whole global batch, every text encoded (the processes deduplicate their own rows)
    loss, grads = step_gradients(without_deduplication(model), [batch])
    for accumulation in (1, 2):
        saved = torch.load(tmp_path / f"accumulation{accumulation}.pt")
        assert saved["loss"] == pytest.approx(loss, abs=1e-5)
        assert_same_gradients(grads, saved["grads"])

    run = tmp_path / "run"
    assert (run / "model.safetensors").is_file() and (run / "metrics.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-3",
    ]
    # the main process built the tokenizer and the other loaded it: one vocabulary, saved with each checkpoint
    shared = json.loads((run / "checkpoints" / "tokenizer" / "tokenizer.json").read_text())
    saved = json.loads((run / "checkpoints" / "checkpoint-3" / "tokenizer" / "tokenizer.json").read_text())
    assert shared["model"] == saved["model"] and shared["added_tokens"] == saved["added_tokens"]
    assert {p.name for p in (run / "checkpoints" / "checkpoint-3").glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }


def test_feature_cache_accumulation_equals_one_big_batch_with_broad_dropout():
    """Broad dropout changes the inputs, not the step: cached micro-batches still equal one big batch."""
    model, processor = tiny_model(loss_type="multi_positive")
    batch = fixed_batch(model, processor, broad_dropout={"title": 0.5, "image": 0.5})
    plain = fixed_batch(model, processor)
    assert not torch.equal(batch["pixel_values"], plain["pixel_values"])  # some images were greyed
    big_loss, big = step_gradients(model, [batch])
    cached_loss, cached = step_gradients(model, split(batch, 4))
    assert cached_loss == pytest.approx(big_loss, abs=1e-5)
    assert_same_gradients(big, cached)


class TextRows:
    """Counts the sequences CLIP's text tower encodes (at its embeddings: whole or pooled-last-layer tower)."""

    def __init__(self, model):
        self.rows = 0
        model.clip.text_model.embeddings.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs):
        self.rows += (args[0] if args else kwargs["input_ids"]).shape[0]


def without_deduplication(model):
    model = copy.deepcopy(model)
    model.config.deduplicate_texts = False
    return model


def one_bucket_per_length(model):
    """Every distinct length its own text-tower call: the most buckets, as a long text among short ones makes."""
    model._text_call_cost = lambda: 0
    return model


@pytest.mark.parametrize("buckets", ["chosen", "one per length"])
@pytest.mark.parametrize("loss_type", ["infonce", "multi_positive"])
def test_unique_text_encoding_gives_the_same_loss_and_gradients(loss_type, buckets):
    """Each distinct text encoded once, in length buckets: same step, fewer text-tower rows."""
    model, processor = tiny_model(loss_type=loss_type)
    if buckets == "one per length":
        one_bucket_per_length(model)
    batch = fixed_batch(model, processor)  # "general": 3 roots for 8 pairs, so category names repeat
    real = batch["attribute_mask"].bool()
    assert torch.unique(batch["category_input_ids"], dim=0).shape[0] < batch["category_input_ids"].shape[0]
    assert torch.unique(batch["attribute_input_ids"][real], dim=0).shape[0] < int(real.sum())
    reference = without_deduplication(model)
    assert model.config.deduplicate_texts and not reference.config.deduplicate_texts

    counted = {name: TextRows(m) for name, m in (("unique", model), ("every", reference))}
    for m in (model, reference):
        m(**{k: v for k, v in batch.items() if k != "category_ids"})
    assert counted["unique"].rows < counted["every"].rows

    for micro_batches in (1, 4):  # one batch, and feature-cache accumulation over 4 micro-batches
        loss, grads = step_gradients(model, split(batch, micro_batches))
        expected_loss, expected = step_gradients(reference, split(batch, micro_batches))
        assert loss == pytest.approx(expected_loss, abs=1e-6)
        assert_same_gradients(expected, grads)


@pytest.mark.parametrize("per_token", [False, True])
def test_unique_text_encoding_keeps_every_rows_outputs(per_token):
    """Length buckets (and, when hidden states are asked for, one call on the distinct rows) give every
    row the output it gets alone, at each of its real tokens."""
    model, processor = tiny_model(pooled_last_layer=False)  # per-token states at every layer
    one_bucket_per_length(model)
    batch = fixed_batch(model, processor)
    inputs = {k: v for k, v in batch.items() if k != "category_ids"}
    model.eval()
    with torch.no_grad():
        unique = model(**inputs, output_hidden_states=per_token)
        every = without_deduplication(model)(**inputs, output_hidden_states=per_token)
    real = batch["attribute_mask"].bool()
    masks = {
        "category_model_output": batch["category_attention_mask"],
        "attribute_model_output": batch["attribute_attention_mask"][real],
        "title_model_output": batch["title_attention_mask"],
    }
    for name, mask in masks.items():
        ours, theirs = unique[name], every[name]
        assert ours.keys() == theirs.keys()
        assert ours.last_hidden_state.shape == theirs.last_hidden_state.shape
        tokens = mask[:, : ours.last_hidden_state.shape[1]].bool()
        torch.testing.assert_close(ours.last_hidden_state[tokens], theirs.last_hidden_state[tokens])
        torch.testing.assert_close(ours.pooler_output, theirs.pooler_output)
        if per_token:
            assert len(ours.hidden_states) == len(theirs.hidden_states)
            torch.testing.assert_close(ours.hidden_states[-1], theirs.hidden_states[-1])
    torch.testing.assert_close(unique.logits_per_category, every.logits_per_category)


def test_length_buckets_cut_padding():
    """Titles of different lengths go through the tower in groups, each cut to its longest: fewer tokens."""
    model, processor = tiny_model()
    titles = [f"short {i}" for i in range(30)] + [" ".join(["long"] * 20 + [str(i)]) for i in range(4)]
    batch = processor(titles=titles, return_tensors="pt")
    tokens = []
    model.clip.text_model.embeddings.register_forward_pre_hook(
        lambda _m, args, kwargs: tokens.append((args[0] if args else kwargs["input_ids"]).numel()),
        with_kwargs=True,
    )
    model._unique_text_features(batch["title_input_ids"], batch["title_attention_mask"])
    assert len(tokens) == 2 and sum(tokens) < batch["title_input_ids"].numel()


def test_encode_categories_encodes_each_distinct_name_once():
    model, processor = tiny_model()
    names = ["mugs", "kettles", "mugs", "home", "mugs", "kettles"]
    counter = TextRows(model)
    embeds = model.encode_categories(names, processor=processor)
    assert counter.rows == 3
    expected = without_deduplication(model).encode_categories(names, processor=processor)
    np.testing.assert_allclose(embeds, expected, atol=1e-6)
    np.testing.assert_allclose(embeds[0], embeds[2], atol=0)  # one encoding, shared


def test_text_dropout_turns_deduplication_off_in_training():
    """With dropout in the text tower every row draws its own mask, as without deduplication."""
    model, processor = tiny_model()
    model.config.clip_config.text_config.attention_dropout = 0.1
    batch = fixed_batch(model, processor)
    counter = TextRows(model)
    model.train()
    model(**{k: v for k, v in batch.items() if k != "category_ids"})
    trained_rows = counter.rows
    counter.rows = 0
    model.eval()
    model(**{k: v for k, v in batch.items() if k != "category_ids"})
    assert counter.rows < trained_rows


def two_layer_model(**overrides):
    """Two layers per tower, so that the pooled last layer has an earlier layer feeding it."""
    from clipita.bootstrap import build_default_model
    from tests.conftest import TINY_TEXTS

    return build_default_model(TINY_TEXTS, hidden_size=32, layers=2, image_size=32, **overrides)


def whole_towers(model):
    model = copy.deepcopy(model)
    model.config.pooled_last_layer = False
    return model


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_pooled_last_layer_gives_the_same_step_as_whole_towers(attention):
    """The towers' last layer run at the pooled token only: same loss, embeddings and gradients (one batch and
    feature-cache accumulation), and the last layer's MLP sees one token per row."""
    model, processor = two_layer_model(attn_implementation=attention)
    assert model.config.pooled_last_layer
    batch = fixed_batch(model, processor)
    reference = whole_towers(model)
    tokens = {}
    for name, m in (("pooled", model), ("whole", reference)):
        last = m.clip.vision_model.encoder.layers[-1]
        last.mlp.register_forward_pre_hook(lambda _m, args, n=name: tokens.update({n: args[0].shape[:-1]}))
    inputs = {k: v for k, v in batch.items() if k != "category_ids"}
    ours, theirs = model(**inputs), reference(**inputs)
    torch.testing.assert_close(ours.product_embeds, theirs.product_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.category_embeds, theirs.category_embeds, atol=1e-6, rtol=1e-5)
    assert ours.vision_model_output.last_hidden_state is None
    assert theirs.vision_model_output.last_hidden_state is not None
    images = batch["pixel_values"].shape[0]
    assert tokens["pooled"] == (images,) and tokens["whole"][0] == images and tokens["whole"][1] > 1
    for micro_batches in (1, 4):
        loss, grads = step_gradients(model, split(batch, micro_batches))
        expected_loss, expected = step_gradients(reference, split(batch, micro_batches))
        assert loss == pytest.approx(expected_loss, abs=1e-6)
        assert_same_gradients(expected, grads)


def test_pooled_text_tower_matches_clip_on_left_padding_and_the_legacy_end_token():
    """The pooled text tower reads the token transformers' CLIP pools, whatever the padding side, with the
    pre-fix `eos_token_id == 2` rule (the highest id) too; per-token outputs run the whole tower."""
    model, processor = two_layer_model()
    model.eval()
    texts = processor(titles=["red mug", "a long blue ceramic tea mug", "x"], return_tensors="pt")
    ids, mask = texts["title_input_ids"], texts["title_attention_mask"]
    lengths = mask.sum(-1)
    left_ids, left_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    for row, length in enumerate(lengths.tolist()):  # the same rows, padded on the left
        left_ids[row, ids.shape[1] - length :], left_mask[row, ids.shape[1] - length :] = ids[row, :length], 1
    with torch.no_grad():
        for input_ids, attention_mask in ((ids, mask), (left_ids, left_mask)):
            expected = model.get_text_features(input_ids, attention_mask).pooler_output
            got = model._text_tower(input_ids, attention_mask).pooler_output
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        model.clip.text_model.eos_token_id = 2  # configs from before transformers' eos fix
        expected = model.get_text_features(ids, mask).pooler_output
        torch.testing.assert_close(model._text_tower(ids, mask).pooler_output, expected, atol=1e-6, rtol=1e-5)
        whole = model._text_tower(ids, mask, output_hidden_states=True)
    assert whole.last_hidden_state.shape[:2] == ids.shape
