"""Building an index: partition tasks write each document to its shard's staging folder, encoder
actors build the shards (reusing unchanged ones), and the manifest is written last."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time

import numpy as np
import pyarrow as pa

from lrat_ray import __version__
from lrat_ray.core.corpus import document_text, piece_documents
from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import default_device, describe, resolve_bf16
from lrat_ray.models.encoder import model_fingerprint
from lrat_ray.stages.index.config import IndexConfig
from lrat_ray.stages.index.faiss_index import build_faiss, to_gpu
from lrat_ray.stages.index.retrieval import DOCUMENT_SCHEMA, FORMAT, SHARD_DONE, shard_name, shard_of

log = logging.getLogger(__name__)

READ_CPUS = 0.5  # a partition task parses and writes; half a CPU lets two run beside an encoder


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
