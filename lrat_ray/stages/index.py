"""``lrat index``: encode a corpus with Ray and build a sharded FAISS index, without the driver.

A corpus of any size is indexed in two passes of Ray work; the driver only plans them and adds up
counts, so its memory does not grow with the corpus:

1. **Partition**: tasks read the corpus (a large JSONL file in line-aligned byte ranges, several
   tasks per file), check every record (a bad one is counted under its reason, or stops the job
   with its ``file:line`` under ``strict``) and write each document to its shard's staging folder.
   A document's shard is a hash of its id, so a lookup by id goes straight to one shard and
   duplicate ids meet in the same shard.
2. **Build**: encoder actors (one model each, on a GPU when asked) take one shard at a time: its
   documents sorted by id, their vectors (longest texts batched together), a FAISS index, written
   to the shard's folder with ``shard.json`` last. A shard whose documents, encoder and index
   parameters are unchanged is kept as it is, so a resubmitted job resumes at the first
   unfinished shard; unchanged documents under new index parameters reuse their stored vectors.

Index types: exact inner product (``flat``; with normalised embeddings that is cosine similarity),
``ivf`` (inverted lists trained on the shard's vectors, ``nprobe`` lists searched) and ``hnsw``
(graph), on GPU FAISS when it is installed and asked for. A search runs on every shard and merges
the top k by score, so a sharded flat index returns what one flat index over the corpus returns.

An index directory is self-describing::

    manifest.json        written last (a manifest means a complete index): model, model
                         fingerprint, encoder spec (pooling, prefixes, lengths), corpus files and
                         skipped records, dimension, count, index type and parameters, the shards
    shard-00000/
      index.faiss        the shard's FAISS index (CPU form)
      documents.arrow    doc_id, title, text sorted by doc_id; row i is vector i. Arrow IPC, so a
                         server memory-maps it and reads documents by row instead of holding them
                         (pandas.read_feather, pyarrow.feather or duckdb read it)
      embeddings.npy     the shard's vectors
      shard.json         count, the key of its documents + encoder, index parameters

:meth:`RetrievalIndex.load` checks the manifest against the encoder that will search the index,
so vectors from one model are never searched with another's queries.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lrat_ray import __version__
from lrat_ray.core.corpus import document_text, piece_documents
from lrat_ray.infra import storage
from lrat_ray.infra.config import ActorPool, checked, option
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import default_device, describe, resolve_bf16
from lrat_ray.models.encoder import EncoderOptions, EncoderSpec, model_fingerprint

log = logging.getLogger(__name__)
INDEX_TYPES = ("flat", "ivf", "hnsw")
FORMAT = "lrat-index/2"
SHARD_DONE = "shard.json"
DOCUMENT_SCHEMA = pa.schema([("doc_id", pa.string()), ("title", pa.large_string()), ("text", pa.large_string())])
READ_CPUS = 0.5  # a partition task parses and writes; half a CPU lets two run beside an encoder


@dataclass(kw_only=True)
@checked
class IndexConfig(EncoderOptions, ActorPool):
    """Options of ``lrat index`` (the encoder options and actor pool are shared with other stages)."""

    corpus: list[str] = option(help="corpus files: BEIR JSONL (_id/docid, title, text) or Parquet", path=True)
    output: str = option(help="index directory to write (local or URI; '{version}' is replaced by the version key)")
    shards: int = option(
        0,
        minimum=0,
        help="index shards (0: one per encoder actor). A shard is what one actor "
        "builds, one resubmission keeps and one server process holds: size it "
        "to a server's memory",
    )
    index_type: str = option("flat", choices=INDEX_TYPES, help="flat (exact), ivf or hnsw")
    nlist: int = option(1024, help="ivf: number of inverted lists per shard (capped at shard size/39)")
    nprobe: int = option(32, help="ivf: lists searched per query")
    hnsw_m: int = option(32, help="hnsw: graph degree")
    ef_search: int = option(128, help="hnsw: search breadth")
    faiss_gpu: bool = option(False, help="build and search with GPU FAISS (needs the gpu extra)", runtime=True)
    gpus_per_worker: float = option(0.0, help="GPUs per encoder actor (0 on CPU machines)", runtime=True)
    batch_size: int = option(64, minimum=1, help="documents per forward pass", runtime=True)
    split_bytes: int = option(
        64 << 20,
        minimum=1,
        runtime=True,
        help="corpus JSONL files larger than this are read in line-aligned byte ranges by several tasks",
    )
    strict: bool = option(False, help="stop at the first corpus record without id or text")

    def index_params(self) -> dict:
        return {
            "type": self.index_type,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
        }


def shard_of(doc_id: str, shard_count: int) -> int:
    """The shard of a document: a stable hash of its id (Python's ``hash`` differs per process)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") % shard_count


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


# ---------------------------------------------------------------------------------------------
# FAISS
# ---------------------------------------------------------------------------------------------


def build_faiss(
    vectors: np.ndarray,
    index_type: str = "flat",
    nlist: int = 1024,
    nprobe: int = 32,
    hnsw_m: int = 32,
    ef_search: int = 128,
):
    """An inner-product FAISS index over ``vectors`` (float32, one row per document)."""
    import faiss

    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "ivf":
        lists = max(1, min(nlist, len(vectors) // 39))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    index.add(vectors)
    return _search_settings(index, {"type": index_type, "nprobe": nprobe, "ef_search": ef_search})


def _search_settings(index, params: dict):
    """Search-time parameters, which FAISS does not keep in the saved file."""
    if params["type"] == "ivf":
        index.nprobe = min(params["nprobe"], index.nlist)
    elif params["type"] == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    return index


def to_gpu(index):
    import faiss

    if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        raise LratError(
            "GPU FAISS asked for, but this faiss has no GPU support or sees no GPU; "
            "install the 'gpu' extra on a GPU machine or drop --faiss-gpu"
        )
    return faiss.index_cpu_to_all_gpus(index)


def merge_top_k(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` of several shards' FAISS answers ``(scores, rows)``, each ``(queries, k_s)``:
    ``(scores, shard positions, rows)``, best first; a missing hit has row -1. Equal scores (the
    same text twice gives the same vector) are ordered by shard, then row: FAISS returns ties in
    an order of its own, which also differs between its SIMD code paths."""
    scores = np.concatenate([s for s, _ in results], axis=1)
    rows = np.concatenate([r for _, r in results], axis=1)
    which = np.concatenate([np.full(r.shape, i) for i, (_, r) in enumerate(results)], axis=1)
    scores = np.where(rows >= 0, scores, -np.inf)
    order = np.lexsort((rows, which, -scores), axis=1)[:, :k]
    return tuple(np.take_along_axis(a, order, axis=1) for a in (scores, which, rows))


# ---------------------------------------------------------------------------------------------
# Loading and searching
# ---------------------------------------------------------------------------------------------


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

        index = _search_settings(faiss.read_index(os.path.join(directory, "index.faiss")), params)
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
            _check_encoder(directory, manifest, expect)
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
        _check_encoder(self.directory, self.manifest, spec)

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


def _check_encoder(directory: str, manifest: dict, expect: EncoderSpec) -> None:
    mismatched = EncoderSpec(**manifest["encoder"]).compatible_with(expect)
    if mismatched or model_fingerprint(expect.model) != manifest["model_fingerprint"]:
        raise LratError(
            f"index {directory} was built with {manifest['encoder']} "
            f"(fingerprint {manifest['model_fingerprint']}); the encoder given is "
            f"{dataclasses.asdict(expect)}: differs in {mismatched or ['model weights']}"
        )


# ---------------------------------------------------------------------------------------------
# Building: partition tasks, then shard-building actors
# ---------------------------------------------------------------------------------------------


def partition_piece(piece: str | dict, name: str, shard_count: int, staging: str, strict: bool) -> dict:
    """Read one corpus piece and write its documents to their shards' staging folders as
    ``<shard>/<name>.parquet``; returns the counts (or the error, which the driver raises)."""
    skipped: dict[str, int] = {}
    rows: dict[int, dict[str, list]] = {}
    try:
        for doc_id, record in piece_documents(piece, strict, skipped):
            columns = rows.setdefault(shard_of(doc_id, shard_count), {"doc_id": [], "title": [], "text": []})
            columns["doc_id"].append(doc_id)
            columns["title"].append(str(record.get("title") or ""))
            columns["text"].append(str(record.get("text") or ""))
    except LratError as exc:
        return {"error": str(exc)}
    for shard, columns in rows.items():
        storage.write_table_atomic(
            storage.join(staging, shard_name(shard), f"{name}.parquet"), pa.table(columns, schema=DOCUMENT_SCHEMA)
        )
    return {"documents": sum(len(c["doc_id"]) for c in rows.values()), "skipped": skipped}


class ShardBuilder:
    """Ray actor: builds one shard per call; loads the encoder on the first shard that needs it."""

    def __init__(self, config: dict, staging: str):
        self.config = IndexConfig(**config)
        self.spec = self.config.encoder_spec()
        self.staging = staging
        self.fingerprint = model_fingerprint(self.spec.model)
        self.encoder = None
        # auto precision is this actor's device's, so each node of a mixed cluster encodes at its
        # own best; the shard records what it used.
        self.device = default_device()
        self.bf16 = resolve_bf16(self.config.bf16, self.device)

    def build(self, shard: int) -> dict:
        try:
            return self._build(shard)
        except LratError as exc:
            return {"error": str(exc)}

    def _build(self, shard: int) -> dict:
        name = shard_name(shard)
        folder = storage.join(self.config.output, name)
        documents = _read_staged(storage.join(self.staging, name), self.config.corpus)
        payload = _ipc_bytes(documents)
        content = hashlib.sha256(payload).hexdigest()
        key = hashlib.sha256(
            json.dumps([content, self.fingerprint, dataclasses.asdict(self.spec), self.bf16]).encode()
        ).hexdigest()
        params = self.config.index_params()
        done_path = storage.join(folder, SHARD_DONE)
        done = json.loads(storage.read_bytes(done_path)) if storage.exists(done_path) else {}
        if done.get("key") == key and done.get("index") == params:
            return {**done, "bf16": self.bf16, "reused": True}  # the key holds the precision
        storage.remove_file(done_path)  # from here on the shard is incomplete
        if done.get("key") == key:  # same documents and encoder: only the FAISS parameters changed
            vectors = np.load(io.BytesIO(storage.read_bytes(storage.join(folder, "embeddings.npy"))))
        else:
            vectors = self._encode(documents)
            storage.write_bytes_atomic(storage.join(folder, "embeddings.npy"), storage.npy_bytes(vectors))
            storage.write_bytes_atomic(storage.join(folder, "documents.arrow"), payload)
        storage.write_bytes_atomic(storage.join(folder, "index.faiss"), self._faiss_bytes(vectors))
        summary = {
            "shard": shard,
            "name": name,
            "count": len(vectors),
            "dimension": int(vectors.shape[1]),
            "content_sha256": content,
            "key": key,
            "index": params,
            "bf16": self.bf16,
            "hardware": describe(self.device),
        }
        storage.write_json_atomic(done_path, summary)
        return {**summary, "reused": done.get("key") == key}

    def _encode(self, documents: pa.Table) -> np.ndarray:
        from lrat_ray.models.encoder import Encoder

        if self.encoder is None:
            self.encoder = Encoder(
                self.spec,
                device=self.device,
                batch_size=self.config.batch_size,
                bf16=self.bf16,
                packed=self.config.packing,
            )
        return self.encoder.encode_documents(
            [
                document_text({"title": t, "text": x})
                for t, x in zip(documents.column("title").to_pylist(), documents.column("text").to_pylist())
            ]
        )

    def _faiss_bytes(self, vectors: np.ndarray) -> bytes:
        import faiss

        c = self.config
        index = build_faiss(vectors, c.index_type, c.nlist, c.nprobe, c.hnsw_m, c.ef_search)
        if c.faiss_gpu:
            index = faiss.index_gpu_to_cpu(to_gpu(index))
        return faiss.serialize_index(index).tobytes()


def _read_staged(folder: str, corpus: list[str]) -> pa.Table:
    """A shard's staged documents, sorted by id; duplicate ids (which hash to one shard) fail."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = storage.resolve(folder)
    table = pq.read_table(path, filesystem=fs, schema=DOCUMENT_SCHEMA).sort_by("doc_id").combine_chunks()
    ids = table.column("doc_id")
    if len(ids) > 1:
        same = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))
        if pc.any(same).as_py():
            duplicate = ids[pc.index(same, True).as_py()].as_py()
            raise LratError(f"corpus {corpus} has duplicate document ids (e.g. {duplicate!r}): ids must be unique")
    return table


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def run_index(config: IndexConfig) -> dict:
    """Build the index directory; returns its manifest."""
    import faiss

    from lrat_ray.infra.runtime import actor_resources, fit_workers, init_ray

    started = time.time()
    spec = config.encoder_spec()
    files = storage.expand_inputs(config.corpus)
    init_ray(config.address)
    per_worker = actor_resources(config.cpus_per_worker, config.gpus_per_worker, config.resources)
    workers = fit_workers(config.workers, per_worker, "index")
    shard_count = config.shards or workers
    manifest_path = storage.join(config.output, "manifest.json")
    storage.remove_file(manifest_path)  # the index is incomplete until the new manifest
    staging = storage.join(config.output, "_staging")
    storage.remove_dir(staging)
    read = _partition(files, shard_count, staging, config)
    if not read["documents"]:
        raise LratError(f"no usable documents in {config.corpus} (skipped: {read['skipped']})")
    partition_seconds = time.time() - started
    built = _build_shards(config, staging, workers, per_worker)
    storage.remove_dir(staging)
    _remove_stale_shards(config.output, {entry["name"] for entry in built})
    manifest = {
        "format": FORMAT,
        "model": spec.model,
        "model_fingerprint": model_fingerprint(spec.model),
        "encoder": dataclasses.asdict(spec),
        "dimension": built[0]["dimension"],
        "count": sum(entry["count"] for entry in built),
        "shard_count": shard_count,
        "shards": [{k: entry[k] for k in ("shard", "name", "count", "content_sha256")} for entry in built],
        "corpus": {
            "files": files,
            "records_skipped": read["skipped"],
            "sha256": hashlib.sha256("".join(e["content_sha256"] for e in built).encode()).hexdigest(),
        },
        "index": config.index_params(),
        "embeddings_reused": sum(entry["reused"] for entry in built),
        # What the shards were encoded in (one value, or "mixed" across a heterogeneous cluster; a
        # query encoder uses its own machine's precision either way: serving.load_query_encoder).
        "bf16": _one_or_mixed([entry.get("bf16") for entry in built]),
        "hardware": _distinct([entry.get("hardware") for entry in built]),
        "seconds": {"partition": round(partition_seconds, 3), "total": round(time.time() - started, 3)},
        "versions": {"lrat_ray": __version__, "faiss": faiss.__version__},
    }
    storage.write_json_atomic(manifest_path, manifest)
    return manifest


def _partition(files: list[str], shard_count: int, staging: str, config: IndexConfig) -> dict:
    """Run :func:`partition_piece` over the corpus pieces as Ray tasks; returns the totals."""
    import ray

    count = ray.remote(num_cpus=READ_CPUS)(storage.count_newlines)
    pieces = storage.line_pieces(files, config.split_bytes, lambda jobs: ray.get([count.remote(*j) for j in jobs]))
    task = ray.remote(num_cpus=READ_CPUS)(partition_piece)
    results = ray.get(
        [task.remote(piece, f"piece-{i:06d}", shard_count, staging, config.strict) for i, piece in enumerate(pieces)]
    )
    _raise_first_error(results)
    skipped: dict[str, int] = {}
    for result in results:
        for reason, n in result["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {"documents": sum(r["documents"] for r in results), "skipped": skipped}


def _build_shards(config: IndexConfig, staging: str, workers: int, per_worker: dict) -> list[dict]:
    """Build every shard that has documents with a pool of :class:`ShardBuilder` actors."""
    import ray
    from pyarrow.fs import FileSelector
    from ray.util import ActorPool

    from lrat_ray.infra.progress import Progress
    from lrat_ray.infra.runtime import remote_args

    fs, path = storage.resolve(staging)
    shards = sorted(int(info.base_name.split("-")[1]) for info in fs.get_file_info(FileSelector(path)))
    builder = ray.remote(**remote_args(per_worker))(ShardBuilder)
    actors = [builder.remote(dataclasses.asdict(config), staging) for _ in range(min(workers, len(shards)))]
    try:
        results = []
        with Progress("index", len(shards), "shards") as progress:
            for result in ActorPool(actors).map_unordered(lambda actor, shard: actor.build.remote(shard), shards):
                results.append(result)
                progress.update(1, documents=result.get("count", 0))
    finally:
        for actor in actors:
            ray.kill(actor)
    _raise_first_error(results)
    return sorted(results, key=lambda entry: entry["shard"])


def _one_or_mixed(values: list):
    return values[0] if len(set(map(str, values))) == 1 else "mixed"


def _distinct(values: list) -> list:
    return [v for i, v in enumerate(values) if v is not None and v not in values[:i]]


def _raise_first_error(results: list[dict]) -> None:
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise LratError(errors[0] + (f" (and {len(errors) - 1} more failed pieces)" if len(errors) > 1 else ""))


def _remove_stale_shards(output: str, keep: set[str]) -> None:
    """Shards of an earlier build with more shards (or documents no longer in the corpus)."""
    from pyarrow.fs import FileSelector, FileType

    fs, path = storage.resolve(output)
    for info in fs.get_file_info(FileSelector(path)):
        if info.type == FileType.Directory and info.base_name.startswith("shard-") and info.base_name not in keep:
            fs.delete_dir(info.path)
