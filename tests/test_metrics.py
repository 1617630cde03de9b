"""The retrieval metric module: hand-computed cases, edge cases, and `evaluate.load` offline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipita.metrics import METRIC_PATH, metric_module


def load_metric(**kwargs):
    """The metric as an `evaluate.EvaluationModule` (``evaluate.load`` on the local folder, offline)."""
    import evaluate

    return evaluate.load(str(METRIC_PATH), **kwargs)


scores_of = metric_module()


def mean_scores(predictions, references, **kwargs) -> dict[str, float]:
    relevance, num_relevant = scores_of.relevance_from_ids(predictions, references)
    return {
        k: float(v.mean()) for k, v in scores_of.per_query_scores(relevance, num_relevant, **kwargs).items()
    }


IDCG = [sum(1 / math.log2(i + 1) for i in range(1, n + 1)) for n in range(11)]  # IDCG[n]: n relevant


def test_single_query_every_metric_by_hand():
    # rel = 1 0 1 0 0 0 0 0 0 0 0 1 (ranks 1, 3, 12 relevant), R = 3
    ranked = list("abcdefghijkl")
    got = mean_scores([ranked], [["a", "c", "l"]])
    expected = {
        "P@1": 1.0,
        "P@5": 2 / 5,
        "P@10": 2 / 10,
        "mAP@5": (1 / 3) * (1 / 1 + 2 / 3),  # P@1 + P@3, over min(5, R) = 3
        "mAP@10": (1 / 3) * (1 / 1 + 2 / 3),  # rank 12 is past the cut-off
        "R-precision": 2 / 3,  # two hits in the top R = 3
        "R@10": 2 / 3,
        "MRR": 1.0,
        "nDCG@10": (1 + 1 / math.log2(4)) / IDCG[3],
    }
    assert got == pytest.approx(expected)
    assert list(got) == list(expected)  # the documented keys, in order


def test_nothing_relevant_retrieved_scores_zero():
    got = mean_scores([["x", "y", "z"]], [["a"]])
    assert set(got.values()) == {0.0}


def test_relevant_count_larger_than_the_list():
    # Two retrieved, both relevant, R = 12: short lists are not rewarded (missing ranks are misses).
    got = mean_scores([[1, 2]], [list(range(1, 13))])
    assert got == pytest.approx(
        {
            "P@1": 1.0,
            "P@5": 2 / 5,
            "P@10": 2 / 10,
            "mAP@5": 2 / 5,  # (P@1 + P@2) / min(5, 12)
            "mAP@10": 2 / 10,
            "R-precision": 2 / 12,
            "R@10": 2 / 12,
            "MRR": 1.0,
            "nDCG@10": (1 + 1 / math.log2(3)) / IDCG[10],
        }
    )


def test_late_first_hit_counts_for_mrr_only():
    ranked = list(range(15))
    got = mean_scores([ranked], [[11]])  # rank 12
    assert got["MRR"] == pytest.approx(1 / 12)
    assert {k: v for k, v in got.items() if k != "MRR"} == dict.fromkeys(got.keys() - {"MRR"}, 0.0)


def test_empty_ranked_list():
    assert set(mean_scores([[]], [[1]]).values()) == {0.0}


def test_only_the_order_counts_not_which_irrelevant_or_relevant_item_sits_where():
    base = mean_scores([[1, 9, 2, 8, 7]], [[1, 2]])
    # Swapping two irrelevant items, or two relevant ones, changes nothing ...
    assert mean_scores([[1, 8, 2, 9, 7]], [[1, 2]]) == base
    assert mean_scores([[2, 9, 1, 8, 7]], [[1, 2]]) == base
    # ... swapping a relevant with an irrelevant one does.
    assert mean_scores([[9, 1, 2, 8, 7]], [[1, 2]])["P@1"] == 0.0


def test_mean_over_queries():
    q1 = mean_scores([[3, 1, 2]], [[1]])
    q2 = mean_scores([[5, 6]], [[7, 6]])
    both = mean_scores([[3, 1, 2], [5, 6]], [[1], [7, 6]])
    assert both == pytest.approx({k: (q1[k] + q2[k]) / 2 for k in both})
    # Values from the module's README example.
    assert both["mAP@5"] == pytest.approx(0.375)
    assert both["R-precision"] == pytest.approx(0.25)


def test_custom_cutoffs_name_the_keys():
    got = mean_scores([[1, 2, 3]], [[2]], precision_at=(2,), map_at=(3,), recall_at=(1,), ndcg_at=(2,))
    assert got == pytest.approx(
        {"P@2": 0.5, "mAP@3": 0.5, "R-precision": 0.0, "R@1": 0.0, "MRR": 0.5, "nDCG@2": 1 / math.log2(3)}
    )


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        ([[1, 2, 1]], [[1]], "repeats an id"),
        ([[1, 2]], [[]], "no relevant items"),
        ([[1, 2]], [[1], [2]], "1 ranked lists but 2"),
    ],
)
def test_bad_input_is_a_clear_error(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        mean_scores(predictions, references)


def test_relevance_matrix_inconsistent_with_counts():
    with pytest.raises(ValueError, match="more relevant hits"):
        scores_of.per_query_scores(np.array([[True, True]]), np.array([1]))


@pytest.mark.parametrize("path", [METRIC_PATH, METRIC_PATH / "clipita_retrieval.py"])
def test_evaluate_load_offline_matches_numpy(path, monkeypatch, tmp_path):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(str(path), cache_dir=str(tmp_path))
    predictions, references = [[3, 1, 2], [5, 6], list(range(20))], [[1], [7, 6], [0, 19]]
    assert metric.compute(predictions=predictions, references=references) == pytest.approx(
        mean_scores(predictions, references)
    )


def test_evaluate_module_takes_string_ids_and_cutoffs():
    metric = load_metric()
    got = metric.compute(
        predictions=[["p3", "p1"]],
        references=[["p1"]],
        precision_at=(1, 2),
        map_at=(),
        recall_at=(),
        ndcg_at=(),
    )
    assert got == pytest.approx({"P@1": 0.0, "P@2": 0.5, "R-precision": 0.0, "MRR": 0.5})
