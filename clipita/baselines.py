"""Zero-shot baselines of the paper, as rankers for `clipita.evaluation.evaluate_rankings`.

BM25 over product titles (the `bm25s` package) and zero-shot CLIP (category text vs product image through
CLIP's own projections, no CLIP-ITA heads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import bm25s
import numpy as np


class BM25Ranker:
    """BM25 (Lucene variant, bm25s defaults k1=1.5, b=0.75) of category names against product titles.

    Products whose title shares no term with the query score 0 and fill the tail of the ranking in bm25s's
    order. The paper does not give its BM25 settings; stopwords are English, no stemming unless
    ``stemmer`` (e.g. ``Stemmer.Stemmer("english")`` from PyStemmer) is given.
    """

    def __init__(self, titles: Sequence[str], stopwords: str | None = "en", stemmer: Callable | None = None):
        if len(titles) == 0:
            raise ValueError("BM25Ranker needs at least one product title")
        self.stopwords, self.stemmer = stopwords, stemmer
        corpus = bm25s.tokenize(
            [t or "" for t in titles], stopwords=stopwords, stemmer=stemmer, show_progress=False
        )
        self.retriever = bm25s.BM25()
        self.retriever.index(corpus, show_progress=False)
        self.num_products = len(titles)

    def rank(self, query_texts: list[str], k: int) -> np.ndarray:
        tokens = bm25s.tokenize(
            list(query_texts),
            stopwords=self.stopwords,
            stemmer=self.stemmer,
            return_ids=False,
            show_progress=False,
        )
        k = min(k, self.num_products)
        return self.retriever.retrieve(tokens, k=k, return_as="documents", show_progress=False).astype(
            np.int64
        )
