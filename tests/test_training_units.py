"""Training building blocks: category levels, data order, batches, checkpoints on disk, arguments, optimizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipita.schema import modality_columns
from clipita.training import checkpoints as ckpt
from clipita.training.arguments import build_parser, parse_args
from clipita.training.collate import EpochSampler, PairCollator, TrainingPairs
from clipita.training.model_setup import freeze_towers, optimizer_groups
from clipita.tree import NodeVocabulary, node_at_level
from tests.conftest import tiny_model
from tests.helpers.tiny_catalogue import tiny_catalogue

PATH = ["Home", "Home Kitchen", "Mugs"]


def test_category_levels_pick_the_papers_nodes():
    assert node_at_level(PATH, "general") == ("Home",)
    assert node_at_level(PATH, "specific") == tuple(PATH)
    drawn = {node_at_level(PATH, "all", np.random.default_rng(i)) for i in range(200)}
    assert drawn == {("Home",), ("Home", "Home Kitchen"), tuple(PATH)}  # every node on the path, nothing else
    with pytest.raises(ValueError, match="unknown category level"):
        node_at_level(PATH, "leafy")
    with pytest.raises(ValueError, match="empty category path"):
        node_at_level([], "general")


def test_leaf_probability_sets_the_leaf_pairs_share():
    draws = [node_at_level(PATH, "all", np.random.default_rng(i), leaf_probability=0.6) for i in range(2000)]
    share = {node: draws.count(node) / len(draws) for node in set(draws)}
    assert set(share) == {("Home",), ("Home", "Home Kitchen"), tuple(PATH)}
    assert abs(share[tuple(PATH)] - 0.6) < 0.04
    assert abs(share[("Home",)] - 0.2) < 0.03  # the broader nodes share the rest equally
    assert {
        node_at_level(PATH, "all", np.random.default_rng(i), leaf_probability=1.0) for i in range(50)
    } == {tuple(PATH)}
    assert node_at_level(["Home"], "all", np.random.default_rng(0), leaf_probability=0.0) == ("Home",)
    # without it, the paper's uniform draw, unchanged: the same nodes from the same generator
    uniform = [tuple(PATH[: int(np.random.default_rng(i).integers(1, 4))]) for i in range(20)]
    assert [node_at_level(PATH, "all", np.random.default_rng(i)) for i in range(20)] == uniform
    rows = tiny_catalogue(num_train=40, num_validation=2)["train"]
    pairs = TrainingPairs(rows, "all", seed=3, columns=["image"], leaf_probability=1.0)
    assert all(pairs[i]["node"] == tuple(pairs[i]["category"]) for i in range(40))
    assert parse_args(["--leaf_probability", "0.5"]).leaf_probability == 0.5
    # the default goes with broad dropout: the leaf share with it, the paper's uniform draw without it
    assert parse_args([]).leaf_probability == 0.5 and parse_args([]).broad_dropout == {"title": 0.5}
    assert parse_args(["--broad_dropout", "none"]).leaf_probability is None
    assert parse_args(["--broad_dropout", "none", "--leaf_probability", "0.3"]).leaf_probability == 0.3
    assert parse_args(["--leaf_probability", "uniform"]).leaf_probability is None
    paper = parse_args(["--paper_recipe"])  # the paper's training, one flag away from the defaults
    assert (paper.broad_dropout, paper.leaf_probability, paper.attribute_pooling, paper.loss) == (
        None,
        None,
        "mean",
        "infonce",
    )
    assert parse_args([]).attribute_pooling == "attention"
    assert parse_args(["--paper_recipe", "--attribute_pooling", "attention"]).attribute_pooling == "attention"
    with pytest.raises(SystemExit):
        parse_args(["--leaf_probability", "1.5"])


def test_pairs_depend_on_seed_epoch_and_index_only():
    rows = tiny_catalogue(num_train=40, num_validation=2)["train"]
    pairs = TrainingPairs(rows, "all", seed=3, columns=["image"])
    first = [pairs[i]["node"] for i in range(40)]
    assert [pairs[i]["node"] for i in range(40)] == first  # reading again (or after a resume) gives the same
    pairs.set_epoch(1)
    assert [pairs[i]["node"] for i in range(40)] != first  # a new epoch draws other levels
    for i in range(40):
        assert list(pairs[i]["node"]) == rows[i]["category"][: len(pairs[i]["node"])]  # a prefix of its path
    specific = TrainingPairs(rows, "specific", seed=3, columns=["image"])
    assert all(list(specific[i]["node"]) == rows[i]["category"] for i in range(40))


def test_epoch_sampler_is_a_permutation_fixed_by_seed_and_epoch():
    sampler = EpochSampler(50, seed=1)
    order0 = list(sampler)
    assert sorted(order0) == list(range(50)) and list(sampler) == order0
    sampler.set_epoch(1)
    assert list(sampler) != order0
    assert list(EpochSampler(50, seed=2)) != order0


def test_collator_builds_model_inputs_and_category_ids():
    model, processor = tiny_model("clip-ia")
    rows = tiny_catalogue(num_train=12, num_validation=2)["train"]
    pairs = TrainingPairs(rows, "general", seed=0, columns=modality_columns(model.config.product_modalities))
    vocabulary = NodeVocabulary(rows["category"])
    batch = PairCollator(processor, vocabulary, model.config.product_modalities)(
        [pairs[i] for i in range(12)]
    )
    assert "title_input_ids" not in batch and batch["pixel_values"].shape[0] == 12
    assert batch["attribute_input_ids"].shape[0] == 12 and int(batch["num_skipped"]) == 0
    roots = [r[0] for r in rows["category"]]
    ids = batch["category_ids"].tolist()
    assert all((ids[i] == ids[j]) == (roots[i] == roots[j]) for i in range(12) for j in range(12))
    paths = batch["path_ids"].tolist()  # every node of each product's path, root first, -1 padded
    assert batch["path_ids"].shape == (12, vocabulary.max_depth)
    assert all(
        path[: len(p)] == [vocabulary[tuple(p[: k + 1])] for k in range(len(p))]
        for path, p in zip(paths, rows["category"])
    )
    assert all(path[0] == ids[i] for i, path in enumerate(paths))  # "general": the pair's node is the root
    out = model(**{k: v for k, v in batch.items() if k not in ("category_ids", "path_ids", "num_skipped")})
    assert out.product_embeds.shape[0] == 12


def test_vocabulary_keeps_equal_names_in_different_branches_apart():
    vocabulary = NodeVocabulary([["Men", "Shoes"], ["Women", "Shoes"]])
    assert vocabulary[("Men", "Shoes")] != vocabulary[("Women", "Shoes")]
    assert len(vocabulary) == 4 and vocabulary[("Kids",)] == 4  # a new node gets the next id


def test_unreadable_image_is_replaced_by_the_next_row():
    class Rows:
        """Row 1's image cannot be decoded."""

        def __init__(self, data):
            self.data = data

        def select_columns(self, columns):
            return self

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            if i == 1:
                raise OSError("broken PNG")
            return dict(self.data[i])

    data = tiny_catalogue(num_train=3, num_validation=1)["train"]
    pairs = TrainingPairs(Rows([data[i] for i in range(3)]), "specific", 0, ["image"])
    row = pairs[1]
    assert row["skipped"] == 1 and row["category"] == data[2]["category"]


def _fake_checkpoint(folder, step, complete=True):
    path = folder / (f"checkpoint-{step}" if complete else f"checkpoint-{step}.tmp")
    path.mkdir(parents=True)
    (path / ckpt.STATE_FILE).write_text(json.dumps({"global_step": step}))
    if complete:
        (path / ckpt.COMPLETE).write_text("")
    return path


def test_latest_ignores_interrupted_saves_and_rotation_keeps_the_newest(tmp_path):
    for step in (5, 10, 20):
        _fake_checkpoint(tmp_path, step)
    _fake_checkpoint(tmp_path, 30, complete=False)  # killed while saving
    unmarked = tmp_path / "checkpoint-40"  # renamed but marker missing: never trusted
    unmarked.mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-20"
    assert ckpt.resolve_resume("latest", tmp_path).name == "checkpoint-20"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(unmarked), tmp_path)
    with pytest.raises(FileNotFoundError):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path)
    assert [p.name for p in ckpt.remove_partial(tmp_path)] == ["checkpoint-30.tmp"]
    ckpt.rotate(tmp_path, 2)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-20"]
    assert ckpt.resolve_resume("latest", tmp_path / "empty") is None


def test_best_model_folders_round_trip_and_prune(tmp_path):
    model = torch.nn.Linear(3, 2)
    ckpt.save_best(tmp_path, model, 4, {"step": 4})
    with torch.no_grad():
        model.weight.zero_()
    ckpt.save_best(tmp_path, model, 8, {"step": 8})
    assert ckpt.best_steps(tmp_path) == [4, 8]
    ckpt.prune_best(tmp_path, keep={8})
    assert ckpt.best_steps(tmp_path) == [8]
    fresh = torch.nn.Linear(3, 2)
    assert ckpt.load_best(tmp_path, 8, fresh) == {"step": 8}
    assert torch.equal(fresh.weight, torch.zeros(2, 3))
    with pytest.raises(FileNotFoundError, match="step 4"):
        ckpt.load_best(tmp_path, 4, fresh)


def test_arguments_defaults_and_errors(capsys):
    args = parse_args([])
    assert args.output_dir == "outputs/clip-ita" and args.dataset == "demo"
    assert args.tower_learning_rate == args.learning_rate  # from scratch: one learning rate
    args = parse_args(["--base_model", "some/clip", "--freeze_towers", "--variant", "clip-i"])
    assert args.tower_learning_rate == 1e-5 and args.freeze_vision and args.freeze_text
    assert args.output_dir == "outputs/clip-i"
    with pytest.raises(SystemExit):
        parse_args(["--per_device_train_batch_size", "0"])
    assert "--per_device_train_batch_size must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--category_level", "leaf"])


def test_train_help_gives_every_option_a_help_line_and_one_default(monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "1000")  # one line per option name, one per its help
    entries: dict[str, str] = {}
    name = None
    for line in build_parser().format_help().splitlines():
        if re.match(r"^  -", line):
            name, _, help_text = line.strip().partition("  ")
            entries[name] = help_text.strip()
        elif name is not None and line.startswith("    ") and line.strip():
            entries[name] = f"{entries[name]} {line.strip()}".strip()
        else:
            name = None
    assert len(entries) > 40 and "--per_device_train_batch_size PER_DEVICE_TRAIN_BATCH_SIZE" in entries
    for option, help_text in entries.items():
        if option.startswith("-h"):
            continue
        assert help_text, f"{option} has no help line"
        assert help_text.lower().count("default") == 1, (
            f"{option} shows {help_text.lower().count('default')} defaults: {help_text!r}"
        )
    assert "(default: 64)" in entries["--image_size IMAGE_SIZE"]


def test_a_tracker_that_is_not_installed_is_an_error(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "trackio" else find_spec(name)
    )
    with pytest.raises(SystemExit):
        parse_args(["--report_to", "trackio"])
    assert "the trackio package is not installed" in capsys.readouterr().err
    assert parse_args(["--report_to", "none"]).report_to == "none"


def test_optimizer_groups_separate_towers_heads_and_decay():
    model, _ = tiny_model()
    freeze_towers(model, vision=True, text=False)
    args = parse_args(["--learning_rate", "1e-3", "--tower_learning_rate", "1e-5", "--weight_decay", "0.2"])
    groups = {g["name"]: g for g in optimizer_groups(model, args)}
    assert groups["towers"]["lr"] == 1e-5 and groups["heads"]["lr"] == 1e-3
    assert groups["heads"]["weight_decay"] == 0.2 and groups["heads_no_decay"]["weight_decay"] == 0.0
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert id(model.logit_scale) in {id(p) for p in groups["heads_no_decay"]["params"]}
    assert all(id(p) not in grouped for p in model.clip.vision_model.parameters())  # frozen: left out
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable)


def test_trainer_state_round_trips_through_trainer_state_json(tmp_path):
    state = ckpt.TrainerState(steps_per_epoch=3, global_batch_size=8, tokenizer="ab12")
    state.losses.append([1, 0.5])
    state.best = {"step": 1, "mAP@10": 0.25}
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    (folder / ckpt.STATE_FILE).write_text(json.dumps(state.to_json()))
    assert ckpt.load_trainer_state(folder) == state and state.best_step == 1
    assert list(state.to_json()) == [
        "global_step", "steps_per_epoch", "global_batch_size", "tokenizer", "samples", "train_seconds",
        "skipped_rows", "load_report", "losses", "evaluations", "best", "checkpoint_best_step",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown keys"):
        ckpt.TrainerState.from_json({**state.to_json(), "extra": 1})


def test_broad_dropout_is_a_function_of_seed_epoch_and_index_and_spares_leaf_pairs():
    rows = tiny_catalogue(num_train=40, num_validation=2)["train"]
    columns = ["image", "title", "attributes"]
    drop = {"title": 0.5, "image": 0.5}
    pairs = TrainingPairs(rows, "all", seed=3, columns=columns, broad_dropout=drop)
    plain = TrainingPairs(rows, "all", seed=3, columns=columns)
    first = [pairs[i] for i in range(40)]
    again = TrainingPairs(rows, "all", seed=3, columns=columns, broad_dropout=drop)  # e.g. after a resume
    assert [(r["title"], r["image"].tobytes()) for r in first] == [
        (r["title"], r["image"].tobytes()) for r in (again[i] for i in range(40))
    ]
    titles = images = broad = 0
    for row, ref in zip(first, (plain[i] for i in range(40))):
        assert row["node"] == ref["node"]  # the node's draw is untouched
        assert row["attributes"] == ref["attributes"]
        if len(row["node"]) == len(row["category"]):  # a leaf pair keeps everything
            assert row["title"] == ref["title"] and row["image"].tobytes() == ref["image"].tobytes()
            continue
        broad += 1
        titles += row["title"] == "" != ref["title"]
        greyed = row["image"].tobytes() != ref["image"].tobytes()
        images += greyed
        if greyed:
            assert row["image"].getextrema() == ((128, 128),) * 3 and row["image"].size == ref["image"].size
    assert broad and 0 < titles < broad and 0 < images < broad
    pairs.set_epoch(1)
    assert [pairs[i]["title"] for i in range(40)] != [r["title"] for r in first]


def test_broad_dropout_argument_errors(capsys):
    assert parse_args(["--broad_dropout", "title:0.9,image:0.5"]).broad_dropout == {
        "title": 0.9,
        "image": 0.5,
    }
    assert parse_args([]).broad_dropout == {"title": 0.5}  # the default, chosen by the issue-13 ablation
    assert parse_args(["--broad_dropout", "none"]).broad_dropout is None  # the paper's recipe
    for bad in ("title:2", "attributes:0.5", "title", "title:0.1,title:0.2"):
        with pytest.raises(SystemExit):
            parse_args(["--broad_dropout", bad])
        assert "--broad_dropout" in capsys.readouterr().err
