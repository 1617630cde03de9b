"""CLIP-ITA Space: category text -> product images, and product image -> categories, over a catalogue index.

`python space/app.py` serves the model and index the README's main job builds (`outputs/clip-ita`,
`outputs/index`), or any model folder / Hub id and index folder / Hub dataset id given with --model /
--index (or CLIPITA_MODEL / CLIPITA_INDEX, comma-separated for several variants). Everything is loaded
once at start-up; a query then costs one text encoding and one index search.
"""

from __future__ import annotations

import argparse
import atexit
import html
import inspect
import io
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "clipita").is_dir() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # a checkout: the project's modules sit one folder up

import datasets  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, UnidentifiedImageError  # noqa: E402

from clipita.index import CatalogueIndex, Hit, search  # noqa: E402
from modeling_clipita import MAX_LOGIT_SCALE, CLIPITAModel  # noqa: E402
from processing_clipita import CLIPITAProcessor  # noqa: E402

logger = logging.getLogger("clipita.space")

DEFAULT_MODEL = "outputs/clip-ita"  # what the README's main job trains
DEFAULT_INDEX = "outputs/index"  # ... and indexes the catalogue into
MODEL_ENV, INDEX_ENV, CATALOGUE_ENV = "CLIPITA_MODEL", "CLIPITA_INDEX", "CLIPITA_CATALOGUE"
DEFAULT_K, MAX_K = 12, 48
DEFAULT_TOP_CATEGORIES, MAX_TOP_CATEGORIES = 5, 20
MAX_TREE_LEVELS = 9  # XMarket's deepest path
MAX_IMAGE_PIXELS = 64_000_000  # refuse larger uploads before decoding them
MAX_IMAGE_SIDE = 1024  # larger images are decoded (JPEG draft) and kept at this size: the model sees far less
MAX_UPLOAD = "25mb"
EMPTY_QUERY = "Type a category (any text works, e.g. “Ceramic Mugs”) or pick one in the category tree."


# ----------------------------------------------------------------------------------------------------------
# Catalogue side: the category tree and the products' images
# ----------------------------------------------------------------------------------------------------------


class CategoryTree:
    """The catalogue's category tree, root -> leaf, from the category paths of its products."""

    def __init__(self, paths: Iterable[Sequence[str]]):
        children: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for path in paths:
            parts = tuple(str(p).strip() for p in path if str(p).strip())
            for depth in range(len(parts)):
                children[parts[:depth]].add(parts[depth])
        self._children = {prefix: sorted(names) for prefix, names in children.items()}

    def children(self, prefix: Sequence[str] = ()) -> list[str]:
        return self._children.get(tuple(prefix), [])

    def nodes(self) -> list[tuple[str, ...]]:
        """Every category, inner and leaf, as its path, in depth-first order."""
        out: list[tuple[str, ...]] = []

        def visit(prefix: tuple[str, ...]) -> None:
            for name in self.children(prefix):
                out.append(prefix + (name,))
                visit(prefix + (name,))

        visit(())
        return out

    @property
    def depth(self) -> int:
        return max((len(prefix) + 1 for prefix in self._children), default=0)


def path_text(path: Sequence[str]) -> str:
    """The query text of a category path: the processor reads "A > B > C" as a path (leaf or full)."""
    return " > ".join(path)


class ProductImages:
    """product_id -> an image file the gallery can serve, from the catalogue the index was built from.

    Image cells stay undecoded: the stored bytes are written once per product into a cache folder, so a
    query costs no decode / re-encode. A product without a readable image gets a placeholder (counted).
    """

    def __init__(self, catalogue: datasets.Dataset | datasets.DatasetDict, cache_dir: str | os.PathLike):
        parts = list(catalogue.values()) if isinstance(catalogue, datasets.DatasetDict) else [catalogue]
        for part in parts:
            missing = {"product_id", "image"} - set(part.column_names)
            if missing:
                raise ValueError(
                    f"the catalogue lacks column(s) {sorted(missing)}: it is not in the canonical schema"
                )
        self._parts = [part.cast_column("image", datasets.Image(decode=False)) for part in parts]
        self._rows = {
            str(pid): (p, row)
            for p, part in enumerate(self._parts)
            for row, pid in enumerate(part["product_id"])
        }
        self._cache = Path(cache_dir)
        self._cache.mkdir(parents=True, exist_ok=True)
        self._paths: dict[str, str] = {}
        self.broken: list[str] = []

    def __contains__(self, product_id: str) -> bool:
        return product_id in self._rows

    def path(self, product_id: str) -> str:
        if product_id not in self._paths:
            self._paths[product_id] = self._write(product_id)
        return self._paths[product_id]

    def _write(self, product_id: str) -> str:
        try:
            part, row = self._rows[product_id]
            cell = self._parts[part][row]["image"] or {}
            data = cell.get("bytes") or Path(cell["path"]).read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                suffix = (image.format or "png").lower()
            target = self._cache / f"{len(self._paths):06d}.{suffix}"
            target.write_bytes(data)
            return str(target)
        except Exception as err:  # one broken product image never breaks an answer
            self.broken.append(product_id)
            logger.warning(
                "no image for product %s (%d products so far): %s: %s",
                product_id,
                len(self.broken),
                type(err).__name__,
                err,
            )
            return self._placeholder()

    def _placeholder(self) -> str:
        target = self._cache / "no-image.png"
        if not target.exists():
            image = Image.new("RGB", (128, 128), (235, 235, 235))
            ImageDraw.Draw(image).text((30, 58), "no image", fill=(120, 120, 120))
            image.save(target)
        return str(target)


def open_catalogue(source: Any, recorded: dict | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """The catalogue whose images the gallery shows.

    `source`: a catalogue object, or what `clipita.data.load_catalogue` reads ("demo", a folder, a file, a
    Hub dataset id). `recorded`: the index manifest's `dataset` entry; its split and loader options
    (preset, column names, ...) are reused, so product ids come out as they did when the index was built.
    """
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return source
    from clipita.data import load_catalogue

    accepted = inspect.signature(load_catalogue).parameters.keys() - {"source", "streaming", "return_report"}
    options = {key: value for key, value in (recorded or {}).items() if key in accepted}
    return load_catalogue(str(source), **options)


def recorded_catalogue(index: CatalogueIndex) -> dict:
    """The manifest's record of the catalogue an index was built from ({"source", "split", ...})."""
    dataset = index.manifest.get("dataset") or {}
    return {"source": dataset} if isinstance(dataset, str) else dict(dataset)


def recorded_model(index: CatalogueIndex, index_spec: str) -> str:
    model = (index.manifest.get("model") or {}).get("name_or_path")
    if not model:
        raise ValueError(f"the index {index_spec} does not record the model that built it: pass --model")
    return model


# ----------------------------------------------------------------------------------------------------------
# Models: one variant = a model, its processor, its index and its encoded category nodes
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """What one model answers with."""

    name: str
    source: str
    model: CLIPITAModel
    processor: CLIPITAProcessor
    index: CatalogueIndex
    images: ProductImages
    category_paths: list[str]
    category_embeds: np.ndarray  # [num categories, d], L2-normalised

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp())


def load_model(name_or_path: str) -> tuple[CLIPITAModel, CLIPITAProcessor]:
    """A model folder or Hub id -> model in eval mode (on the GPU if there is one) and its processor."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CLIPITAModel.from_pretrained(name_or_path).to(device).eval()
    processor = CLIPITAProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    model.processor = processor
    return model, processor


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
) -> list[Variant]:
    """Load every (model, index) pair once; pairs built from one catalogue share its images.

    A model given as None is the one the index manifest records. `catalogue` overrides the catalogue the
    manifests record (where the products' images come from).
    """
    if not indexes or len(models) != len(indexes):
        raise ValueError(f"give one index per model: got {len(models)} model(s) and {len(indexes)} index(es)")
    if cache_dir is None:
        cache_dir = tempfile.mkdtemp(prefix="clipita-space-")
        atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    cache = Path(cache_dir)
    images_by_catalogue: dict[str, ProductImages] = {}
    variants = []
    for i, (model_spec, index_spec) in enumerate(zip(models, indexes)):
        index = CatalogueIndex.load(resolve_index(index_spec))
        model_spec = model_spec or recorded_model(index, index_spec)
        model, processor = load_model(model_spec)
        index.check_dim(model.config.projection_dim, f"model {model_spec}")
        recorded = recorded_catalogue(index)
        source = catalogue if catalogue is not None else recorded.get("source")
        if source is None:
            raise ValueError(
                f"the index {index_spec} does not record the catalogue it was built from; pass --catalogue "
                "(a catalogue name, folder or Hub dataset id) so the app can show the products' images"
            )
        key = repr((source, recorded.get("split"))) if isinstance(source, str) else f"object-{id(source)}"
        if key not in images_by_catalogue:
            images_by_catalogue[key] = ProductImages(
                open_catalogue(source, recorded), cache / f"images-{len(images_by_catalogue)}"
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
        category_embeds = model.encode_categories(category_paths, processor=processor)
        name = names[i] if names else (model.config.variant or Path(model_spec).name)
        variants.append(
            Variant(name, model_spec, model, processor, index, images, category_paths, category_embeds)
        )
    taken = [v.name for v in variants]
    for v in variants:  # two models of the same variant: tell them apart by where they came from
        if taken.count(v.name) > 1:
            v.name = f"{v.name} ({v.source})"
    return variants


# ----------------------------------------------------------------------------------------------------------
# The two answers
# ----------------------------------------------------------------------------------------------------------


class BadInput(gr.Error):
    """A message for the user about what they sent (shown in the UI, raised to API clients as AppError);
    not a server fault, so no traceback in the log. The UI renders messages as HTML: callers escape
    whatever in them comes from the user."""

    def __init__(self, message: str):
        super().__init__(message, title="Cannot answer", print_exception=False)


def _count(value: Any, low: int, high: int, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInput(
            f"{what} must be a whole number from {low} to {high}, got {html.escape(repr(value))}"
        ) from None
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise BadInput(f"{what} must be a whole number from {low} to {high}, got {html.escape(repr(value))}")
    return int(number)


def caption(hit: Hit) -> str:
    attributes = ", ".join(hit.attributes)
    lines = [f"{hit.score:.3f} · {hit.title or hit.product_id}", path_text(hit.category)]
    return "\n".join(lines + ([attributes] if attributes else []))


def search_category(variant: Variant, query: str | None, k: Any) -> tuple[list, list[dict], str]:
    """Category text -> (gallery items, hits as dicts, latency line)."""
    text = " ".join(str(query or "").split())
    if not text.strip(" >"):
        raise BadInput(EMPTY_QUERY)
    k = _count(k, 1, MAX_K, "k (the number of products)")
    start = time.perf_counter()
    try:
        hits = search(text, k, model=variant.model, index=variant.index, processor=variant.processor)[0]
    except ValueError as err:
        raise BadInput(f"cannot search for {html.escape(repr(text))}: {html.escape(str(err))}") from err
    searched = time.perf_counter()
    gallery = [(variant.images.path(hit.product_id), caption(hit)) for hit in hits]
    done = time.perf_counter()
    latency = (
        f"**{(done - start) * 1000:.0f} ms** · {len(hits)} products with {variant.name} "
        f"(encode + search {(searched - start) * 1000:.0f} ms, images {(done - searched) * 1000:.0f} ms)"
    )
    return gallery, [hit.to_dict() for hit in hits], latency


def read_upload(upload: Any) -> Image.Image:
    """An uploaded file (gradio FileData dict or a path) -> a bounded RGB-able PIL image, or a clear BadInput."""
    if isinstance(upload, dict):
        path, name = upload.get("path"), upload.get("orig_name") or "the upload"
    else:
        path, name = upload, "the upload"
    if not path:
        raise BadInput("Upload a product image (JPEG, PNG or WebP) to classify.")
    name = html.escape(Path(str(name)).name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise BadInput(
            f"{name} is far too large an image; the limit is {MAX_IMAGE_PIXELS // 10**6} megapixels."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadInput(
            f"{name} is not an image this app can read: upload a JPEG, PNG or WebP product photo."
        ) from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise BadInput(
            f"{name} is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels); the limit is "
            f"{MAX_IMAGE_PIXELS // 10**6} megapixels: downscale it first."
        )
    try:
        image.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # JPEG: decode at reduced size
        image.load()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    except (OSError, SyntaxError, ValueError) as err:
        raise BadInput(f"{name} is a damaged image ({html.escape(str(err))}): upload another file.") from None
    return image


def split_attributes(text: str | None) -> list[str]:
    """ "colour: red, material: ceramic" or one per line -> ["colour: red", "material: ceramic"]."""
    return [part.strip() for line in str(text or "").splitlines() for part in line.split(",") if part.strip()]


def classify_image(
    variant: Variant, upload: Any, title: str | None, attributes: str | None, top: Any
) -> tuple[dict[str, float], str]:
    """A product (image, optional title and attributes) -> ({category path: probability}, latency line).

    Probabilities are a softmax, at the model's own temperature, over every category of the catalogue
    (inner and leaf nodes), so they say how sure the model is among the categories it can choose from.
    """
    top = _count(top, 1, MAX_TOP_CATEGORIES, "the number of categories")
    image = read_upload(upload)
    start = time.perf_counter()
    product = variant.model.encode_products(
        images=[image],
        titles=[" ".join(str(title or "").split())],
        attributes=[split_attributes(attributes)],
        processor=variant.processor,
    )[0]
    logits = variant.logit_scale * (variant.category_embeds @ product)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    best = np.argsort(-probabilities)[:top]
    elapsed = (time.perf_counter() - start) * 1000
    used = ", ".join(variant.model.config.product_modalities)
    latency = f"**{elapsed:.0f} ms** · {variant.name} read the product's {used}; {len(variant.category_paths)} categories ranked"
    return {variant.category_paths[i]: float(probabilities[i]) for i in best}, latency


# ----------------------------------------------------------------------------------------------------------
# The UI
# ----------------------------------------------------------------------------------------------------------

INTRO = """# CLIP-ITA: category-to-image retrieval
Type any category, seen in training or not, or walk the catalogue's category tree, and get the products
that fit it best; or upload a product photo (with its title and attributes, if you have them) and get
its most likely categories. Model: *Extending CLIP for Category-to-image Retrieval in E-commerce*
(Hendriksen et al., ECIR 2022)."""


def build_blocks(variants: Sequence[Variant]) -> gr.Blocks:
    """The UI and its two named API endpoints, /search_category and /classify_image."""
    by_name = {v.name: v for v in variants}
    tree = CategoryTree(row for v in variants for row in v.index.metadata.column("category").to_pylist())
    levels = max(1, min(tree.depth, MAX_TREE_LEVELS))

    def pick(name: str | None) -> Variant:
        return by_name.get(name or "", variants[0])

    def run_search(query, k, variant):
        """Category text (seen or unseen) -> the k best-matching products: (images with title,
        category, attributes and score; the hits as records; the answer's latency)."""
        return search_category(pick(variant), query, k)

    def run_classify(image, title, attributes, top, variant):
        """A product image, optionally its title and "key: value" attributes (comma- or line-separated)
        -> its most likely categories with probabilities; the answer's latency."""
        return classify_image(pick(variant), image, title, attributes, top)

    with gr.Blocks(
        title="CLIP-ITA category-to-image search",
        analytics_enabled=False,
        delete_cache=(3600, 3600),  # a long-running Space keeps gallery copies and uploads an hour at most
    ) as demo:
        gr.Markdown(INTRO)
        variant = gr.Radio(
            [v.name for v in variants],
            value=variants[0].name,
            label="Model variant",
            info="CLIP-I reads images; CLIP-IA adds attributes; CLIP-ITA adds titles too.",
            visible=len(variants) > 1,
            elem_id="variant",
        )
        with gr.Tab("Category → products"):
            with gr.Row():
                with gr.Column(scale=1, min_width=240):
                    gr.Markdown("**Browse the category tree**")
                    dropdowns = [
                        gr.Dropdown(
                            tree.children() if level == 0 else [],
                            value=None,
                            label="Root" if level == 0 else f"Level {level + 1}",
                            visible=level == 0,
                            elem_id=f"tree-level-{level + 1}",
                        )
                        for level in range(levels)
                    ]
                with gr.Column(scale=3):
                    with gr.Row():
                        query = gr.Textbox(
                            label="Category",
                            placeholder="any category text, e.g. Ceramic Mugs, or Home > Kitchen",
                            scale=4,
                            elem_id="query",
                        )
                        k = gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, label="Products (k)", scale=1)
                    search_button = gr.Button("Search", variant="primary", elem_id="search-button")
                    search_latency = gr.Markdown(elem_id="search-latency")
            gallery = gr.Gallery(
                label="Best matching products",
                columns=6,
                object_fit="contain",
                height="auto",
                elem_id="results",
            )
            with gr.Accordion("Results as records", open=False):
                records = gr.JSON(label="hits")
        with gr.Tab("Product → categories"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Product image", type="filepath", sources=["upload", "clipboard"])
                    title = gr.Textbox(
                        "", label="Title (optional)", placeholder="e.g. Red stoneware mug, 12 oz"
                    )
                    attributes = gr.Textbox(
                        "",
                        label="Attributes (optional)",
                        placeholder="colour: red, material: ceramic (comma- or line-separated)",
                        lines=2,
                    )
                    top = gr.Slider(
                        1, MAX_TOP_CATEGORIES, value=DEFAULT_TOP_CATEGORIES, step=1, label="Categories"
                    )
                    classify_button = gr.Button("Classify", variant="primary", elem_id="classify-button")
                with gr.Column():
                    label = gr.Label(label="Most likely categories", elem_id="categories")
                    classify_latency = gr.Markdown(elem_id="classify-latency")

        search_outputs = [gallery, records, search_latency]
        search_inputs = [query, k, variant]
        search_button.click(run_search, search_inputs, search_outputs, api_name="search_category")
        query.submit(run_search, search_inputs, search_outputs, api_visibility="private")
        classify_button.click(
            run_classify,
            [image, title, attributes, top, variant],
            [label, classify_latency],
            api_name="classify_image",
            preprocess=False,  # read_upload opens the file itself, so a non-image gets a clear message
        )

        for level, dropdown in enumerate(dropdowns):

            def choose(*path, level=level):
                """A tree node was picked: list its children one level down, hide deeper levels, fill the query."""
                children = tree.children(path)
                deeper = [
                    gr.Dropdown(
                        choices=children if j == level + 1 else [],
                        value=None,
                        visible=j == level + 1 and bool(children),
                    )
                    for j in range(level + 1, levels)
                ]
                values = [*deeper, path_text(path)]
                return values if deeper else values[0]  # one output (the leaf level) takes a bare value

            dropdown.input(
                choose, dropdowns[: level + 1], [*dropdowns[level + 1 :], query], api_visibility="private"
            ).then(run_search, search_inputs, search_outputs, api_visibility="private")
    return demo


def build_app(
    model_dir: str | os.PathLike | None | Sequence[str | os.PathLike | None] = DEFAULT_MODEL,
    index_dir: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_INDEX,
    catalogue: Any = None,
    names: Sequence[str] | None = None,
) -> gr.Blocks:
    """Load the model(s) and index(es) once and return the Space's Blocks (not launched).

    `model_dir` / `index_dir`: one folder or Hub id each, or equally long lists (one variant per pair);
    a model None is the one its index records. `catalogue`: where the products' images come from (a
    catalogue object, name, folder or Hub id); by default the catalogue the index manifest records.
    """
    single = model_dir is None or isinstance(model_dir, (str, os.PathLike))
    models = [model_dir] if single else list(model_dir)
    indexes = [index_dir] if isinstance(index_dir, (str, os.PathLike)) else list(index_dir)
    models = [None if m is None else str(m) for m in models]
    return build_blocks(load_variants(models, [str(i) for i in indexes], catalogue, names))


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _from_env(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _default(relative: str) -> str:
    """A default path: relative to the working directory if it is there, else to the checkout's root."""
    return relative if Path(relative).exists() or not (ROOT / relative).exists() else str(ROOT / relative)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        help=f"model folder or Hub id; repeat for several variants (env {MODEL_ENV}; default: the model "
        f"each --index records, or {DEFAULT_MODEL} with the default index)",
    )
    parser.add_argument(
        "--index", action="append", help=f"index folder or Hub dataset id, one per --model (env {INDEX_ENV})"
    )
    parser.add_argument(
        "--catalogue",
        default=os.environ.get(CATALOGUE_ENV) or None,
        help=f"catalogue holding the products' images (default: the one the index records; env {CATALOGUE_ENV})",
    )
    parser.add_argument("--name", action="append", help="display name of each variant (default: its variant)")
    parser.add_argument(
        "--port", type=int, default=None, help="server port (default: GRADIO_SERVER_PORT or 7860)"
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument(
        "--benchmark",
        type=int,
        metavar="N",
        default=0,
        help="time N category queries per variant, print, exit",
    )
    args = parser.parse_args(argv)
    args.model = args.model or _from_env(MODEL_ENV)
    args.index = args.index or _from_env(INDEX_ENV)
    if not args.index:
        args.index = [_default(DEFAULT_INDEX)]
        args.model = args.model or [_default(DEFAULT_MODEL)]
    args.model = args.model or [None] * len(args.index)  # the model each index records
    if len(args.model) != len(args.index):
        parser.error(
            f"give one index per model: got {len(args.model)} model(s) and {len(args.index)} index(es)"
        )
    if args.name and len(args.name) != len(args.model):
        parser.error(
            f"give one --name per model: got {len(args.name)} name(s) for {len(args.model)} model(s)"
        )
    return args


def benchmark(variants: Sequence[Variant], queries: int) -> None:
    """Median latency of category queries, in process and through the HTTP API (gradio_client)."""
    from gradio_client import Client

    demo = build_blocks(variants)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    client = Client(demo.local_url, verbose=False, download_files=False)  # time the answer, not downloads
    try:
        for variant in variants:
            texts = [variant.category_paths[i % len(variant.category_paths)] for i in range(queries + 1)]
            search_category(variant, texts[-1], DEFAULT_K)  # warm-up
            local = []
            for text in texts[:queries]:
                start = time.perf_counter()
                search_category(variant, text, DEFAULT_K)
                local.append((time.perf_counter() - start) * 1000)
            client.predict(texts[-1], DEFAULT_K, variant.name, api_name="/search_category")
            remote = []
            for text in texts[:queries]:
                start = time.perf_counter()
                client.predict(text, DEFAULT_K, variant.name, api_name="/search_category")
                remote.append((time.perf_counter() - start) * 1000)
            print(
                f"{variant.name}: {len(variant.index)} products, k={DEFAULT_K}, {queries} queries: "
                f"median {statistics.median(local):.1f} ms in process (max {max(local):.1f}), "
                f"median {statistics.median(remote):.1f} ms through the API (max {max(remote):.1f}); "
                f"torch threads {torch.get_num_threads()}"
            )
    finally:
        client.close()
        demo.close()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    args = parse_args(argv)
    try:
        variants = load_variants(args.model, args.index, args.catalogue, args.name)
    except (ValueError, OSError) as err:  # missing or mismatched model / index / catalogue: say which
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.benchmark:
        benchmark(variants, args.benchmark)
        return 0
    demo = build_blocks(variants)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stopped Space still runs atexit (image cache)
    demo.queue().launch(server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
