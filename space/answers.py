"""The Space's two answers: category text -> products (/search_category) and a product image -> its most
likely categories (/classify_image), with the checks that turn bad input into a message for the user."""

from __future__ import annotations

import html
import io
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from gradio.utils import get_upload_folder
from PIL import Image, UnidentifiedImageError

from clipita.evaluation import suggest_paths
from clipita.fileio import is_inside, read_regular_file
from clipita.index import Hit, check_query_length, search
from clipita.schema import path_text

if TYPE_CHECKING:
    from space.variants import Variant

DEFAULT_K, MAX_K = 12, 48
DEFAULT_TOP_CATEGORIES, MAX_TOP_CATEGORIES = 5, 20
MAX_UPLOAD_BYTES = 25 * 2**20  # launch(max_file_size=...) refuses larger uploads; read_upload checks again
MAX_IMAGE_PIXELS = 64_000_000  # refuse larger uploads before decoding them
MAX_IMAGE_SIDE = 1024  # larger images are decoded (JPEG draft) and kept at this size: the model sees far less
EMPTY_QUERY = "Type a category (any text works, e.g. “Ceramic Mugs”) or pick one in the category tree."


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


def count_slider(*args, **kwargs) -> gr.Slider:
    """A slider for a count whose API value, when not a finite number (None, "nan", text), reaches the
    function as sent, whose `_count` answers with a message, instead of failing in Gradio's bounds check
    with its generic error. (The instance's preprocess is wrapped: a Slider subclass would make Gradio
    write a .pyi stub beside this file.)"""
    slider = gr.Slider(*args, **kwargs)
    bounded = slider.preprocess

    def preprocess(payload: Any) -> Any:
        number = isinstance(payload, (int, float)) and not isinstance(payload, bool)
        return bounded(payload) if number and math.isfinite(payload) else payload

    slider.preprocess = preprocess
    return slider


def caption(hit: Hit) -> str:
    attributes = ", ".join(hit.attributes)
    lines = [f"{hit.score:.3f} · {hit.title or hit.product_id}", path_text(hit.category)]
    return "\n".join(lines + ([attributes] if attributes else []))


def search_category(variant: Variant, query: str | None, k: Any) -> tuple[list, list[dict], str]:
    """Category text -> (gallery items, hits as dicts, latency line)."""
    raw = str(query or "")
    try:
        check_query_length(raw)  # before any work on the text: a huge query costs nothing
    except ValueError as err:
        raise BadInput(html.escape(str(err))) from None
    text = " ".join(raw.split())
    if not text.strip(" >"):
        raise BadInput(EMPTY_QUERY)
    k = _count(k, 1, MAX_K, "k (the number of products)")
    start = time.perf_counter()
    try:
        hits = search(
            text,
            k,
            model=variant.model,
            index=variant.searcher or variant.index,
            processor=variant.processor,
            node_scoring=variant.node_scoring,
        )[0]
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


def upload_folder() -> str:
    """Where this app's Gradio keeps what clients uploaded (and its own cache): the only files
    /classify_image may read."""
    return get_upload_folder()


def read_upload(upload: Any) -> Image.Image:
    """An uploaded file (gradio FileData dict or a path) -> a bounded RGB-able PIL image, or a clear BadInput.

    The path comes from the client: Gradio checks it lies in its upload folder only when the file dict
    carries `meta`, so it is checked here again, whatever the client sent. Only a regular file inside the
    upload folder, of at most MAX_UPLOAD_BYTES, is read (a FIFO or device never is, so nothing blocks).
    """
    if isinstance(upload, dict):
        path, name = upload.get("path"), upload.get("orig_name") or "the upload"
    else:
        path, name = upload, "the upload"
    if not path:
        raise BadInput("Upload a product image (JPEG, PNG or WebP) to classify.")
    name = html.escape(Path(str(name)).name)
    if not isinstance(path, str) or not is_inside(path, [upload_folder()]):
        raise BadInput(
            f"{name} was not uploaded to this app: send the image itself (a file upload), not a path on the server."
        )
    try:
        data = read_regular_file(path, MAX_UPLOAD_BYTES)
    except OSError:
        raise BadInput(
            f"{name} is not an uploaded image file of at most {MAX_UPLOAD_BYTES // 2**20} MB: upload a "
            "JPEG, PNG or WebP product photo."
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
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

    The answers are root -> leaf paths of the catalogue's tree, ranked by the mean score of their nodes
    (`clipita.evaluation.suggest_paths`, the category suggestion eval.py's path_placement measures), so a
    suggestion never puts a leaf under the wrong parent. Probabilities are a softmax, at the model's own
    temperature, over every path, so they say how sure the model is among the paths it can choose from.
    """
    top = _count(top, 1, MAX_TOP_CATEGORIES, "the number of categories")
    image = read_upload(upload)
    start = time.perf_counter()
    product = variant.model.encode_products(
        images=[image],
        titles=[" ".join(str(title or "").split())],
        attributes=[split_attributes(attributes)],
        processor=variant.processor,
        dim=variant.dim,
    )[0]
    ranked = suggest_paths(product[None, :], variant.category_embeds, variant.nodes, len(variant.nodes))[0]
    logits = variant.logit_scale * np.array([score for _, score in ranked])
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    elapsed = (time.perf_counter() - start) * 1000
    used = ", ".join(variant.model.config.product_modalities)
    latency = f"**{elapsed:.0f} ms** · {variant.name} read the product's {used}; {len(ranked)} category paths ranked"
    return {path_text(path): float(p) for (path, _), p in zip(ranked[:top], probabilities)}, latency
