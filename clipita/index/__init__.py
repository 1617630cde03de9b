"""Catalogue index: resumable encoding into shards, a FAISS index sized to the catalogue, and search.

- `clipita.index.shards`: encode a catalogue into resumable `.npy` + parquet shards.
- `clipita.index.kinds`: which FAISS index a catalogue's size and memory budget call for; recall, re-ranking.
- `clipita.index.catalogue_index`: `CatalogueIndex` (save, load, filtered search) and `search` by category text.
"""

from clipita.index.catalogue_index import (
    MANIFEST_FILE,
    MAX_QUERY_CHARS,
    CatalogueIndex,
    Hit,
    check_queries,
    check_query_length,
    clipita_version,
    model_dim,
    search,
)
from clipita.index.kinds import (
    DEFAULT_EXACT_THRESHOLD,
    INDEX_KINDS,
    SQ8Codes,
    approximate_search,
    build_index,
    choose_index_kind,
    estimate_bytes,
    measure_recall,
    recall_at_k,
    rerank_exact,
)
from clipita.index.shards import (
    DEFAULT_SHARD_SIZE,
    METADATA_SCHEMA,
    PROGRESS_FILE,
    EncodeReport,
    encode_to_shards,
    load_shards,
)

__all__ = [
    "DEFAULT_EXACT_THRESHOLD",
    "DEFAULT_SHARD_SIZE",
    "INDEX_KINDS",
    "MANIFEST_FILE",
    "MAX_QUERY_CHARS",
    "METADATA_SCHEMA",
    "PROGRESS_FILE",
    "CatalogueIndex",
    "EncodeReport",
    "Hit",
    "approximate_search",
    "build_index",
    "check_queries",
    "check_query_length",
    "choose_index_kind",
    "clipita_version",
    "encode_to_shards",
    "estimate_bytes",
    "load_shards",
    "measure_recall",
    "model_dim",
    "recall_at_k",
    "rerank_exact",
    "SQ8Codes",
    "search",
]
