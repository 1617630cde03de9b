"""CLIP-ITA Space: category text -> product images, and product image -> categories, over a catalogue index.

`python space/app.py` serves the model and index the README's main job builds (`outputs/clip-ita`,
`outputs/index`), or any model folder / Hub id and index folder / Hub dataset id given with --model /
--index (or CLIPITA_MODEL / CLIPITA_INDEX, comma-separated for several variants). Everything is loaded
once at start-up; a query then costs one text encoding and one index search.

This file is the UI and the command line; `variants.py` loads the models and indexes,
`catalogue_images.py` serves the products' images and `answers.py` computes the two answers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi.middleware import Middleware

from clipita.cli import add_encoder_argument, add_node_scoring_argument
from clipita.index import MAX_QUERY_CHARS
from clipita.schema import path_text
from clipita.tree import CategoryTree

if __package__:  # imported as space.app (tests, bench/space_latency.py)
    from space import answers, variants
else:  # run as a script (python space/app.py, or a Space running app.py): its folder's modules are top-level
    import answers
    import variants

ROOT = Path(__file__).resolve().parents[1]  # the checkout, where the README's main job writes outputs/
DEFAULT_MODEL = "outputs/clip-ita"  # what the README's main job trains
DEFAULT_INDEX = "outputs/index"  # ... and indexes the catalogue into
MODEL_ENV, INDEX_ENV, CATALOGUE_ENV = "CLIPITA_MODEL", "CLIPITA_INDEX", "CLIPITA_CATALOGUE"
MAX_TREE_LEVELS = 9  # XMarket's deepest path
# Concurrent work is bounded: each endpoint runs QUEUE_CONCURRENCY requests at a time (a query holds the
# model and index, which one CPU request saturates), and at most QUEUE_MAX_SIZE wait; more get a
# "queue full" error at once rather than piling up memory.
QUEUE_CONCURRENCY = 1
QUEUE_MAX_SIZE = 64
# Request bodies other than file uploads (bounded by max_file_size) are refused past MAX_REQUEST_BYTES,
# before Gradio parses them: a call holds a query of at most MAX_QUERY_CHARS, a title and attributes, far
# under it. Gradio keeps each session's last inputs, for at most STATE_SESSIONS sessions: with both bounds
# a flood of large requests holds at most MAX_REQUEST_BYTES x STATE_SESSIONS.
MAX_REQUEST_BYTES = 64 * 1024
STATE_SESSIONS = 1000
DRAIN_BYTES = 64 * 2**20
# Gradio's default theme loads its bundled fonts at weights 400 and 600, but the 600 ("SemiBold") files it
# ships are subsets of a few glyphs (Source Sans Pro's: "A", "B" and some Cyrillic letters), so bold text
# mixed two fonts: those letters in Source Sans Pro, all others in the browser's fallback (the title's "A",
# the tree heading's "B" looked smaller). Its 700 ("Bold") files are complete: bold text (600 or 700)
# matches them, one font throughout, served by the app itself (no font download).
FONT_WEIGHTS = (400, 700)
THEME = gr.themes.Default(
    font=[
        gr.themes.LocalFont("Source Sans Pro", weights=FONT_WEIGHTS),
        "ui-sans-serif",
        "system-ui",
        "sans-serif",
    ],
    font_mono=[
        gr.themes.LocalFont("IBM Plex Mono", weights=FONT_WEIGHTS),
        "ui-monospace",
        "Consolas",
        "monospace",
    ],
)

# ----------------------------------------------------------------------------------------------------------
# The UI
# ----------------------------------------------------------------------------------------------------------

INTRO = """# CLIP-ITA: category-to-image retrieval
Type any category, seen in training or not, or walk the catalogue's category tree, and get the products
that fit it best; or upload a product photo (with its title and attributes, if you have them) and get
its most likely categories. Model: *Extending CLIP for Category-to-image Retrieval in E-commerce*
(Hendriksen et al., ECIR 2022)."""


def build_blocks(loaded: Sequence[variants.Variant]) -> gr.Blocks:
    """The UI and its two named API endpoints, /search_category and /classify_image."""
    by_name = {v.name: v for v in loaded}
    tree = CategoryTree(row for v in loaded for row in v.index.metadata.column("category").to_pylist())
    levels = max(1, min(tree.depth, MAX_TREE_LEVELS))

    def pick(name: str | None) -> variants.Variant:
        return by_name.get(name or "", loaded[0])

    def run_search(query, k, variant):
        """Category text (seen or unseen) -> the k best-matching products: (images with title,
        category, attributes and score; the hits as records; the answer's latency)."""
        return answers.search_category(pick(variant), query, k)

    def run_classify(image, title, attributes, top, variant):
        """A product image, optionally its title and "key: value" attributes (comma- or line-separated)
        -> its most likely categories with probabilities; the answer's latency."""
        return answers.classify_image(pick(variant), image, title, attributes, top)

    with gr.Blocks(
        title="CLIP-ITA category-to-image search",
        analytics_enabled=False,
        delete_cache=(3600, 3600),  # a long-running Space keeps gallery copies and uploads an hour at most
    ) as demo:
        gr.Markdown(INTRO)
        variant = gr.Radio(
            [v.name for v in loaded],
            value=loaded[0].name,
            label="Model variant",
            info="CLIP-I reads images; CLIP-IA adds attributes; CLIP-ITA adds titles too.",
            visible=len(loaded) > 1,
            elem_id="variant",
        )
        with gr.Tab("Category → products"):
            with gr.Row():
                with gr.Column(scale=1, min_width=240):
                    gr.Markdown("**Browse the category tree**", elem_id="tree-heading")
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
                            max_length=MAX_QUERY_CHARS,
                            elem_id="query",
                        )
                        k = answers.count_slider(
                            1, answers.MAX_K, value=answers.DEFAULT_K, step=1, label="Products (k)", scale=1
                        )
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
                        1,
                        answers.MAX_TOP_CATEGORIES,
                        value=answers.DEFAULT_TOP_CATEGORIES,
                        step=1,
                        label="Categories",
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
    return build_blocks(variants.load_variants(models, [str(i) for i in indexes], catalogue, names))


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


class RequestSizeLimit:
    """ASGI middleware: a request body over `max_bytes` (file uploads excepted) gets 413 and a one-line
    message, from its Content-Length before it is read, or once a body without one grows past it."""

    def __init__(self, app, max_bytes: int = MAX_REQUEST_BYTES, exempt: tuple[str, ...] = ("/upload",)):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith(self.exempt):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await self._refuse(receive, send)
        seen = 0

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # a body longer than announced (or unannounced): stop reading it
                return {"type": "http.disconnect"}
            return message

        return await self.app(scope, bounded_receive, send)

    async def _refuse(self, receive, send):
        # read (and drop) what the client is sending, up to DRAIN_BYTES, so it hears the 413 rather than a
        # reset connection; memory holds one chunk at a time
        drained, more = 0, True
        while more and drained <= DRAIN_BYTES:
            message = await receive()
            drained += len(message.get("body", b""))
            more = message.get("type") == "http.request" and message.get("more_body", False)
        body = json.dumps(
            {
                "error": f"request body over {self.max_bytes} bytes: queries are at most {MAX_QUERY_CHARS} characters"
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


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
    add_node_scoring_argument(parser, "how a category query that names a node scores products")
    add_encoder_argument(parser)
    parser.add_argument(
        "--backend",
        choices=("faiss", "milvus"),
        default="faiss",
        help="search the index folder (faiss) or a Milvus collection written by `search.py export` (milvus)",
    )
    parser.add_argument(
        "--milvus_uri", default=None, help="--backend milvus: a Milvus Lite file or http://host:19530"
    )
    parser.add_argument("--collection", action="append", help="--backend milvus: one collection per --index")
    args = parser.parse_args(argv)
    if args.backend == "milvus" and not args.milvus_uri:
        parser.error("--backend milvus needs --milvus_uri")
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


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    args = parse_args(argv)
    try:
        loaded = variants.load_variants(
            args.model, args.index, args.catalogue, args.name, encoder=args.encoder
        )
        for variant in loaded:
            variant.node_scoring = args.node_scoring
        if args.backend == "milvus":
            from clipita.index.vector_db import DEFAULT_COLLECTION

            variants.serve_from_milvus(loaded, args.milvus_uri, args.collection or [DEFAULT_COLLECTION])
    except (ValueError, OSError) as err:  # missing or mismatched model / index / catalogue: say which
        print(f"error: {err}", file=sys.stderr)
        return 2
    demo = build_blocks(loaded)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stopped Space still runs atexit (image cache)
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY, max_size=QUEUE_MAX_SIZE).launch(
        server_port=args.port,
        share=args.share,
        max_file_size=answers.MAX_UPLOAD_BYTES,
        state_session_capacity=STATE_SESSIONS,
        theme=THEME,
        app_kwargs={"middleware": [Middleware(RequestSizeLimit)]},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
