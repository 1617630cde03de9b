"""The catalogue in a vector database, Milvus, for serving beyond one machine.

One pymilvus API reaches Milvus Lite (a local `.db` file, what the tests and the Space use here) and a
Milvus cluster (`http://host:19530`, sharded and replicated: docs/BENCHMARKS.md has the layout). An index
folder is exported with its filterable fields: the category path's every node ("Home", "Home > Kitchen",
...) and the attributes in filter form (`clipita.schema.normalise_attribute`), so `--filter` and
`--category` mean what they mean on the FAISS index. The collection keeps the index manifest's model
record, so a query with other weights is refused as it is on the folder. Why Milvus and not Qdrant:
docs/BENCHMARKS.md, "Vector database".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from clipita.index.catalogue_index import CatalogueIndex, Hit, ManifestChecks, category_node_texts
from clipita.index.kinds import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, iter_chunks
from clipita.schema import normalise_attribute, parse_category, path_text

DEFAULT_COLLECTION = "clipita_products"
MANIFEST_PROPERTY = "clipita.manifest"
MAX_K = 16_384  # Milvus's largest top-k
MAX_LEVELS, MAX_ATTRIBUTES, MAX_TEXT = 64, 256, 4096  # field capacities; a product beyond them is named
INSERT_ROWS = 5_000
OUTPUT_FIELDS = ["product_id", "title", "category", "attributes"]


def _client(uri: str):
    from pymilvus import MilvusClient

    return MilvusClient(uri, token=os.environ.get("MILVUS_TOKEN", ""))


def _literal(text: str) -> str:
    """A Milvus filter string literal: JSON quoting escapes quotes and backslashes, so no text escapes it."""
    return json.dumps(text, ensure_ascii=False)


def _schema(client, dim: int):
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("product_id", DataType.VARCHAR, max_length=MAX_TEXT)
    schema.add_field("title", DataType.VARCHAR, max_length=MAX_TEXT)
    for name, capacity in (("category", MAX_LEVELS), ("category_nodes", MAX_LEVELS)):
        schema.add_field(name, DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=capacity,
                         max_length=MAX_TEXT)  # fmt: skip
    for name in ("attributes", "attribute_filters"):
        schema.add_field(name, DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_ATTRIBUTES,
                         max_length=MAX_TEXT)  # fmt: skip
    return schema


def _filter_form(attribute: str) -> str | None:
    try:
        return normalise_attribute(attribute)
    except ValueError:  # not `key: value`: no filter matches it, as on the FAISS index
        return None


def _row(row: int, vector: np.ndarray, meta: dict) -> dict:
    if len(meta["category"]) > MAX_LEVELS or len(meta["attributes"]) > MAX_ATTRIBUTES:
        raise ValueError(
            f"product {meta['product_id']!r} has {len(meta['category'])} category levels and "
            f"{len(meta['attributes'])} attributes; the collection holds at most {MAX_LEVELS} and {MAX_ATTRIBUTES}"
        )
    texts = [meta["product_id"], meta["title"], *meta["category"], *meta["attributes"]]
    if any(len(t.encode()) > MAX_TEXT for t in texts):
        raise ValueError(f"product {meta['product_id']!r} has a field over {MAX_TEXT} bytes")
    return {
        "row": row,
        "embedding": vector,
        "product_id": meta["product_id"],
        "title": meta["title"],
        "category": meta["category"],
        "category_nodes": category_node_texts(meta["category"]),
        "attributes": meta["attributes"],
        "attribute_filters": sorted({f for a in meta["attributes"] if (f := _filter_form(a))}),
    }


def export_to_milvus(
    index: CatalogueIndex,
    uri: str,
    collection: str = DEFAULT_COLLECTION,
    overwrite: bool = False,
    num_shards: int = 1,
) -> int:
    """Load an index folder's vectors and filterable fields into a Milvus collection (HNSW, inner product);
    returns the products loaded. `num_shards` splits the collection's writes across a cluster's nodes."""
    from pymilvus import MilvusClient

    client = _client(uri)
    if client.has_collection(collection):
        if not overwrite:
            raise ValueError(
                f"{uri} already holds a collection {collection!r}: pass --overwrite to replace it"
            )
        client.drop_collection(collection)
    params = MilvusClient.prepare_index_params()
    params.add_index("embedding", index_type="HNSW", metric_type="IP",
                     params={"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION})  # fmt: skip
    client.create_collection(
        collection, schema=_schema(client, index.dim), index_params=params, num_shards=num_shards
    )
    manifest = {key: index.manifest.get(key) for key in ("format_version", "clipita_version", "model",
                                                          "embedding_dim", "count", "dataset")}  # fmt: skip
    client.alter_collection_properties(collection, properties={MANIFEST_PROPERTY: json.dumps(manifest)})
    for start, vectors in iter_chunks(index.embeddings, INSERT_ROWS):
        meta = index.metadata.slice(start, len(vectors)).to_pylist()
        client.insert(collection, [_row(start + i, v, m) for i, (v, m) in enumerate(zip(vectors, meta))])
    client.flush(collection)
    client.load_collection(collection)
    return len(index)


class MilvusIndex(ManifestChecks):
    """A Milvus collection written by `export_to_milvus`, searched like `CatalogueIndex`."""

    kind = "milvus"

    def __init__(self, uri: str, collection: str = DEFAULT_COLLECTION):
        self.client = _client(uri)
        if not self.client.has_collection(collection):
            raise ValueError(f"{uri} holds no collection {collection!r}: run `search.py export` first")
        properties = self.client.describe_collection(collection).get("properties") or {}
        if MANIFEST_PROPERTY not in properties:
            raise ValueError(f"the collection {collection!r} at {uri} was not written by search.py export")
        self.manifest = json.loads(properties[MANIFEST_PROPERTY])
        self.collection, self.path = collection, f"{uri} (collection {collection})"
        self.client.load_collection(collection)

    def __len__(self) -> int:
        return int(self.client.get_collection_stats(self.collection)["row_count"])

    def search(
        self,
        query_embeds: np.ndarray,
        k: int = 10,
        filters: Sequence[str] | None = None,
        synonyms: Mapping | None = None,
        category: str | None = None,
    ) -> list[list[Hit]]:
        """Top-k per query row through the collection's HNSW index; filters in the database, not after it."""
        if synonyms:
            raise ValueError(
                "--synonyms: the vector database holds attributes in the built-in spellings only"
            )
        q = np.asarray(query_embeds, dtype=np.float32)
        q = q[None, :] if q.ndim == 1 else q
        self.check_dim(q.shape[1])
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K} (Milvus's largest top-k), got {k}")
        where = [
            f"array_contains(attribute_filters, {_literal(normalise_attribute(f))})" for f in filters or []
        ]
        if category:
            where.append(f"array_contains(category_nodes, {_literal(path_text(parse_category(category)))})")
        found = self.client.search(
            self.collection, list(q), limit=k, anns_field="embedding", output_fields=OUTPUT_FIELDS,
            search_params={"metric_type": "IP", "params": {"ef": max(HNSW_EF_SEARCH, k)}},
            filter=" and ".join(where),
        )  # fmt: skip
        return [[Hit(score=float(h["distance"]), **{f: h["entity"][f] for f in OUTPUT_FIELDS}) for h in hits]
                for hits in found]  # fmt: skip
