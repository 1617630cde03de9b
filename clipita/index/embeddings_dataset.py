"""A catalogue's embeddings as a Hugging Face dataset: (product_id, embedding, title, category, attributes)
in parquet files laid out as the Hub expects (`data/{split}-00000-of-00008.parquet` and a README whose
YAML names them), so `datasets.load_dataset(folder)` reads it here and `huggingface_hub.upload_folder(...,
repo_type="dataset")` publishes it as is. Written shard by shard: memory of one encode shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipita.fileio import write_atomic

CARD = """---
configs:
- config_name: default
  data_files:
  - split: {split}
    path: data/{split}-*.parquet
tags:
- clip-ita
- embeddings
---
# Product embeddings

{count} products of `{source}` [{split}], embedded by `{model}` ({dim}-d, L2-normalised: inner product is
cosine similarity). Columns: `product_id`, `embedding` ({dim} float32), `title`, `category` (root -> leaf),
`attributes` (`"key: value"`). Written by `search.py build --embeddings_dataset`.

```python
from datasets import load_dataset
ds = load_dataset("path/or/org/this-dataset", split="{split}").with_format("numpy")
```
"""


def schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("product_id", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("title", pa.string()),
            ("category", pa.list_(pa.string())),
            ("attributes", pa.list_(pa.string())),
        ]
    )


def write_embeddings_dataset(
    shards: Iterable[tuple[np.ndarray, pa.Table]],
    out_dir: str | os.PathLike,
    split: str,
    num_shards: int,
    dim: int,
    source: str = "a catalogue",
    model: str = "a CLIP-ITA model",
) -> Path:
    """Write (embeddings, metadata) shards as `out_dir/data/{split}-*.parquet` plus the dataset card."""
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for old in (out / "data").glob(f"{split}-*.parquet"):  # an earlier export of this split
        old.unlink()
    count = 0
    for i, (emb, meta) in enumerate(shards):
        flat = pa.array(np.ascontiguousarray(emb, np.float32).ravel())
        table = pa.Table.from_arrays(
            [
                meta.column("product_id"),
                pa.FixedSizeListArray.from_arrays(flat, dim),
                meta.column("title"),
                meta.column("category"),
                meta.column("attributes"),
            ],
            schema=schema(dim),
        )
        name = f"{split}-{i:05d}-of-{num_shards:05d}.parquet"
        write_atomic(out / "data" / name, lambda p, t=table: pq.write_table(t, p))
        count += len(emb)
    card = CARD.format(split=split, count=count, source=source, model=model, dim=dim)
    write_atomic(out / "README.md", lambda p: Path(p).write_text(card, encoding="utf-8"))
    return out
