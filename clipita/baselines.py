"""Zero-shot baselines of the paper, as rankers for `clipita.evaluation.evaluate_rankings`.

BM25 over product titles (the `bm25s` package) and zero-shot CLIP (category text vs product image through
CLIP's own projections, no CLIP-ITA heads). This module does not import `clipita.evaluation` and is not
imported by it: eval.py puts the two together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import bm25s
import numpy as np
import torch
import torch.nn.functional as F

from clipita.encoding import embed_dataset


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


def pretrained_towers(name_or_path) -> str | None:
    """The pretrained CLIP a CLIP-ITA's towers started from (`base_clip_model`, recorded by
    `CLIPITAModel.from_clip` / train.py --base_model), or None when they were trained from scratch: zero-shot
    CLIP through towers trained from scratch on the catalogue is not the paper's baseline and means nothing."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=True)
    return getattr(config, "base_clip_model", None)


def _unit(features) -> torch.Tensor:
    """L2-normalised embeddings from `get_*_features`: transformers' output object (`pooler_output`, the
    projected, unnormalised embedding) or a plain tensor."""
    return F.normalize(getattr(features, "pooler_output", features).float(), dim=-1)


def _in_batches(items: Sequence, encode: Callable[[list], torch.Tensor], batch_size: int) -> np.ndarray:
    with torch.no_grad():
        parts = [encode(list(items[i : i + batch_size])).cpu() for i in range(0, len(items), batch_size)]
    return torch.cat(parts).numpy()


def clip_zero_shot_embeddings(
    model, processor, products, batch_size: int = 64
) -> tuple[np.ndarray, Callable]:
    """Zero-shot CLIP: product images through CLIP's own image projection ([N, d], NaN rows: skipped
    products) and an encoder of category names through its text projection. No CLIP-ITA head is used."""

    def encode_images(rows: list[dict]) -> np.ndarray:
        def batch(images: list) -> torch.Tensor:
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            return _unit(model.get_image_features(pixel_values=pixels.to(model.device)))

        return _in_batches([row["image"] for row in rows], batch, batch_size)

    def encode_queries(texts: list[str]) -> np.ndarray:
        def batch(chunk: list[str]) -> torch.Tensor:
            tokens = processor(categories=chunk, return_tensors="pt").to(model.device)
            return _unit(
                model.get_text_features(
                    input_ids=tokens["category_input_ids"], attention_mask=tokens["category_attention_mask"]
                )
            )

        return _in_batches(texts, batch, batch_size)

    model.eval()
    embeds, _ = embed_dataset(
        products, encode_images, chunk_size=8 * batch_size, columns=["product_id", "image"]
    )
    return embeds, encode_queries
