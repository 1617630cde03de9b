"""Command-line flags shared by train.py, eval.py and search.py: the catalogue loader's, so they mean the
same everywhere. `python -m clipita.data --dataset ...` runs `check_catalogue` on them.

Layer 2 (docs/ARCHITECTURE.md): it sits on `clipita.data`; the training package's own flags build on it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from clipita.data import PRESETS, CatalogueSchemaError, load_catalogue
from clipita.onnx_encoder import ENCODERS
from clipita.schema import PATH_SEPARATOR
from clipita.tree import DEFAULT_NODE_SCORING, NODE_SCORINGS, category_nodes, is_unseen, seen_nodes

# What a careless user causes (a bad flag value, a missing or existing file, a malformed catalogue): a command
# line reports these on one line with exit status 2, not as a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
USER_ERROR_EXIT = 2


def one_line(error: BaseException) -> str:
    """`error: <message>` on one line (a multi-line message is joined with '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "error: " + ("; ".join(lines) or type(error).__name__)


def run_command(work: Callable[[], object]) -> int:
    """Run a command line's `work`: 0 when it returns; a user error prints `one_line(error)` to stderr and
    returns 2. CLIPITA_TRACEBACK=1 re-raises it instead, to see where it came from."""
    try:
        work()
    except USER_ERRORS as error:
        if os.environ.get("CLIPITA_TRACEBACK") == "1":
            raise
        print(one_line(error), file=sys.stderr)
        return USER_ERROR_EXIT
    return 0


def _list_or_str(text: str) -> str | list[str] | None:
    """'' -> None (no such column), 'a,b' -> ['a', 'b'], 'a' -> 'a'."""
    if text == "":
        return None
    return [part.strip() for part in text.split(",")] if "," in text else text


class OneDefaultHelpFormatter(argparse.HelpFormatter):
    """Every option's default shown once: the one its help words ("default: ..."), else its value.

    argparse's ArgumentDefaultsHelpFormatter appends "(default: X)" even after a help that already states
    the default in words, and shows "(default: None)" where None means "unset"; here a help that says
    "default" is left as it is, and an option whose default is None must say in words what None means.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or not action.option_strings:
            return text
        if action.default is None or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: %(default)s)"


def add_node_scoring_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--node_scoring` (`clipita.tree.NODE_SCORINGS`), worded for what it changes in this command."""
    parser.add_argument(
        "--node_scoring",
        choices=tuple(NODE_SCORINGS),
        default=DEFAULT_NODE_SCORING,
        help=f"{what}; " + "; ".join(f"{k}: {v}" for k, v in NODE_SCORINGS.items()),
    )


def add_encoder_argument(parser: argparse.ArgumentParser) -> None:
    """`--encoder` (`clipita.onnx_encoder.ENCODERS`): what encodes products and queries."""
    parser.add_argument(
        "--encoder",
        choices=ENCODERS,
        default="torch",
        help="the PyTorch model, or the model folder's ONNX export (python -m clipita.onnx_export) run by "
        "ONNX Runtime in float32 (onnx) or int8 (onnx-int8)",
    )


def add_loader_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The catalogue flags every command line shares, so they mean the same everywhere."""
    g = parser.add_argument_group("catalogue")
    g.add_argument("--dataset", default="demo", help="'demo', a local folder or file, or a Hub dataset id")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="column names of a well-known catalogue shape (default: none, the column flags as given)",
    )
    g.add_argument(
        "--image_column",
        default="image",
        help="the image column: an image feature, bytes, or a relative path",
    )
    g.add_argument("--title_column", default="title", help="'' when the catalogue has no titles")
    g.add_argument(
        "--attributes_column",
        default="attributes",
        help="a column of 'key: value' lists / dicts / JSON, or comma-separated columns (each becomes "
        "'column: value'); '' for none",
    )
    g.add_argument(
        "--category_column",
        default="category",
        help="a column holding the path (list or joined string), or comma-separated columns root,...,leaf",
    )
    g.add_argument(
        "--id_column", default="product_id", help="unique product ids (made from the row number when absent)"
    )
    g.add_argument(
        "--category_separator",
        default=PATH_SEPARATOR,
        help="separator of a category path held in one string (default: ' > ')",
    )
    g.add_argument(
        "--streaming", action="store_true", help="stream the source instead of downloading it whole"
    )
    g.add_argument(
        "--max_image_pixels", type=int, default=40_000_000, help="rows with larger images are skipped"
    )
    g.add_argument(
        "--allow_external_images",
        action="store_true",
        help="read image paths outside the catalogue's folder (absolute, '..' or symlinks out); by default "
        "such rows are skipped and counted",
    )
    return parser


def load_from_args(args: argparse.Namespace, split: str | None = None):
    """`load_catalogue` from the flags of `add_loader_arguments`; returns (dataset, SkipReport)."""
    category = _list_or_str(args.category_column)
    if category is None:
        raise CatalogueSchemaError("--category_column cannot be empty: every product needs a category")
    return load_catalogue(
        args.dataset,
        split,
        preset=args.preset,
        image_column=args.image_column,
        title_column=args.title_column or None,
        attributes_column=_list_or_str(args.attributes_column),
        category_column=category,
        id_column=args.id_column or None,
        category_separator=args.category_separator,
        streaming=args.streaming,
        max_image_pixels=args.max_image_pixels,
        return_report=True,
        allow_external_images=getattr(args, "allow_external_images", False),
    )


def check_catalogue(argv: Sequence[str] | None = None) -> int:
    """Check a catalogue before a long run: columns, split sizes, skipped rows, unseen test categories."""
    parser = add_loader_arguments(
        argparse.ArgumentParser(prog="python -m clipita.data", description=check_catalogue.__doc__)
    )
    args = parser.parse_args(argv)
    return run_command(lambda: _report_catalogue(args))


def _report_catalogue(args: argparse.Namespace) -> None:
    dsd, report = load_from_args(args)
    for name, ds in dsd.items():
        print(f"{name}: {len(ds)} products")
    if "train" in dsd and "test" in dsd:
        seen = seen_nodes(dsd["train"]["category"])
        test_nodes = {node for path in dsd["test"]["category"] for node in category_nodes(path)}
        unseen = [node for node in test_nodes if is_unseen(node, seen)]
        print(f"test categories: {len(test_nodes)} nodes, {len(unseen)} unseen in train")
    print(report)
