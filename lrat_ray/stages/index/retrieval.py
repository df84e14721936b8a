"""Reading an index directory: the manifest (checked against the encoder that will search it), the
shards (documents memory-mapped, read by row), search over every shard merged by score, and
lookups by id through the shard a document hashes to."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os

import numpy as np
import pyarrow as pa

from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError
from lrat_ray.models.encoder import EncoderSpec, model_fingerprint
from lrat_ray.stages.index.faiss_index import build_faiss, merge_top_k, search_settings, to_gpu

FORMAT = "lrat-index/2"
SHARD_DONE = "shard.json"
DOCUMENT_SCHEMA = pa.schema([("doc_id", pa.string()), ("title", pa.large_string()), ("text", pa.large_string())])


def shard_of(doc_id: str, shard_count: int) -> int:
    """The shard of a document: a stable hash of its id (Python's ``hash`` differs per process)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") % shard_count


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


class IndexShard:
    """One shard: its FAISS index and its documents, row i of one being vector i of the other,
    sorted by id so that a document is found by binary search rather than a dictionary."""

    def __init__(self, faiss_index, documents: pa.Table):
        self.faiss_index = faiss_index
        self.documents = documents if all(c.num_chunks == 1 for c in documents.columns) else documents.combine_chunks()
        self.doc_ids = self.documents.column("doc_id").chunk(0) if documents.num_rows else pa.array([], pa.string())

    @classmethod
    def load(cls, directory: str, params: dict, gpu: bool = False) -> IndexShard:
        import faiss

        index = search_settings(faiss.read_index(os.path.join(directory, "index.faiss")), params)
        # Memory-mapped: the documents stay in the page cache, read by row, not copied into the heap.
        documents = pa.ipc.open_file(pa.memory_map(os.path.join(directory, "documents.arrow"))).read_all()
        return cls(to_gpu(index) if gpu else index, documents)

    def __len__(self) -> int:
        return self.documents.num_rows

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's ``(scores, rows)`` of the top ``k`` (row -1 where the shard has fewer)."""
        return self.faiss_index.search(vectors, max(1, min(k, len(self))))

    def row_of(self, doc_id: str) -> int | None:
        row = bisect.bisect_left(self.doc_ids, doc_id, key=lambda scalar: scalar.as_py())
        return row if row < len(self.doc_ids) and self.doc_ids[row].as_py() == doc_id else None

    def document(self, row: int) -> dict:
        return {name: self.documents.column(name)[row].as_py() for name in ("doc_id", "title", "text")}


class RetrievalIndex:
    """A loaded index directory (every shard, or those asked for) and its manifest."""

    def __init__(self, directory: str, shards: dict[int, IndexShard], manifest: dict):
        self.directory = directory
        self.shards = shards
        self.manifest = manifest

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec(**self.manifest["encoder"])

    @property
    def count(self) -> int:
        return sum(len(shard) for shard in self.shards.values())

    @property
    def doc_ids(self) -> list[str]:
        return [d for shard in self.shards.values() for d in shard.doc_ids.to_pylist()]

    @classmethod
    def in_memory(cls, vectors: np.ndarray, documents: pa.Table, manifest: dict, directory: str = "") -> RetrievalIndex:
        """A one-shard flat index over vectors already computed (row i = document i)."""
        order = np.argsort(np.array(documents.column("doc_id").to_pylist(), dtype=object), kind="stable")
        shard = IndexShard(build_faiss(np.ascontiguousarray(vectors[order])), documents.take(order))
        return cls(directory, {0: shard}, {**manifest, "shard_count": 1})

    @classmethod
    def load(
        cls, directory: str, expect: EncoderSpec | None = None, gpu: bool = False, shards: list[int] | None = None
    ) -> RetrievalIndex:
        """Load an index (only ``shards`` when given); with ``expect`` check that it was built by
        a compatible encoder. A remote index is fetched once, shard by shard."""
        manifest = read_manifest(directory)
        if expect is not None:
            check_encoder(directory, manifest, expect)
        loaded = {
            entry["shard"]: IndexShard.load(
                storage.local_copy(storage.join(directory, entry["name"])), manifest["index"], gpu
            )
            for entry in manifest["shards"]
            if shards is None or entry["shard"] in shards
        }
        return cls(directory, loaded, manifest)

    def check_encoder(self, spec: EncoderSpec) -> None:
        """Raise unless ``spec`` makes vectors comparable with this index's (pooling, prefixes,
        lengths and the model's weights)."""
        check_encoder(self.directory, self.manifest, spec)

    def hits(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[int, int, float]]]:
        """Top-``k`` ``(shard, row, score)`` per query vector over the loaded shards, best first."""
        vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
        numbers = list(self.shards)
        scores, which, rows = merge_top_k([self.shards[n].search(vectors, k) for n in numbers], k)
        return [
            [(numbers[w], int(r), float(s)) for s, w, r in zip(*per_query) if r >= 0]
            for per_query in zip(scores, which, rows)
        ]

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` (doc id, score) per query vector, best first."""
        return [
            [(self.shards[n].doc_ids[r].as_py(), s) for n, r, s in per_query]
            for per_query in self.hits(query_vectors, k)
        ]

    def document(self, doc_id: str) -> dict | None:
        shard = self.shards.get(shard_of(doc_id, self.manifest["shard_count"]))
        row = shard.row_of(doc_id) if shard is not None else None
        return None if row is None else shard.document(row)


def read_manifest(directory: str) -> dict:
    path = storage.join(directory, "manifest.json")
    if not storage.exists(path):
        raise LratError(f"{directory} is not an lrat index (no manifest.json)")
    manifest = json.loads(storage.read_bytes(path))
    if manifest.get("format") != FORMAT:
        raise LratError(
            f"index {directory} has format {manifest.get('format')!r}, this lrat reads {FORMAT!r}: "
            "build it again with lrat index"
        )
    return manifest


def check_encoder(directory: str, manifest: dict, expect: EncoderSpec) -> None:
    mismatched = EncoderSpec(**manifest["encoder"]).compatible_with(expect)
    if mismatched or model_fingerprint(expect.model) != manifest["model_fingerprint"]:
        raise LratError(
            f"index {directory} was built with {manifest['encoder']} "
            f"(fingerprint {manifest['model_fingerprint']}); the encoder given is "
            f"{dataclasses.asdict(expect)}: differs in {mismatched or ['model weights']}"
        )
