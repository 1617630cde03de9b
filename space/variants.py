"""Loading the Space's variants: one variant = a model (through its folder's remote code), its processor,
its catalogue index, the products' images and the encoded category nodes of the catalogue."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipita.encoding import softmax_temperature
from clipita.index import CatalogueIndex
from clipita.loading import weights_sha256
from clipita.onnx_encoder import load_encoder
from clipita.schema import path_text
from clipita.tree import DEFAULT_NODE_SCORING, CategoryTree

if __package__:  # imported as space.variants (tests, bench/space_latency.py)
    from space import catalogue_images
else:  # space/app.py run as a script (locally or in a Space): its folder's modules are top-level
    import catalogue_images

logger = logging.getLogger("clipita.space")


@dataclass
class Variant:
    """What one model answers with."""

    name: str
    source: str
    model: Any  # the folder's remote-code CLIP-ITA model in eval mode, or its OnnxEncoder
    processor: Any
    index: CatalogueIndex
    images: catalogue_images.ProductImages
    category_paths: list[str]
    category_embeds: np.ndarray  # [num categories, d], L2-normalised
    nodes: list[tuple[str, ...]] | None = None  # the categories as paths, rows of category_embeds
    node_scoring: str = (
        DEFAULT_NODE_SCORING  # how /search_category scores a named node (clipita.tree.NODE_SCORINGS)
    )
    dim: int | None = None  # the index's nested (Matryoshka) size, when it holds embeddings cut to one
    searcher: Any = None  # what /search_category searches when not `index`: a vector database (issue 17)

    @property
    def logit_scale(self) -> float:
        return 1.0 / softmax_temperature(self.model)


def recorded_catalogue(index: CatalogueIndex) -> dict:
    """The manifest's record of the catalogue an index was built from ({"source", "split", ...})."""
    dataset = index.manifest.get("dataset") or {}
    return {"source": dataset} if isinstance(dataset, str) else dict(dataset)


def recorded_model(index: CatalogueIndex, index_spec: str) -> str:
    model = (index.manifest.get("model") or {}).get("name_or_path")
    if not model:
        raise ValueError(f"the index {index_spec} does not record the model that built it: pass --model")
    return model


def resolve_index(spec: str | os.PathLike) -> Path:
    """An index folder, or a Hub dataset repo holding one (clipita.hub uploads indexes there)."""
    path = Path(spec)
    if path.exists() or Path(spec).is_absolute() or str(spec).count("/") != 1:
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(spec), repo_type="dataset"))
    except Exception as err:  # offline, no such repo, no access: say both readings of the name failed
        raise FileNotFoundError(
            f"{spec} is neither an index folder nor a Hub dataset repo this machine can download "
            f"({type(err).__name__}: {err}); build one with `python search.py build ... --output {spec}`"
        ) from err


def load_variants(
    models: Sequence[str | None],
    indexes: Sequence[str],
    catalogue: Any = None,
    names: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_model_mismatch: bool = False,
    encoder: str = "torch",
) -> list[Variant]:
    """Load every (model, index) pair once; pairs built from one catalogue share its images.

    A model given as None is the one the index manifest records; a model whose weights differ from those
    that built its index is refused unless `allow_model_mismatch`. `catalogue` overrides the catalogue the
    manifests record (where the products' images come from). `encoder`: "torch", or the model folders' ONNX
    export ("onnx", "onnx-int8"; clipita.onnx_encoder).
    """
    if not indexes or len(models) != len(indexes):
        raise ValueError(f"give one index per model: got {len(models)} model(s) and {len(indexes)} index(es)")
    if cache_dir is None:
        cache_dir = tempfile.mkdtemp(prefix="clipita-space-")
        atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    cache = Path(cache_dir)
    images_by_catalogue: dict[str, catalogue_images.ProductImages] = {}
    variants = []
    for i, (model_spec, index_spec) in enumerate(zip(models, indexes)):
        index = CatalogueIndex.load(resolve_index(index_spec))
        model_spec = model_spec or recorded_model(index, index_spec)
        model, processor = load_encoder(model_spec, encoder)
        dim = index.dim if index.dim in (getattr(model.config, "matryoshka_dims", None) or []) else None
        if dim is None:
            index.check_dim(model.config.projection_dim, f"model {model_spec}")
        if not allow_model_mismatch:
            index.check_weights(weights_sha256(model_spec), f"model {model_spec}")
        recorded = recorded_catalogue(index)
        source = catalogue if catalogue is not None else recorded.get("source")
        if source is None:
            raise ValueError(
                f"the index {index_spec} does not record the catalogue it was built from; pass --catalogue "
                "(a catalogue name, folder or Hub dataset id) so the app can show the products' images"
            )
        key = repr((source, recorded.get("split"))) if isinstance(source, str) else f"object-{id(source)}"
        if key not in images_by_catalogue:
            images_by_catalogue[key] = catalogue_images.ProductImages(
                catalogue_images.open_catalogue(source, recorded),
                cache / f"images-{len(images_by_catalogue)}",
            )
        images = images_by_catalogue[key]
        ids = index.metadata.column("product_id").to_pylist()
        missing = [pid for pid in ids if pid not in images]
        if len(missing) == len(ids):
            raise ValueError(
                f"none of the {len(ids)} products of index {index_spec} is in the catalogue {key}: "
                "pass the catalogue the index was built from with --catalogue"
            )
        if missing:
            logger.warning(
                "%d products of index %s have no catalogue row (first: %s)",
                len(missing),
                index_spec,
                missing[0],
            )
        tree = CategoryTree(index.metadata.column("category").to_pylist())
        category_paths = [path_text(node) for node in tree.nodes()]
        category_embeds = model.encode_categories(category_paths, processor=processor, dim=dim)
        name = names[i] if names else (model.config.variant or Path(model_spec).name)
        variants.append(
            Variant(
                name,
                model_spec,
                model,
                processor,
                index,
                images,
                category_paths,
                category_embeds,
                tree.nodes(),
                dim=dim,
            )
        )
    taken = [v.name for v in variants]
    for v in variants:  # two models of the same variant: tell them apart by where they came from
        if taken.count(v.name) > 1:
            v.name = f"{v.name} ({v.source})"
    return variants


def serve_from_milvus(loaded: Sequence[Variant], uri: str, collections: Sequence[str]) -> None:
    """Search each variant's products in a Milvus collection (`search.py export`) instead of its FAISS index,
    by the query text alone (node scoring "node"); the index folder still gives the category tree and the
    products' metadata. A collection exported from another build (other weights or products) is refused."""
    from clipita.index.vector_db import MilvusIndex

    if len(collections) != len(loaded):
        raise ValueError(f"give one --collection per variant: got {len(collections)} for {len(loaded)}")
    for variant, collection in zip(loaded, collections):
        served = MilvusIndex(uri, collection)
        if variant.node_scoring != "node":  # the database ranks by the text alone: it holds no tree
            logger.warning("variant %s: --backend milvus scores by the query text alone", variant.name)
            variant.node_scoring = "node"
        recorded = (variant.index.manifest.get("model") or {}).get("weights_sha256")
        if recorded:
            served.check_weights(recorded, f"the index of variant {variant.name}")
        if len(served) != len(variant.index):
            raise ValueError(
                f"{served.path} holds {len(served)} products, the index of variant {variant.name} "
                f"{len(variant.index)}: export that index again (search.py export --overwrite)"
            )
        variant.searcher = served
