"""Ranking metrics for category-to-image retrieval, as a local `evaluate` module.

Load it offline with ``evaluate.load("<path to this folder or this file>")``. The module is standalone (numpy,
datasets and evaluate only) so the same file also serves `clipita.evaluation`, which imports it by path and
calls `per_query_scores` on relevance matrices it builds itself: the math exists once, here.

Definitions, for one query with ranked list ``r_1 .. r_L``, ``rel_i = 1`` when ``r_i`` is relevant, and ``R``
the number of relevant items (``R >= 1``). Positions past ``L`` count as not relevant; scores are the mean
over queries, each in [0, 1].

- ``P@k      = (1/k) * sum_{i<=k} rel_i``
- ``AP@k     = (1/min(k, R)) * sum_{i<=k} P@i * rel_i``; ``mAP@k`` is its mean over queries
- ``R-precision = (1/R) * sum_{i<=R} rel_i`` (precision at rank R)
- ``R@k      = (1/R) * sum_{i<=k} rel_i``
- ``MRR      = 1 / (rank of the first relevant item in the whole list)``, 0 when none is retrieved
- ``nDCG@k   = DCG@k / IDCG@k`` with binary gains: ``DCG@k = sum_{i<=k} rel_i / log2(i + 1)``,
  ``IDCG@k = sum_{i<=min(k, R)} 1 / log2(i + 1)``

Only the order of the ranked list matters (scores and their ties are not inputs). A repeated id in a ranked
list is an error, as is a query with no relevant ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{hendriksen2022clipita,
  title={Extending CLIP for Category-to-image Retrieval in E-commerce},
  author={Hendriksen, Mariya and Bleeker, Maurits and Vakulenko, Svitlana and van Noord, Nanne and
          Kuiper, Ernst and de Rijke, Maarten},
  booktitle={ECIR},
  year={2022}
}
"""

_DESCRIPTION = "P@k, mAP@k, R-precision, R@k, MRR and nDCG@k (binary gains) for ranked retrieval lists."

_KWARGS_DESCRIPTION = """
Args:
    predictions: one ranked list of retrieved ids (int or str) per query, best first.
    references: one list of relevant ids per query (at least one each).
    precision_at: cut-offs k for P@k. Default (1, 5, 10).
    map_at: cut-offs k for mAP@k. Default (5, 10).
    recall_at: cut-offs k for R@k. Default (10,).
    ndcg_at: cut-offs k for nDCG@k. Default (10,).
Returns:
    dict with "P@k", "mAP@k", "R@k", "nDCG@k" for each k, "R-precision" and "MRR": means over queries.
Example:
    >>> metric = evaluate.load("clipita/metrics/clipita_retrieval")
    >>> metric.compute(predictions=[[3, 1, 2]], references=[[1]], precision_at=(1,), map_at=(), recall_at=(),
    ...                ndcg_at=())
    {'P@1': 0.0, 'mAP@...
"""

DEFAULT_CUTOFFS = {"precision_at": (1, 5, 10), "map_at": (5, 10), "recall_at": (10,), "ndcg_at": (10,)}


def relevance_from_ids(
    predictions: Sequence[Sequence], references: Sequence[Sequence]
) -> tuple[np.ndarray, np.ndarray]:
    """Turn ranked id lists and relevant id lists into a padded boolean matrix [Q, L] and counts R [Q]."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} ranked lists but {len(references)} reference lists")
    width = max((len(p) for p in predictions), default=0)
    relevance = np.zeros((len(predictions), width), dtype=bool)
    num_relevant = np.zeros(len(predictions), dtype=np.int64)
    for q, (ranked, relevant) in enumerate(zip(predictions, references)):
        ranked, relevant = list(ranked), set(relevant)
        if len(set(ranked)) != len(ranked):
            raise ValueError(f"query {q}: the ranked list repeats an id")
        num_relevant[q] = len(relevant)
        relevance[q, : len(ranked)] = [r in relevant for r in ranked]
    return relevance, num_relevant


def _at(cumulative: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Column ``k - 1`` of a cumulative sum, clipped to its width (positions past the list add nothing)."""
    cols = np.minimum(np.broadcast_to(k, cumulative.shape[:1]), cumulative.shape[1]) - 1
    return cumulative[np.arange(cumulative.shape[0]), cols]


def per_query_scores(
    relevance: np.ndarray,
    num_relevant: np.ndarray,
    precision_at: Sequence[int] = DEFAULT_CUTOFFS["precision_at"],
    map_at: Sequence[int] = DEFAULT_CUTOFFS["map_at"],
    recall_at: Sequence[int] = DEFAULT_CUTOFFS["recall_at"],
    ndcg_at: Sequence[int] = DEFAULT_CUTOFFS["ndcg_at"],
) -> dict[str, np.ndarray]:
    """Every metric for every query, from a relevance matrix [Q, L] (best first) and relevant counts [Q]."""
    relevance = np.asarray(relevance, dtype=bool)
    num_relevant = np.asarray(num_relevant, dtype=np.int64)
    if relevance.ndim != 2 or num_relevant.shape != relevance.shape[:1]:
        raise ValueError(
            f"relevance must be [Q, L] and num_relevant [Q]; got {relevance.shape}, {num_relevant.shape}"
        )
    if (num_relevant < 1).any():
        raise ValueError(
            f"query {int(np.argmax(num_relevant < 1))} has no relevant items; its metrics are undefined"
        )
    if any(k < 1 for k in (*precision_at, *map_at, *recall_at, *ndcg_at)):
        raise ValueError("cut-offs must be >= 1")
    # One padding column so an empty ranked list still has a cumulative sum to read (zero hits).
    rel = np.pad(relevance, ((0, 0), (0, 1))).astype(np.float64)
    ranks = np.arange(1, rel.shape[1] + 1)
    hits = np.cumsum(rel, axis=1)
    if (hits[:, -1] > num_relevant).any():
        raise ValueError(
            f"query {int(np.argmax(hits[:, -1] > num_relevant))}: more relevant hits than num_relevant"
        )

    scores: dict[str, np.ndarray] = {}
    for k in precision_at:
        scores[f"P@{k}"] = _at(hits, k) / k
    ap_terms = np.cumsum(hits / ranks * rel, axis=1)
    for k in map_at:
        scores[f"mAP@{k}"] = _at(ap_terms, k) / np.minimum(k, num_relevant)
    scores["R-precision"] = _at(hits, num_relevant) / num_relevant
    for k in recall_at:
        scores[f"R@{k}"] = _at(hits, k) / num_relevant
    first = np.argmax(rel > 0, axis=1)
    scores["MRR"] = np.where(rel.any(axis=1), 1.0 / (first + 1), 0.0)
    for k in ndcg_at:
        dcg = _at(np.cumsum(rel / np.log2(ranks + 1), axis=1), k)
        ideal = np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1))
        scores[f"nDCG@{k}"] = dcg / ideal[np.minimum(k, num_relevant) - 1]
    return scores


def _features(id_type: str) -> datasets.Features:
    ids = datasets.Sequence(datasets.Value(id_type))
    return datasets.Features({"predictions": ids, "references": ids})


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClipitaRetrieval(evaluate.Metric):
    """Mean ranking metrics over queries; ids may be ints or strings."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[_features("string"), _features("int64")],  # string first: int64 would accept str
            reference_urls=["https://arxiv.org/abs/2112.11294"],
        )

    def _compute(
        self,
        predictions,
        references,
        precision_at: Sequence[int] = DEFAULT_CUTOFFS["precision_at"],
        map_at: Sequence[int] = DEFAULT_CUTOFFS["map_at"],
        recall_at: Sequence[int] = DEFAULT_CUTOFFS["recall_at"],
        ndcg_at: Sequence[int] = DEFAULT_CUTOFFS["ndcg_at"],
    ) -> dict[str, float]:
        if len(predictions) == 0:
            raise ValueError("no queries to score")
        relevance, num_relevant = relevance_from_ids(predictions, references)
        scores = per_query_scores(relevance, num_relevant, precision_at, map_at, recall_at, ndcg_at)
        return {name: float(values.mean()) for name, values in scores.items()}
