"""scripts/ablation_tree.py: the tree ablation's summary reads results.json files per row and seed, and
compares each row with the paper's row seed by seed."""

import importlib.util
import json
import os
import subprocess

import pytest

from clipita.evaluation import per_depth_report
from tests.conftest import ROOT
from tests.test_per_depth import NODES, _embeddings


def load_script():
    spec = importlib.util.spec_from_file_location("ablation_tree", ROOT / "scripts" / "ablation_tree.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(runs, catalogue, row, seed, report):
    folder = runs / catalogue / "results"
    folder.mkdir(parents=True, exist_ok=True)
    result = {"settings": {"all": {}}, "per_depth": report}
    (folder / f"{row}-s{seed}.json").write_text(json.dumps(result))


def test_rows_are_compared_with_the_paper_seed_by_seed(tmp_path):
    script = load_script()
    product_embeds, node_embeds, paths, train_paths = _embeddings()
    report = per_depth_report(product_embeds, node_embeds, NODES, paths, train_paths, "node")

    def with_root(value):
        out = json.loads(json.dumps(report))
        out["retrieval"]["root"]["all"]["mAP@10"] = value
        return out

    write(tmp_path, "hard", "paper", 0, with_root(1.0))  # seed 0 of the paper has no partner in the other row
    write(tmp_path, "hard", "paper", 1, with_root(0.5))
    write(tmp_path, "hard", "paper + tree", 1, with_root(0.7))
    found = script.collect(tmp_path)
    assert list(found["hard"]) == ["paper", "paper + tree"] and set(found["hard"]["paper"]) == {0, 1}
    text = script.deltas(found)
    row = next(line for line in text.splitlines() if line.startswith("| paper + tree |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    root = cells[1 + [name for name, _, _ in script.TARGETS].index("root mAP@10")]
    assert root.startswith("+0.200") and root.endswith("[ok]")  # against seed 1 only (by position: -0.300)
    assert "| paper (2 seeds) |" in script.table(found, "cmd")


def test_the_plot_takes_seeds_whose_mean_rounds_outside_them(tmp_path):
    script = load_script()
    product_embeds, node_embeds, paths, train_paths = _embeddings()
    report = per_depth_report(product_embeds, node_embeds, NODES, paths, train_paths, "node")
    report["retrieval"]["root"]["all"]["mAP@10"] = 0.1  # mean([0.1] * 3) is 0.10000000000000002
    for seed in range(3):
        write(tmp_path, "demo", "paper", seed, report)
    script.plot(script.collect(tmp_path), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_hard_cues_knows_each_hard_groups_attribute_and_each_leafs_cue():
    spec = importlib.util.spec_from_file_location("hard_cues", ROOT / "scripts" / "hard_cues.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keys = module.group_attribute_keys()
    assert len(keys) == 9 and len(set(keys.values())) == 9  # one attribute per middle group, none shared
    assert keys[("Home", "Kitchen & Dining")] == "food contact"
    cues = module.leaf_cues()
    assert len(cues) == 145 and [c for c, _ in cues.values()].count("attribute") == 29  # one per type
    assert cues[("Home", "Kitchen & Dining", "Kids Mugs")] == ("attribute", "audience")
    assert cues[("Home", "Kitchen & Dining", "Vintage Mugs")] == ("title", None)
    assert cues[("Home", "Kitchen & Dining", "Ceramic Mugs")] == ("image", None)
    assert module.without_key(["Audience: kids", "colour: red", "audiences: x"], "audience") == [
        "colour: red",
        "audiences: x",
    ]


def test_the_scripts_default_row_is_train_pys_default():
    from clipita.training.arguments import parse_args

    line = next(
        x
        for x in (ROOT / "scripts" / "ablation_tree.sh").read_text().splitlines()
        if x.startswith("DEFAULT_LEAF=")
    )
    share, spec, pooling = line.split("#")[0].strip().removeprefix("DEFAULT_LEAF=").split("=")
    defaults = parse_args([])
    assert (float(share), parse_args(["--broad_dropout", spec]).broad_dropout, pooling) == (
        defaults.leaf_probability,
        defaults.broad_dropout,
        defaults.attribute_pooling,
    )


@pytest.mark.slow
def test_the_script_trains_then_evaluates_its_rows_as_parallel_jobs_and_reuses_them(tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    docs.mkdir()
    env = {
        **os.environ,
        "TREE_ABLATION_DIR": str(runs),
        "TREE_ABLATION_DOCS": str(docs),
        "TREE_ABLATION_CATALOGUES": "hard",
        "TREE_ABLATION_JOBS": "2",
        "HARD_PRODUCTS": "240",
        "ALSO_LEAF": "0.5=title:0.5=attention",  # train.py's default, a row of its own: trained once
        "OMP_NUM_THREADS": "1",
    }
    command = ["bash", "scripts/ablation_tree.sh", "--seeds", "0", "--max_steps", "2", "--eval_steps", "0"]
    command += ["--per_device_train_batch_size", "16"]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "== train: 3 jobs, 2 at a time" in first.stdout and "== evaluate: 8 jobs" in first.stdout
    leaf = runs / "hard" / "leaf-0.5-broad-dropout-title-0.5-attention-pooling-s0"
    args = json.loads((leaf / "training_args.json").read_text())
    assert args["leaf_probability"] == 0.5 and args["broad_dropout"] == {"title": 0.5}
    assert args["attribute_pooling"] == "attention"
    paper = json.loads((runs / "hard" / "paper-s0" / "training_args.json").read_text())
    assert (paper["broad_dropout"], paper["leaf_probability"], paper["attribute_pooling"]) == (
        None,
        None,
        "mean",
    )
    assert (runs / "hard" / "paper-s0.log").stat().st_size > 0  # each job logs beside its run
    results = sorted(p.name for p in (runs / "hard" / "results").glob("*.json"))
    assert (
        len(results) == 8
        and "leaf 0.5 + broad dropout title:0.5 + attention pooling + marginal-s0.json" in results
    )
    assert (
        "| leaf 0.5 + broad dropout title:0.5 + attention pooling + marginal (1 seeds) |"
        in (docs / "ablation_tree.md").read_text()
    )
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "== train: 0 jobs" in again.stdout and "== evaluate: 0 jobs" in again.stdout
