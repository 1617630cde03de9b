"""The evaluation protocol: queries per setting, seen / unseen, rankers, grouping, error analysis, reports."""

from __future__ import annotations

import numpy as np
import pytest

from clipita.baselines import BM25Ranker
from clipita.encoding import embed_dataset
from clipita.evaluation import (
    DenseRanker,
    evaluate_dense,
    evaluate_rankings,
    format_table,
    plot_results,
    unseen_sibling_share,
)
from clipita.metrics import metric_module
from clipita.tree import query_nodes, seen_nodes


def metric_names() -> list[str]:
    """The metric keys reported per group, in the order of `per_query_scores`."""
    return list(metric_module().per_query_scores(np.zeros((1, 1), bool), np.ones(1, int)))


# Products 0..5 and their paths; training saw A>B>C and F>G only.
PATHS = [list("ABC"), list("ABD"), list("AE"), list("FG"), list("ABC"), list("FH")]
TRAIN = [list("ABC"), list("FG")]
# A fixed ranking of all six products per query text (texts are the nodes' last names).
LISTS = {
    "A": [0, 3, 1, 2, 4, 5],
    "B": [0, 1, 4, 2, 3, 5],
    "C": [0, 1, 4, 2, 3, 5],
    "D": [2, 1, 0, 3, 4, 5],
    "E": [2, 0, 1, 3, 4, 5],
    "F": [3, 5, 0, 1, 2, 4],
    "G": [5, 3, 0, 1, 2, 4],
    "H": [0, 1, 2, 3, 4, 5],
}


class FixedRanker:
    def __init__(self, lists):
        self.lists, self.calls = lists, []

    def rank(self, query_texts, k):
        self.calls.append((list(query_texts), k))
        return np.array([self.lists[t][:k] for t in query_texts])


class OracleRanker:
    """Relevant products first (for a node named by its last letter), then the rest."""

    def rank(self, query_texts, k):
        return np.array([sorted(range(len(PATHS)), key=lambda i: t not in PATHS[i])[:k] for t in query_texts])


def test_query_nodes_per_setting():
    assert query_nodes(PATHS, "general") == [("A",), ("F",)]
    assert query_nodes(PATHS, "specific") == [
        tuple("ABC"),
        tuple("ABD"),
        tuple("AE"),
        tuple("FG"),
        tuple("FH"),
    ]
    assert len(query_nodes(PATHS, "all")) == 8  # A, AB, ABC, ABD, AE, F, FG, FH
    with pytest.raises(ValueError, match="unknown category level"):
        query_nodes(PATHS, "leaf")


def test_seen_nodes_are_every_prefix_of_training_paths():
    assert seen_nodes(TRAIN) == {("A",), ("A", "B"), tuple("ABC"), ("F",), ("F", "G")}


def test_specific_setting_by_hand():
    result = evaluate_rankings(FixedRanker(LISTS), PATHS, TRAIN, settings=("specific",))["specific"]
    assert result["num_queries"] == {"overall": 5, "seen": 2, "unseen": 3}
    # Per query (C, D, E, G, H): P@1 1 0 1 0 0; AP@10 5/6 1/2 1 1/2 1/6; R-precision 1/2 0 1 0 0.
    assert result["overall"]["P@1"] == pytest.approx(2 / 5)
    assert result["seen"]["P@1"] == pytest.approx(1 / 2)  # C, G
    assert result["unseen"]["P@1"] == pytest.approx(1 / 3)  # D, E, H
    assert result["overall"]["mAP@10"] == pytest.approx((5 / 6 + 1 / 2 + 1 + 1 / 2 + 1 / 6) / 5)
    assert result["overall"]["R-precision"] == pytest.approx(1.5 / 5)
    assert result["overall"]["MRR"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 2 + 1 / 6) / 5)
    # 24 wrong products in the top 10; 10 share the query's root; depth distances 1: 8, 2: 12, 3: 4.
    assert result["error_analysis"] == {
        "num_wrong": 24,
        "same_path_share": pytest.approx(10 / 24),
        "depth_distance": {
            "1": pytest.approx(8 / 24),
            "2": pytest.approx(12 / 24),
            "3": pytest.approx(4 / 24),
        },
    }


def test_sibling_confusion_measures_unseen_siblings_in_a_seen_leafs_top_10():
    # Seen leaves C (A>B>C) and G (F>G); their unseen siblings D (A>B>D) and H (F>H). Only 6 products:
    # C's list holds product 1 (A>B>D), G's list product 5 (F>H): 1 of 6 each.
    result = evaluate_rankings(FixedRanker(LISTS), PATHS, TRAIN, settings=("specific",))["specific"]
    assert result["sibling_confusion"] == {
        "seen_queries": 2,
        "with_unseen_sibling": 2,
        "unseen_sibling_share": pytest.approx(1 / 6),
        "unseen_sibling_share_exposed": pytest.approx(1 / 6),
    }
    # G ranked with its unseen sibling H's product first and C with D's twice: shares 2/6 and 1/6.
    lists = {**LISTS, "C": [1, 1, 0, 4, 2, 3], "G": [5, 3, 0, 1, 2, 4]}
    result = evaluate_rankings(FixedRanker(lists), PATHS, TRAIN, settings=("specific",))["specific"]
    assert result["sibling_confusion"]["unseen_sibling_share"] == pytest.approx((2 / 6 + 1 / 6) / 2)
    assert unseen_sibling_share(np.array([7, 7, 3, 1]), np.array([7])) == 0.5
    assert unseen_sibling_share(np.arange(20), np.array([0, 15])) == 0.1  # the top 10 only
    # A seen leaf without unseen siblings counts with share 0 in the mean over seen leaves, not among the
    # exposed; without a train split, nothing is seen and the measure is absent.
    only_c = [list("ABC"), list("FG"), list("FH")]
    result = evaluate_rankings(FixedRanker(LISTS), PATHS, only_c, settings=("specific",))["specific"]
    assert result["sibling_confusion"]["with_unseen_sibling"] == 1  # C (D unseen); G's sibling H is seen
    no_train = evaluate_rankings(FixedRanker(LISTS), PATHS, None, settings=("specific", "all"))
    assert "sibling_confusion" not in no_train["specific"] and "sibling_confusion" not in no_train["all"]


def test_general_setting_empty_unseen_group_is_null():
    result = evaluate_rankings(FixedRanker(LISTS), PATHS, TRAIN, settings=("general",))["general"]
    assert result["num_queries"] == {"overall": 2, "seen": 2, "unseen": 0}
    assert result["unseen"] == dict.fromkeys(metric_names())
    # A: top 4 = 0 3 1 2 -> 3 of R=4; F: top 2 = 3 5 -> 2 of R=2.
    assert result["overall"]["R-precision"] == pytest.approx((3 / 4 + 1) / 2)
    # Wrong products of a root query never share its root: all at distance 1.
    assert result["error_analysis"]["same_path_share"] == 0.0
    assert result["error_analysis"]["depth_distance"] == {"1": 1.0}


def test_without_train_split_seen_and_unseen_are_null():
    result = evaluate_rankings(FixedRanker(LISTS), PATHS, None, settings=("specific",))["specific"]
    assert result["num_queries"] == {"overall": 5, "seen": None, "unseen": None}
    assert result["seen"] == result["unseen"] == dict.fromkeys(metric_names())
    assert result["overall"]["P@1"] == pytest.approx(2 / 5)


def test_results_shape_and_ranges_for_every_setting():
    results = evaluate_rankings(FixedRanker(LISTS), PATHS, TRAIN)
    assert list(results) == ["all", "general", "specific"]
    for setting, result in results.items():
        extra = {"sibling_confusion"} if setting == "specific" else set()
        assert set(result) == {"overall", "seen", "unseen", "num_queries", "error_analysis", *extra}
        for group in ("overall", "seen", "unseen"):
            assert list(result[group]) == metric_names()
            assert all(v is None or 0.0 <= v <= 1.0 for v in result[group].values())
        assert (
            result["num_queries"]["overall"]
            == result["num_queries"]["seen"] + result["num_queries"]["unseen"]
        )


def test_oracle_ranker_scores_perfectly():
    result = evaluate_rankings(OracleRanker(), PATHS, TRAIN, settings=("specific",))["specific"]["overall"]
    for name in ("P@1", "mAP@5", "mAP@10", "R-precision", "R@10", "MRR", "nDCG@10"):
        assert result[name] == pytest.approx(1.0), name


def test_depth_reaches_r_and_grouping_changes_nothing():
    # 40 products under one root: R = 40 > 10, so the root query is ranked 40 deep.
    paths = [["Root", f"leaf{i % 4}"] for i in range(40)] + [["Other", "x"]] * 5
    rng = np.random.default_rng(0)
    perms = {
        name: list(rng.permutation(45)) for name in ["Root", "Other", "x"] + [f"leaf{i}" for i in range(4)]
    }
    one = FixedRanker(perms)
    together = evaluate_rankings(one, paths, paths[:10], settings=("all",))
    assert any("Root" in texts and k >= 40 for texts, k in one.calls)
    split = FixedRanker(perms)
    apart = evaluate_rankings(split, paths, paths[:10], settings=("all",), max_entries=50)
    assert len(split.calls) > len(one.calls)  # really grouped differently
    assert apart == together


def test_max_queries_samples_with_seed_whatever_other_settings_run():
    a = evaluate_rankings(
        FixedRanker(LISTS), PATHS, TRAIN, settings=("all",), max_queries_per_setting=3, seed=1
    )
    b = evaluate_rankings(
        FixedRanker(LISTS), PATHS, TRAIN, settings=("general", "all"), max_queries_per_setting=3, seed=1
    )
    assert a["all"]["num_queries"]["overall"] == 3
    assert a["all"] == b["all"]


def test_bad_paths_and_rankers_are_clear_errors():
    with pytest.raises(ValueError, match="product 1: category path"):
        evaluate_rankings(FixedRanker(LISTS), [["A"], "A>B"], TRAIN)

    class OutOfRange:
        def rank(self, texts, k):
            return np.full((len(texts), k), 99)

    with pytest.raises(ValueError, match="outside"):
        evaluate_rankings(OutOfRange(), PATHS, TRAIN, settings=("general",))


def test_dense_ranker_is_exact_cosine_search_in_batches():
    rng = np.random.default_rng(0)
    products = rng.normal(size=(300, 16)) * rng.uniform(0.5, 3, size=(300, 1))  # norms must not matter
    table = {f"q{i}": rng.normal(size=16) for i in range(7)}
    ranker = DenseRanker(products, lambda texts: np.stack([table[t] for t in texts]), batch_size=3)
    got = ranker.rank(list(table), 12)
    unit = products / np.linalg.norm(products, axis=1, keepdims=True)
    expected = np.argsort(-(np.stack(list(table.values())) @ unit.T), axis=1)[:, :12]
    np.testing.assert_array_equal(got, expected)
    assert ranker.rank(["q0"], 1000).shape == (1, 300)  # k past N is clipped


def test_dense_ranker_end_to_end_on_separable_embeddings():
    # Each product's embedding is its leaf's one-hot: leaf queries are answered perfectly.
    leaves = sorted({tuple(p) for p in PATHS})
    onehot = np.eye(len(leaves))
    products = np.stack([onehot[leaves.index(tuple(p))] for p in PATHS])
    by_name = {leaf[-1]: onehot[i] for i, leaf in enumerate(leaves)}
    ranker = DenseRanker(products, lambda texts: np.stack([by_name[t] for t in texts]))
    result = evaluate_rankings(ranker, PATHS, TRAIN, settings=("specific",))["specific"]["overall"]
    assert result["R-precision"] == pytest.approx(1.0)
    assert result["MRR"] == pytest.approx(1.0)


def test_bm25_ranker_ranks_matching_titles_first():
    ranker = BM25Ranker(["red mug ceramic", "blue running shoes", "mug holder", "", "the of"])
    ranked = ranker.rank(["mug", "shoes", "the"], 10)
    assert ranked.shape == (3, 5)  # clipped to the catalogue
    assert set(ranked[0, :2]) == {0, 2}
    assert ranked[1, 0] == 1
    assert sorted(ranked[2]) == [0, 1, 2, 3, 4]  # a stopword-only query still ranks every product


def test_format_table_and_plot(tmp_path):
    results = evaluate_rankings(FixedRanker(LISTS), PATHS, TRAIN)
    table = format_table({"fixed": {"model": "fixed", "settings": results}, "bare": results})
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == 4  # header, rule, two models
    assert rows[0].count("|") == 11  # model + 3 settings x (overall, seen, unseen)
    spec = results["specific"]["overall"]
    assert f"{100 * spec['P@10']:.2f} / {100 * spec['mAP@10']:.2f}" in rows[2]
    assert "| - / - |" in rows[2]  # general has no unseen queries
    png = plot_results({"fixed": results}, tmp_path / "docs" / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embed_dataset_skips_broken_rows_and_raises_on_systematic_failure():
    import datasets

    products = datasets.Dataset.from_dict({"x": [1.0, 2.0, -1.0, 4.0, 5.0], "other": list("abcde")})

    def encode(rows):
        assert all(list(row) == ["x"] for row in rows)  # only the asked columns are read
        if any(row["x"] < 0 for row in rows):
            raise OSError("unreadable image")
        return np.array([[row["x"], 1.0] for row in rows])

    embeds, failures = embed_dataset(products, encode, chunk_size=2, columns=["x"])
    assert [f.row for f in failures] == [2]
    assert np.isnan(embeds[2]).all()
    np.testing.assert_array_equal(embeds[[0, 1, 3, 4], 0], [1, 2, 4, 5])

    results, skipped = evaluate_dense(
        embeds, lambda texts: np.ones((len(texts), 2)), PATHS[:5], TRAIN, settings=("general",)
    )
    assert skipped == 1
    assert results["general"]["num_queries"]["overall"] == 2

    def always_fails(rows):
        raise KeyError("image")

    with pytest.raises(ValueError, match="first chunk"):
        embed_dataset(products, always_fails, chunk_size=2, columns=["x"])


def test_eval_cli_end_to_end(tmp_path, caplog):
    """eval.py on a generated catalogue and a tiny saved CLIP-ITA: results.json schema and value ranges."""
    import json

    from clipita.bootstrap import build_default_model, register_auto_classes
    from clipita.catalogue import generate_catalogue
    from clipita.data import load_catalogue
    from eval import main

    catalogue = generate_catalogue(tmp_path / "catalogue", num_products=240, progress=False)
    train = load_catalogue(str(catalogue), "train")
    texts = [
        *train["title"],
        *(a for attrs in train["attributes"] for a in attrs),
        *(c for p in train["category"] for c in p),
    ]
    model, processor = build_default_model(texts, hidden_size=32, layers=1)
    register_auto_classes()  # the folder gets its auto_map and code files: eval.py loads remote code
    model.save_pretrained(tmp_path / "clip-ita")
    processor.save_pretrained(tmp_path / "clip-ita")

    out = tmp_path / "results.json"
    args = ["--model", str(tmp_path / "clip-ita"), "--dataset", str(catalogue), "--split", "test"]
    args += ["--output", str(out), "--max_queries", "25", "--table", str(tmp_path / "t.md")]
    with caplog.at_level("INFO", logger="eval"):
        returned = main([*args, "--plot", str(tmp_path / "docs" / "p.png")])

    results = json.loads(out.read_text())
    assert results == returned
    assert results["model"] == str(tmp_path / "clip-ita") and results["variant"] == "clip-ita"
    assert (results["dataset"], results["split"]) == (str(catalogue), "test")
    # towers trained from scratch: zero-shot CLIP would mean nothing, so it is skipped, saying why
    assert [run["model"] for run in results["baselines"]] == ["bm25"]
    skipped = [r.getMessage() for r in caplog.records if "CLIP zero-shot baseline skipped" in r.getMessage()]
    assert len(skipped) == 1 and "trained from scratch" in skipped[0]
    test_size = len(load_catalogue(str(catalogue), "test"))
    for run in [results, *results["baselines"]]:
        assert run["num_products"] + run["num_skipped"] == test_size
        assert list(run["settings"]) == ["all", "general", "specific"]
        for setting in run["settings"].values():
            counts = setting["num_queries"]
            assert 0 < counts["overall"] <= 25 and counts["overall"] == counts["seen"] + counts["unseen"]
            for group in ("overall", "seen", "unseen"):
                assert list(setting[group]) == metric_names()
                values = list(setting[group].values())
                assert (
                    all(v is None for v in values) if counts[group] == 0 else all(0 <= v <= 1 for v in values)
                )
            assert 0 <= setting["error_analysis"]["same_path_share"] <= 1
    # The demo catalogue holds out leaves from training: the specific setting has unseen queries.
    assert results["settings"]["specific"]["num_queries"]["unseen"] > 0
    table = (tmp_path / "t.md").read_text()
    assert all(f"| {name} |" in table for name in ("BM25", "clip-ita")) and "CLIP zero-shot" not in table
    assert (tmp_path / "docs" / "p.png").read_bytes()[:4] == b"\x89PNG"

    quick = [*args[:6], "--settings", "general", "--max_queries", "5"]
    asked = main([*quick, "--output", str(tmp_path / "asked.json"), "--baselines", "clip-zero-shot"])
    assert [run["model"] for run in asked["baselines"]] == ["clip-zero-shot"]  # asked for: it runs
    # towers from a pretrained CLIP (what from_clip / train.py --base_model record): it runs by default
    model.config.base_clip_model = "openai/clip-vit-base-patch32"
    model.save_pretrained(tmp_path / "clip-ita")
    pretrained = main([*quick, "--output", str(tmp_path / "pretrained.json")])
    assert [run["model"] for run in pretrained["baselines"]] == ["bm25", "clip-zero-shot"]
