"""Loading product catalogues into the canonical schema (docs/ARCHITECTURE.md), checked before a long run.

One entry point, `load_catalogue`, reads the embedded catalogue ("demo"), a local folder (parquet, arrow,
imagefolder with metadata.jsonl / metadata.csv, a `save_to_disk` folder) or a Hub dataset id, maps its
columns onto ``product_id, image, title, attributes, category`` and drops rows that would break training
(unreadable image, empty category, image over the pixel budget, as `clipita.encoding.row_problem`
decides), counting them in a `SkipReport`. The schema is `clipita.schema`; seen / unseen categories are
`clipita.tree`'s; the command-line flags are `clipita.cli`'s (`python -m clipita.data` runs its check).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from clipita.catalogue import catalogue_matches, generate_catalogue, generation_defaults
from clipita.encoding import EMPTY_CATEGORY, NOT_REGULAR, TOO_LARGE, UNREADABLE, row_problem
from clipita.fileio import is_inside, publish_dir
from clipita.progress import first_line
from clipita.schema import (
    CANONICAL_COLUMNS,
    FEATURES,
    PATH_SEPARATOR,
    SPLITS,
    parse_attributes,
    parse_category,
)

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "eval": "test",
    "testing": "test",
}
DEMO_ARGS: dict[str, Any] = generation_defaults()
CARVE_FRACTION = 0.1

AnyDataset = datasets.Dataset | datasets.IterableDataset
AnyDatasetDict = datasets.DatasetDict | datasets.IterableDatasetDict

# Public catalogue shapes. A preset fills the column arguments that were left at their defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # Kaggle "Fashion Product Images" (styles.csv + images/{id}.jpg) and its Hub copies with an image column
    "fashion": {
        "image_column": "image",
        "title_column": "productDisplayName",
        "attributes_column": {
            "gender": "gender",
            "baseColour": "colour",
            "season": "season",
            "usage": "usage",
        },
        "category_column": ["masterCategory", "subCategory", "articleType"],
        "id_column": "id",
    },
    # Marqo-style category-to-image eval sets (query, title, image): the query is the category
    "query_title_image": {
        "image_column": "image",
        "title_column": "title",
        "attributes_column": None,
        "category_column": "query",
        "id_column": "item_ID",
        "category_separator": None,
        "eval_only": True,
    },
}
_DEFAULTS = {
    "image_column": "image",
    "title_column": "title",
    "attributes_column": "attributes",
    "category_column": "category",
    "id_column": "product_id",
    "category_separator": PATH_SEPARATOR,
    "eval_only": False,
}


class CatalogueSchemaError(ValueError):
    """The catalogue lacks a column the run needs; raised before any long work starts."""


# ---------------------------------------------------------------------------------------------------------
# Per-row problems
# ---------------------------------------------------------------------------------------------------------

OUTSIDE = "image outside the dataset folder"  # absolute, `..` or a symlink out (--allow_external_images)
DUPLICATE_ID = "duplicate product_id (the first row with it is kept)"
_WHERE = {UNREADABLE: "column 'image'", EMPTY_CATEGORY: "column 'category'", TOO_LARGE: "column 'image'",
          NOT_REGULAR: "column 'image'", OUTSIDE: "column 'image'", DUPLICATE_ID: "column 'product_id'"}  # fmt: skip


def image_roots(source: str, allow_external: bool = False) -> list[str] | None:
    """The folders a catalogue's image paths must resolve into (None: anywhere, when explicitly allowed).

    A local folder or file: that folder. A Hub dataset: the datasets and hub caches it is downloaded to.
    """
    if allow_external:
        return None
    path = Path(source)
    if path.is_dir():
        return [str(path)]
    if path.is_file():
        return [str(path.parent)]
    from huggingface_hub import constants

    return [datasets.config.HF_DATASETS_CACHE, constants.HF_HUB_CACHE]


def path_problem(image: Any, roots: Sequence[str] | None) -> str:
    """OUTSIDE when an image cell is read from a local path that resolves outside `roots` ("" otherwise);
    cells holding their bytes and remote paths (hf://, zip::) are read from nowhere else."""
    if roots is None or not isinstance(image, Mapping) or image.get("bytes"):
        return ""
    path = image.get("path")
    if not isinstance(path, str) or not path or "://" in path or "::" in path:
        return ""
    return "" if is_inside(path, roots) else OUTSIDE


def image_problem(
    image: Any, category: Sequence[str], max_image_pixels: int, roots: Sequence[str] | None
) -> str:
    """Why a row cannot be used: its image path leads outside the allowed folders, or `row_problem`."""
    return path_problem(image, roots) or row_problem(image, category, max_image_pixels)


@dataclass
class SkipReport:
    """Rows dropped by `clean_catalogue`: a count per reason and the first few product ids of each."""

    max_examples: int = 5
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def record(self, reason: str, product_id: str) -> None:
        self.skipped[reason] += 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < self.max_examples:
            ids.append(str(product_id))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        text = f"skipped {self.total_skipped} of {self.rows} rows"
        if not self.skipped:
            return text
        parts = []
        for reason, n in self.skipped.most_common():
            where = f" in {_WHERE[reason]}" if reason in _WHERE else ""
            more = ", ..." if n > len(self.examples[reason]) else ""
            parts.append(f"{n} {reason}{where} (ids: {', '.join(self.examples[reason])}{more})")
        return f"{text}: " + "; ".join(parts)


def clean_catalogue(
    ds: AnyDataset,
    max_image_pixels: int = 40_000_000,
    num_proc: int | None = None,
    report: SkipReport | None = None,
    roots: Sequence[str] | None = None,
    seen_ids: set[str] | None = None,
) -> tuple[AnyDataset, SkipReport]:
    """Drop rows with an unreadable image, an empty category, an image over the pixel budget, an image
    that is a local path outside `roots` (None: no such check) or not a regular file, or a product_id met
    before (in this split or, through `seen_ids`, in the splits cleaned before it): ids key the index and
    the Space's images, so a duplicate would show another product's image. A stream is not checked for
    duplicates: it may be read more than once, and a second pass would drop every row.

    Counts go to `report` (a new one when None). For a streaming dataset rows are checked as they are
    read, so the report is complete once the stream has been consumed: print it at the end of the run.
    """
    report = report if report is not None else SkipReport()
    seen_ids = seen_ids if seen_ids is not None else set()

    def problem_of(problem: str | None, product_id: str, unique: bool = True) -> str | None:
        if not problem and unique and product_id in seen_ids:
            problem = DUPLICATE_ID
        if problem:
            report.record(problem, product_id)
        elif unique:
            seen_ids.add(product_id)
        return problem

    if isinstance(ds, datasets.IterableDataset):

        def keep(image, category, product_id) -> bool:
            report.rows += 1
            problem = image_problem(image, category, max_image_pixels, roots)
            return not problem_of(problem, product_id, unique=False)

        raw = ds.cast_column("image", datasets.Image(decode=False))
        kept = raw.filter(keep, input_columns=["image", "category", "product_id"])
        # A stream keeps the undecoded form once filtered; decode here (casting back would not)
        decoder = datasets.Image()
        return kept.map(
            lambda image: {"image": decoder.decode_example(image)}, input_columns=["image"], features=FEATURES
        ), report

    if len(ds) == 0:
        return ds, report

    def problems(images, categories):
        return {
            "problem": [image_problem(im, c, max_image_pixels, roots) for im, c in zip(images, categories)]
        }

    checked = ds.cast_column("image", datasets.Image(decode=False)).map(
        problems,
        batched=True,
        input_columns=["image", "category"],
        remove_columns=[c for c in ds.column_names if c != "product_id"],
        num_proc=num_proc,
        desc="checking rows",
    )
    report.rows += len(checked)
    keep = []
    for i, (problem, pid) in enumerate(zip(checked["problem"], checked["product_id"])):
        if not problem_of(problem, pid):
            keep.append(i)
    return (ds if len(keep) == len(ds) else ds.select(keep)), report


# ---------------------------------------------------------------------------------------------------------
# Column mapping
# ---------------------------------------------------------------------------------------------------------


_COLUMN_KEYS = ("image_column", "title_column", "attributes_column", "category_column", "id_column")


def _column_args(cols: dict[str, Any]) -> dict[str, Any]:
    return {k: cols[k] for k in _COLUMN_KEYS}


def _columns(spec: str | Sequence[str] | Mapping[str, str] | None) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    return list(spec)


def validate_columns(
    present: Iterable[str],
    *,
    image_column: str = "image",
    title_column: str | None = "title",
    attributes_column: str | Sequence[str] | Mapping[str, str] | None = "attributes",
    category_column: str | Sequence[str] = "category",
    id_column: str | None = "product_id",
    source: str = "the catalogue",
) -> None:
    """Raise `CatalogueSchemaError` naming each missing column and listing the columns present.

    `title_column` / `attributes_column` may be None for a catalogue without them; the id column may be
    absent when it keeps its default name (ids are then made from row numbers).
    """
    present = list(present)
    wanted = [("image_column", c) for c in _columns(image_column)]
    wanted += [("title_column", c) for c in _columns(title_column)]
    wanted += [("attributes_column", c) for c in _columns(attributes_column)]
    wanted += [("category_column", c) for c in _columns(category_column)]
    if id_column and id_column != _DEFAULTS["id_column"]:
        wanted.append(("id_column", id_column))
    missing = [(arg, col) for arg, col in wanted if col not in present]
    if missing:
        what = ", ".join(f"'{col}' (--{arg})" for arg, col in missing)
        raise CatalogueSchemaError(
            f"{source}: missing column {what}; columns present: {present}. Name the right column with the flag "
            f"shown, pass '' for a title or attributes column the catalogue lacks, or use --preset."
        )


def _is_missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and value != value)
        or (isinstance(value, str) and not value.strip())
    )


def _canonical_rows(
    batch: dict[str, list],
    indices: list[int],
    *,
    title_column,
    attributes_column,
    category_column,
    id_column,
    separator,
    id_prefix,
) -> dict[str, list]:
    n = len(indices)
    if id_column in batch:
        ids = [
            str(v) if not _is_missing(v) else f"{id_prefix}-{i}" for v, i in zip(batch[id_column], indices)
        ]
    else:
        ids = [f"{id_prefix}-{i}" for i in indices]
    titles = [("" if _is_missing(t) else str(t)) for t in batch[title_column]] if title_column else [""] * n
    if isinstance(attributes_column, Mapping) or (
        attributes_column is not None and not isinstance(attributes_column, str)
    ):
        keys = (
            attributes_column if isinstance(attributes_column, Mapping) else {c: c for c in attributes_column}
        )
        attributes = [
            [f"{key}: {batch[col][r]}" for col, key in keys.items() if not _is_missing(batch[col][r])]
            for r in range(n)
        ]
    elif attributes_column:
        attributes = [parse_attributes(v) for v in batch[attributes_column]]
    else:
        attributes = [[] for _ in range(n)]
    if isinstance(category_column, str):
        categories = [parse_category(v, separator) for v in batch[category_column]]
    else:
        categories = [
            [str(batch[c][r]).strip() for c in category_column if not _is_missing(batch[c][r])]
            for r in range(n)
        ]
    return {"product_id": ids, "title": titles, "attributes": attributes, "category": categories}


def to_canonical(
    ds: AnyDataset,
    *,
    image_column: str = "image",
    title_column: str | None = "title",
    attributes_column: str | Sequence[str] | Mapping[str, str] | None = "attributes",
    category_column: str | Sequence[str] = "category",
    id_column: str | None = "product_id",
    category_separator: str | None = PATH_SEPARATOR,
    base_dir: str | None = None,
    id_prefix: str = "row",
    source: str = "the catalogue",
) -> AnyDataset:
    """Map one split onto the canonical columns; the image is passed through, never decoded here.

    Rows without an id get "{id_prefix}-{row number}".
    """
    columns = ds.column_names
    if columns is None:  # a stream whose features are unknown until read: look at its first row
        columns = list(next(iter(ds.take(1)), {}))
    validate_columns(
        columns,
        image_column=image_column,
        title_column=title_column,
        attributes_column=attributes_column,
        category_column=category_column,
        id_column=id_column,
        source=source,
    )
    if image_column != "image":
        if "image" in columns:
            ds = ds.remove_columns("image")
        ds = ds.rename_column(image_column, "image")
    ds = _as_image_column(ds, base_dir)
    needed = [title_column, *_columns(attributes_column), *_columns(category_column), id_column]
    text_columns = list(dict.fromkeys(c for c in needed if c and c in columns and c != image_column))
    other_columns = [c for c in ds.column_names if c != "image"]
    kwargs = dict(title_column=title_column, attributes_column=attributes_column, category_column=category_column,
                  id_column=id_column, separator=category_separator, id_prefix=id_prefix)  # fmt: skip

    def rows(*values):  # input columns..., indices: the image column is never read (nor decoded) here
        return _canonical_rows(dict(zip(text_columns, values[:-1])), values[-1], **kwargs)

    text_features = datasets.Features({k: v for k, v in FEATURES.items() if k != "image"})
    options = dict(batched=True, with_indices=True, input_columns=text_columns)
    if isinstance(ds, datasets.IterableDataset):  # keep the stream's images undecoded for clean_catalogue
        ds = ds.cast_column("image", datasets.Image(decode=False))
        features = datasets.Features({**text_features, "image": ds.features["image"]})
        ds = ds.map(rows, features=features, remove_columns=other_columns, **options)
    else:  # map the small text table only, then put the image column beside it (no copy of the images)
        text = ds.select_columns(text_columns).map(
            rows, features=text_features, remove_columns=text_columns, desc="mapping columns", **options
        )
        ds = datasets.concatenate_datasets([ds.select_columns(["image"]), text], axis=1)
    return ds.select_columns(list(CANONICAL_COLUMNS))


def _as_image_column(ds: AnyDataset, base_dir: str | None) -> AnyDataset:
    """Make `image` an Image feature (undecoded until used): paths are resolved against the catalogue folder."""
    feature = (ds.features or {}).get("image")
    if isinstance(feature, datasets.Image):
        return ds
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string") and base_dir:

        def absolute(paths):
            return {
                "image": [p if p is None or os.path.isabs(p) else os.path.join(base_dir, p) for p in paths]
            }

        ds = ds.map(absolute, batched=True, input_columns=["image"], features=ds.features)
    return ds.cast_column("image", datasets.Image())


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------


def demo_dir() -> Path:
    """Where the embedded catalogue is cached: $CLIPITA_DATA_HOME/demo, else ./data/demo."""
    return Path(os.environ.get("CLIPITA_DATA_HOME", "data")) / "demo"


def ensure_demo(path: Path | None = None) -> Path:
    """Generate the embedded catalogue unless a finished one with the same arguments is already there."""
    path = path or demo_dir()
    if not catalogue_matches(path, **DEMO_ARGS):
        logger.warning("generating the embedded catalogue into %s (once; reused afterwards)", path)
        # built aside and moved in whole, so a run that starts meanwhile never reads half a catalogue
        fresh = generate_catalogue(
            path.with_name(f"{path.name}.tmp-{os.getpid()}"),
            **DEMO_ARGS,
            num_proc=min(2, os.cpu_count() or 1),
        )
        publish_dir(fresh, path)
    return path


def _read_rows(path: Path, report: SkipReport) -> pd.DataFrame:
    """The rows of a metadata.jsonl / .csv file; malformed lines are skipped and counted, never fatal."""
    reason = f"malformed line in {path.name}"
    if path.suffix == ".csv":

        def bad_line(fields: list[str]) -> None:
            report.rows += 1
            report.record(reason, fields[0] if fields else "?")

        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines=bad_line, engine="python")
        except UnicodeDecodeError as err:
            raise CatalogueSchemaError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    records = []
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is skipped, not fatal to the rest
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                problem = (
                    None if isinstance(record, dict) else f"not a JSON object but {type(record).__name__}"
                )
            except UnicodeDecodeError:
                problem = "not UTF-8"
            except json.JSONDecodeError:
                problem = "not JSON"
            if problem is None:
                records.append(record)
            else:
                report.rows += 1
                report.record(f"{reason} ({problem})", f"line {number}")
    return pd.DataFrame.from_records(records)


def _frame_to_dataset(frame: pd.DataFrame, cols: dict[str, Any], source: str) -> datasets.Dataset:
    """Keep the named columns, as text: a dict or list (attributes, category) becomes JSON.

    Values of one column may differ in type from row to row (a dict here, a string there, dicts with other
    keys): Arrow cannot hold that, and it is the usual state of hand-written metadata.
    """
    validate_columns(list(frame.columns), **_column_args(cols), source=source)
    wanted = [c for key in _COLUMN_KEYS for c in _columns(cols[key]) if c in frame.columns]

    def text(v: Any) -> str | None:
        if isinstance(v, (dict, list)):
            return json.dumps(v)
        return None if _is_missing(v) else str(v)

    frame = pd.DataFrame({c: [text(v) for v in frame[c]] for c in dict.fromkeys(wanted)})
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def _metadata_files(root: Path) -> dict[str, list[Path]]:
    """metadata.jsonl / metadata.csv at the top of an image folder or in its split subfolders."""
    found: dict[str, list[Path]] = {}
    for name in ("metadata.jsonl", "metadata.csv"):
        for f in sorted([root / name, *root.glob(f"*/{name}")]):
            if f.is_file():
                split = f.parent.name if f.parent != root else "train"
                split = SPLIT_ALIASES.get(split, split)
                found.setdefault(split if split in SPLITS else "train", []).append(f)
    return found


def _read_folder(
    root: Path, cols: dict[str, Any], preset: str | None, report: SkipReport
) -> datasets.DatasetDict | None:
    """An image folder with metadata files, or Kaggle's fashion layout; None for other folders."""
    image = cols["image_column"]
    if preset == "fashion" and (root / "styles.csv").is_file():  # styles.csv + images/{id}.jpg
        frame = _read_rows(root / "styles.csv", report)
        if cols["id_column"] in frame.columns:
            frame[image] = [str(root / "images" / f"{i}.jpg") for i in frame[cols["id_column"]]]
        return datasets.DatasetDict({"train": _frame_to_dataset(frame, cols, str(root / "styles.csv"))})
    splits = {}
    for split, files in _metadata_files(root).items():
        frames = []
        for f in files:
            frame = _read_rows(f, report)
            if "file_name" not in frame.columns:
                raise CatalogueSchemaError(
                    f"{f}: missing column 'file_name'; columns present: {list(frame.columns)}"
                )
            frame[image] = [
                str(f.parent / name) if isinstance(name, str) else None for name in frame["file_name"]
            ]
            frames.append(frame)
        splits[split] = _frame_to_dataset(pd.concat(frames, ignore_index=True), cols, str(files[0]))
    return datasets.DatasetDict(splits) if splits else None


def _read_source(
    source: str,
    *,
    cols: dict[str, Any],
    streaming: bool,
    data_dir: str | None,
    preset: str | None,
    report: SkipReport,
) -> AnyDatasetDict:
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            dsd = datasets.load_from_disk(str(path))
            if isinstance(dsd, datasets.Dataset):
                dsd = datasets.DatasetDict({"train": dsd})
        else:
            dsd = _read_folder(path, cols, preset, report)
            if dsd is None:  # parquet / arrow files (split subfolders or split names in file names)
                return datasets.load_dataset(str(path), data_dir=data_dir, streaming=streaming)
        if streaming:
            dsd = datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in dsd.items()})
        return dsd
    if path.is_file():
        kind = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".csv": "csv"}.get(path.suffix)
        if kind is None:
            raise CatalogueSchemaError(
                f"{source}: unsupported file type '{path.suffix}' (parquet, arrow, jsonl, csv)"
            )
        return datasets.load_dataset(kind, data_files={"train": str(path)}, streaming=streaming)
    if source.count("/") > 1 or source.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in source):
        raise CatalogueSchemaError(f"{source}: no such file or folder (nor a Hub dataset id: 'owner/name')")
    try:
        return datasets.load_dataset(source, data_dir=data_dir, streaming=streaming)  # a Hub dataset id
    except FileNotFoundError as err:  # datasets' DatasetNotFoundError is one
        first = first_line(err)
        raise CatalogueSchemaError(f"{source}: no such file or folder, nor a Hub dataset ({first})") from None


def _carve(ds: AnyDataset, low: float, high: float, inside: bool) -> AnyDataset:
    """Rows whose product_id hashes into [low, high) (or outside it): the same rows on every run, streaming or not."""

    def chosen(pid: str) -> bool:
        u = int.from_bytes(hashlib.md5(str(pid).encode()).digest()[:4], "little") / 2**32
        return (low <= u < high) == inside

    return ds.filter(chosen, input_columns=["product_id"])


def _split_rank(name: str) -> tuple[int, str]:
    return (SPLITS.index(name) if name in SPLITS else len(SPLITS), name)


def _normalise_splits(dsd: Mapping[str, AnyDataset], eval_only: bool) -> dict[str, AnyDataset]:
    splits = {SPLIT_ALIASES.get(name, name): ds for name, ds in dsd.items()}
    if eval_only:  # an eval set: everything is test
        parts = list(splits.values())
        return {"test": parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)}
    missing = [name for name in ("validation", "test") if name not in splits]
    if "train" in splits and missing:
        train = splits["train"]
        for k, name in enumerate(missing):
            logger.warning(
                "no %s split: carving %.0f%% of train into it (by product_id hash)",
                name,
                100 * CARVE_FRACTION,
            )
            splits[name] = _carve(train, k * CARVE_FRACTION, (k + 1) * CARVE_FRACTION, inside=True)
        splits["train"] = _carve(train, 0.0, len(missing) * CARVE_FRACTION, inside=False)
    return splits


def load_catalogue(
    source: str = "demo",
    split: str | None = None,
    *,
    preset: str | None = None,
    image_column: str = "image",
    title_column: str | None = "title",
    attributes_column: str | Sequence[str] | Mapping[str, str] | None = "attributes",
    category_column: str | Sequence[str] = "category",
    id_column: str | None = "product_id",
    category_separator: str | None = PATH_SEPARATOR,
    streaming: bool = False,
    max_image_pixels: int = 40_000_000,
    data_dir: str | None = None,
    num_proc: int | None = None,
    return_report: bool = False,
    allow_external_images: bool = False,
):
    """Load a catalogue in the canonical schema, cleaned of unusable rows.

    `source`: "demo" (the embedded catalogue, generated on first use), a local folder (parquet / arrow /
    imagefolder with metadata.jsonl or metadata.csv / `save_to_disk`), a single data file, or a Hub dataset
    id. Returns a DatasetDict with train / validation / test (validation and test are carved from train
    when missing), or one split when `split` is given; with `return_report=True`, also the `SkipReport`.
    Image paths must resolve inside the catalogue's folder (a Hub dataset: its download cache) and name
    regular files; other rows are skipped and counted, unless `allow_external_images` (paths anywhere).
    Column arguments name the source columns; a `preset` fills those left at their defaults.
    """
    cols = dict(
        image_column=image_column,
        title_column=title_column,
        attributes_column=attributes_column,
        category_column=category_column,
        id_column=id_column,
        category_separator=category_separator,
    )
    eval_only = False
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}")
        for key, value in PRESETS[preset].items():
            if key == "eval_only":
                eval_only = value
            elif cols[key] == _DEFAULTS[key]:
                cols[key] = value
    if source == "demo":
        source = str(ensure_demo())
    report = SkipReport()
    raw = _read_source(
        source, cols=cols, streaming=streaming, data_dir=data_dir, preset=preset, report=report
    )
    base_dir = (
        source if Path(source).is_dir() else str(Path(source).parent) if Path(source).is_file() else None
    )
    canonical = {
        name: to_canonical(ds, base_dir=base_dir, id_prefix=name, source=f"{source} [split {name}]", **cols)
        for name, ds in raw.items()
    }
    splits = _normalise_splits(canonical, eval_only)
    if split is not None and split not in splits:
        raise ValueError(f"{source}: no split '{split}'; splits present: {sorted(splits)}")
    roots = image_roots(source, allow_external_images)
    seen_ids: set[str] = set()  # across splits: the first split (train, validation, test) keeps an id
    for name in [split] if split else sorted(splits, key=_split_rank):
        splits[name], _ = clean_catalogue(splits[name], max_image_pixels, num_proc, report, roots, seen_ids)
    if not streaming:
        (logger.warning if report.total_skipped else logger.info)("%s: %s", source, report)
    if split is not None:
        result = splits[split]
    else:
        result = (datasets.IterableDatasetDict if streaming else datasets.DatasetDict)(splits)
    return (result, report) if return_report else result


if __name__ == "__main__":  # `python -m clipita.data --dataset ...`: the entry point checks a catalogue
    from clipita.cli import check_catalogue

    raise SystemExit(check_catalogue())
