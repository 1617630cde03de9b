"""Catalogue encoding across processes: `accelerate launch --num_processes N search.py build ...`.

Each process takes a contiguous part of the catalogue (`datasets.distributed.split_dataset_by_node`) and
encodes it into its own resumable shard folder (`clipita.index.shards`); the main process then reads the
parts in rank order, which is catalogue order for a map-style dataset, so N processes give the embeddings
of one. A killed process's part resumes at its first unfinished shard when the same command runs again.
Processes meet only at one barrier, after encoding; a single process (plain `python`) needs no
`torch.distributed` at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node

from clipita.index.shards import FIRST_SKIPPED, EncodeReport, encode_to_shards, iter_shards, read_report

# The barrier after encoding waits for the slowest process: a catalogue part can take hours on its own.
BARRIER_TIMEOUT = timedelta(days=2)


def process_state() -> PartialState:
    """This process's place in an `accelerate launch` (one process when run with plain `python`).

    Two processes that each believed they were alone would write the same shard folder: a launcher's
    WORLD_SIZE that the state does not match is an error.
    """
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=BARRIER_TIMEOUT)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise RuntimeError(
            f"launched as one of {launched} processes but accelerate set up {state.num_processes} "
            f"({state.distributed_type}); on CPU set ACCELERATE_USE_CPU=1 and pass --multi_gpu"
        )
    return state


def encode_dir(out_dir: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where process `rank` of `world_size` keeps its shards: `encode/` alone, `encode-Nprocs/part-R` for N."""
    out = Path(out_dir)
    return out / "encode" if world_size == 1 else out / f"encode-{world_size}procs" / f"part-{rank:05d}"


def encode_root(out_dir: str | os.PathLike, world_size: int) -> Path:
    """The folder holding every process's shards (removed after the index is built)."""
    return (
        encode_dir(out_dir, 0, world_size) if world_size == 1 else encode_dir(out_dir, 0, world_size).parent
    )


def part_of(dataset: Any, rank: int, world_size: int) -> Any:
    """Process `rank`'s part of the catalogue: contiguous rows of a Dataset, every `world_size`-th shard
    (or row) of an IterableDataset."""
    if world_size == 1:
        return dataset
    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise TypeError(f"several processes need a datasets.Dataset or IterableDataset, got {type(dataset)}")
    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)


def encode_catalogue(
    dataset: Any,
    encode_batch: Callable[[list[dict]], np.ndarray],
    out_dir: str | os.PathLike,
    state: PartialState,
    batch_size: int = 256,
    shard_size: int = 16_384,
    fingerprint: dict | None = None,
    progress: bool = True,
) -> EncodeReport:
    """Encode this process's part into its shard folder, wait for every process, and return the report of
    all parts together (every process reads them from disk, so every process knows the outcome)."""
    rank, world = state.process_index, state.num_processes
    part_fingerprint = None if fingerprint is None else {**fingerprint, "part": f"{rank} of {world}"}
    mine = encode_to_shards(
        part_of(dataset, rank, world),
        encode_batch,
        encode_dir(out_dir, rank, world),
        batch_size,
        shard_size,
        progress=progress and state.is_local_main_process,
        fingerprint=part_fingerprint,
    )
    state.wait_for_everyone()
    if world == 1:
        return mine
    parts = [read_report(encode_dir(out_dir, r, world)) for r in range(world)]
    return EncodeReport(
        out_dir=str(encode_root(out_dir, world)),
        dim=next((p.dim for p in parts if p.dim is not None), None),
        encoded=sum(p.encoded for p in parts),
        skipped=sum(p.skipped for p in parts),
        shards=sum(p.shards for p in parts),
        resumed_from_row=mine.resumed_from_row,
        rows_seen=sum(p.rows_seen for p in parts),
        complete=all(p.complete for p in parts),
        skipped_ids=[i for p in parts for i in p.skipped_ids][:FIRST_SKIPPED],
        skip_reasons=[r for p in parts for r in p.skip_reasons][:FIRST_SKIPPED],
        processes=world,
    )


def iter_parts(out_dir: str | os.PathLike, world_size: int) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """Every finished part's shards in rank order: (embeddings `[n, d]`, metadata) per shard."""
    for rank in range(world_size):
        yield from iter_shards(encode_dir(out_dir, rank, world_size))
