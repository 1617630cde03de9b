"""Resumable encoding of a catalogue into float32 `.npy` shards plus parquet metadata.

Model-independent on purpose: encoding takes any `encode_batch(rows) -> [B, d]` callable (images arrive
decoded), so resumption is tested without a trained model. Rows are read and encoded by
`clipita.encoding`; files are written atomically by `clipita.fileio`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipita.encoding import encode_chunk, iter_rows
from clipita.fileio import write_atomic, write_json
from clipita.progress import progress_bar

DEFAULT_SHARD_SIZE = 16_384
PROGRESS_FILE = "progress.json"
METADATA_SCHEMA = pa.schema(
    [
        ("product_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.list_(pa.string())),
        ("attributes", pa.list_(pa.string())),
    ]
)
FIRST_SKIPPED = 20  # how many skipped ids / reasons a report keeps


def metadata_row(row: dict) -> dict:
    """The metadata an index keeps of a catalogue row (METADATA_SCHEMA)."""
    return {
        "product_id": str(row["product_id"]),
        "title": row.get("title") or "",
        "category": [str(c) for c in row.get("category") or []],
        "attributes": [str(a) for a in row.get("attributes") or []],
    }


def save_npy(path: Path, array: np.ndarray) -> None:
    """`np.save` to exactly `path` (given a name, np.save would append ".npy" to a temporary name)."""
    with open(path, "wb") as f:
        np.save(f, array)


@dataclass
class EncodeReport:
    """What an encode run did; `summary()` is what a person reads at the end of a build."""

    out_dir: str
    dim: int | None
    encoded: int
    skipped: int
    shards: int
    resumed_from_row: int
    rows_seen: int
    complete: bool
    skipped_ids: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)
    processes: int = 1  # encoding processes whose parts this report sums

    def summary(self) -> str:
        lines = [
            f"encoded {self.encoded} products into {self.shards} shards in {self.out_dir} "
            f"(dim {self.dim}, {self.rows_seen} rows read"
            + (f" by {self.processes} processes" if self.processes > 1 else "")
            + (f", resumed at row {self.resumed_from_row}" if self.resumed_from_row else "")
            + (" of this process's part)" if self.resumed_from_row and self.processes > 1 else ")")
        ]
        if self.skipped:
            lines.append(
                f"skipped {self.skipped} products; first ids: {', '.join(self.skipped_ids)}; "
                f"first reasons: {'; '.join(self.skip_reasons[:3])}"
            )
        else:
            lines.append("skipped 0 products")
        return "\n".join(lines)


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # streaming datasets and generators have no length
        return None


def _shard_names(i: int) -> tuple[str, str]:
    return f"emb-{i:05d}.npy", f"meta-{i:05d}.parquet"


def _read_progress(out: Path) -> dict | None:
    path = out / PROGRESS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def encode_to_shards(
    dataset: Iterable[dict],
    encode_batch: Callable[[list[dict]], np.ndarray],
    out_dir: str | os.PathLike,
    batch_size: int = 256,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    fingerprint: dict | None = None,
) -> EncodeReport:
    """Encode a canonical-schema catalogue into float32 `.npy` shards plus parquet metadata, resumably.

    `progress.json` is replaced atomically after each complete shard, so a killed run restarts at
    the first incomplete shard and gives the same embeddings as an uninterrupted one. `fingerprint`
    (e.g. model and dataset names) guards against resuming another model's work in the same folder.
    Rows whose image cannot be decoded or encoded are skipped, counted and reported.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _read_progress(out) or {
        "fingerprint": fingerprint,
        "dim": None,
        "rows_done": 0,
        "shards": [],
        "skipped": 0,
        "skipped_ids": [],
        "skip_reasons": [],
        "complete": False,
    }
    if fingerprint is not None and state["fingerprint"] not in (None, fingerprint):
        old = state["fingerprint"]
        differ = sorted(k for k in {*old, *fingerprint} if old.get(k) != fingerprint.get(k))
        what = "; ".join(f"{k}: {old.get(k)} there, {fingerprint.get(k)} now" for k in differ)
        raise ValueError(
            f"{out} holds an unfinished encode of other work ({what}), e.g. a model retrained since: "
            "refusing to mix them; use another output folder or delete this one"
        )
    resumed_from = state["rows_done"]
    if not state["complete"]:
        _encode_remaining(dataset, encode_batch, out, state, batch_size, shard_size, progress)
    return _report(out, state, resumed_from)


def _report(out: Path, state: dict, resumed_from: int = 0) -> EncodeReport:
    return EncodeReport(
        out_dir=str(out),
        dim=state["dim"],
        encoded=sum(s["count"] for s in state["shards"]),
        skipped=state["skipped"],
        shards=len(state["shards"]),
        resumed_from_row=resumed_from,
        rows_seen=state["rows_done"],
        complete=state["complete"],
        skipped_ids=state["skipped_ids"],
        skip_reasons=state["skip_reasons"],
    )


def read_report(out_dir: str | os.PathLike) -> EncodeReport:
    """The report of the encode in `out_dir` as it stands, without encoding anything."""
    out = Path(out_dir)
    state = _read_progress(out)
    if state is None:
        raise FileNotFoundError(f"{out} has no {PROGRESS_FILE}: not an encode folder")
    return _report(out, state)


def _encode_remaining(
    dataset, encode_batch, out: Path, state: dict, batch_size, shard_size, progress
) -> None:
    rows = iter_rows(dataset, state["rows_done"], batch_size)
    bar = progress_bar(
        total=_length(dataset),
        initial=state["rows_done"],
        desc="encoding catalogue",
        unit="product",
        disable=not progress,
    )
    encoded_this_run = 0
    with bar:
        while True:
            shard_meta, shard_emb, shard_failed, shard_rows = [], [], [], 0
            while shard_rows < shard_size:
                batch = list(islice(rows, min(batch_size, shard_size - shard_rows)))
                if not batch:
                    break
                chunk = encode_chunk(batch, encode_batch, state["rows_done"] + shard_rows)
                emb = chunk.embeddings
                if emb is None and encoded_this_run == 0 and any(f.stage == "encode" for f in chunk.failures):
                    raise RuntimeError(  # every row failing in the encoder is a bug, not broken rows
                        f"the encoder failed on every row of the first batch: {chunk.failures[-1]}"
                    )
                if emb is not None:
                    if state["dim"] not in (None, emb.shape[1]):
                        raise ValueError(
                            f"encoder returned dim {emb.shape[1]}, earlier shards have {state['dim']}"
                        )
                    state["dim"] = emb.shape[1]
                    shard_emb.append(emb)
                    shard_meta.extend(metadata_row(r) for r in chunk.rows)
                    encoded_this_run += len(chunk.rows)
                shard_failed.extend(chunk.failures)
                shard_rows += len(batch)
                bar.update(len(batch))
            if shard_rows:
                _write_shard(out, state, shard_emb, shard_meta, shard_failed, shard_rows)
            if shard_rows < shard_size:  # the dataset ended
                break
    state["complete"] = True
    write_json(out / PROGRESS_FILE, state)


def _write_shard(out: Path, state: dict, embs: list, meta: list, failed: list, rows: int) -> None:
    emb_name, meta_name = _shard_names(len(state["shards"]))
    emb = np.concatenate(embs) if embs else np.zeros((0, state["dim"] or 0), np.float32)
    write_atomic(out / emb_name, lambda p: save_npy(p, emb))
    write_atomic(out / meta_name, lambda p: pq.write_table(pa.Table.from_pylist(meta, METADATA_SCHEMA), p))
    state["shards"].append({"embeddings": emb_name, "metadata": meta_name, "count": len(meta), "rows": rows})
    state["rows_done"] += rows
    state["skipped"] += len(failed)
    room = FIRST_SKIPPED - len(state["skipped_ids"])
    state["skipped_ids"] += [f.product_id for f in failed[:room]]
    state["skip_reasons"] += [str(f) for f in failed[:room]]
    write_json(out / PROGRESS_FILE, state)


def iter_shards(out_dir: str | os.PathLike) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """A finished encode's shards one at a time, (embeddings `[n, d]` float32, metadata): memory of one shard."""
    out = Path(out_dir)
    state = _read_progress(out)
    if state is None:
        raise FileNotFoundError(f"{out} has no {PROGRESS_FILE}: not an encode folder")
    if not state["complete"]:
        raise ValueError(
            f"the encode in {out} is incomplete ({state['rows_done']} rows done): resume it first"
        )
    for s in state["shards"]:
        emb = np.load(out / s["embeddings"])
        yield emb.reshape(len(emb), state["dim"] or 0), pq.read_table(out / s["metadata"])


def load_shards(out_dir: str | os.PathLike) -> tuple[np.ndarray, pa.Table]:
    """Concatenate a finished encode's shards -> (embeddings `[N, d]` float32, metadata table)."""
    return concat_shards(iter_shards(out_dir))


def concat_shards(shards: Iterable[tuple[np.ndarray, pa.Table]]) -> tuple[np.ndarray, pa.Table]:
    """(embeddings, metadata) shards -> one embeddings matrix and one metadata table."""
    embs, tables, dim = [], [], 0
    for emb, table in shards:
        dim = dim or emb.shape[1]
        embs.append(emb)
        tables.append(table)
    emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
    return emb, pa.concat_tables(tables) if tables else METADATA_SCHEMA.empty_table()


def write_embeddings_npy(
    shards: Iterable[tuple[np.ndarray, pa.Table]], path: str | os.PathLike, count: int, dim: int
) -> pa.Table:
    """Stream shards into one float32 `[count, dim]` `.npy` (atomically; memory of one shard) and return
    the metadata of its rows; `np.load(path, mmap_mode="r")` then reads it without loading it."""
    tables: list[pa.Table] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
            np.lib.format.write_array_header_1_0(f, {**header, "shape": (count, dim)})
            for emb, table in shards:
                f.write(np.ascontiguousarray(emb, np.float32).tobytes())
                tables.append(table)
        written = sum(t.num_rows for t in tables)
        if written != count:
            raise ValueError(f"the shards hold {written} products, not the {count} their reports count")

    write_atomic(Path(path), write)
    return pa.concat_tables(tables) if tables else METADATA_SCHEMA.empty_table()
