"""``lrat index``: encode a corpus with Ray Data and build a FAISS index.

Documents are encoded by a Ray Data actor pool (one model per actor, on a GPU when the actors ask
for one), longest first so batches carry little padding. The vectors go into a FAISS index: exact
inner product by default (``flat``; with normalised embeddings that is cosine similarity), or the
approximate ``ivf`` (inverted lists, ``nprobe`` lists searched) and ``hnsw`` (graph) indexes, on
GPU FAISS when it is installed and asked for.

An index directory is self-describing::

    index.faiss      the FAISS index (always saved in its CPU form)
    documents.parquet doc_id, title, text; row i is vector i (serving returns these)
    embeddings.npy   the document vectors, reused when the corpus and model are unchanged
    manifest.json    model, model fingerprint, encoder spec (pooling, prefixes, lengths), corpus
                     files and checksum, dimension, count, index type and parameters, skipped
                     corpus records, versions

:meth:`RetrievalIndex.load` checks the manifest against the encoder that will search the index,
so vectors from one model are never searched with another's queries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lrat_ray import __version__, storage
from lrat_ray.config import ActorPool, checked, option
from lrat_ray.corpus import document_text, iter_documents
from lrat_ray.errors import LratError
from lrat_ray.model import EncoderOptions, EncoderSpec, model_fingerprint

log = logging.getLogger(__name__)
INDEX_TYPES = ("flat", "ivf", "hnsw")


@dataclass(kw_only=True)
@checked
class IndexConfig(EncoderOptions, ActorPool):
    """Options of ``lrat index`` (the encoder options and actor pool are shared with other stages)."""

    corpus: list[str] = option(help="corpus files: BEIR JSONL (_id/docid, title, text) or Parquet", path=True)
    output: str = option(help="index directory to write (local or URI; '{version}' is replaced by the version key)")
    index_type: str = option("flat", choices=INDEX_TYPES, help="flat (exact), ivf or hnsw")
    nlist: int = option(1024, help="ivf: number of inverted lists (capped at count/39)")
    nprobe: int = option(32, help="ivf: lists searched per query")
    hnsw_m: int = option(32, help="hnsw: graph degree")
    ef_search: int = option(128, help="hnsw: search breadth")
    faiss_gpu: bool = option(False, help="build and search with GPU FAISS (needs the gpu extra)", runtime=True)
    gpus_per_worker: float = option(0.0, help="GPUs per encoder actor (0 on CPU machines)", runtime=True)
    batch_size: int = option(64, minimum=1, help="documents per forward pass", runtime=True)
    strict: bool = option(False, help="stop at the first corpus record without id or text")


# ---------------------------------------------------------------------------------------------
# FAISS
# ---------------------------------------------------------------------------------------------

def build_faiss(vectors: np.ndarray, index_type: str = "flat", nlist: int = 1024, nprobe: int = 32,
                hnsw_m: int = 32, ef_search: int = 128):
    """An inner-product FAISS index over ``vectors`` (float32, one row per document)."""
    import faiss

    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "ivf":
        lists = max(1, min(nlist, len(vectors) // 39))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nprobe, lists)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    index.add(vectors)
    return index


def to_gpu(index):
    import faiss

    if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        raise LratError("GPU FAISS asked for, but this faiss has no GPU support or sees no GPU; "
                        "install the 'gpu' extra on a GPU machine or drop --faiss-gpu")
    return faiss.index_cpu_to_all_gpus(index)


class RetrievalIndex:
    """A loaded index directory: FAISS index, documents and manifest."""

    def __init__(self, directory: str, faiss_index, doc_ids: list[str], manifest: dict, documents=None):
        self.directory = directory
        self.faiss_index = faiss_index
        self.doc_ids = doc_ids
        self.manifest = manifest
        self.documents = documents  # pyarrow Table (doc_id, title, text), row-aligned with doc_ids
        self._row = {d: i for i, d in enumerate(doc_ids)}

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec(**self.manifest["encoder"])

    @classmethod
    def load(cls, directory: str, expect: EncoderSpec | None = None, gpu: bool = False) -> "RetrievalIndex":
        """Load an index; with ``expect`` check that it was built by a compatible encoder."""
        import faiss
        import pyarrow.parquet as pq

        directory = storage.local_copy(directory)  # FAISS reads local files: fetch a remote index once
        manifest_path = os.path.join(directory, "manifest.json")
        if not os.path.isfile(manifest_path):
            raise LratError(f"{directory} is not an lrat index (no manifest.json)")
        with open(manifest_path) as fh:
            manifest = json.load(fh)
        if expect is not None:
            _check_encoder(directory, manifest, expect)
        index = faiss.read_index(os.path.join(directory, "index.faiss"))
        if manifest["index"]["type"] == "ivf":
            index.nprobe = manifest["index"]["nprobe"]
        elif manifest["index"]["type"] == "hnsw":
            index.hnsw.efSearch = manifest["index"]["ef_search"]
        documents = pq.read_table(os.path.join(directory, "documents.parquet"))
        if gpu:
            index = to_gpu(index)
        return cls(directory, index, documents.column("doc_id").to_pylist(), manifest, documents)

    def check_encoder(self, spec: EncoderSpec) -> None:
        """Raise unless ``spec`` makes vectors comparable with this index's (pooling, prefixes,
        lengths and the model's weights)."""
        _check_encoder(self.directory, self.manifest, spec)

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` (doc id, score) per query vector, best first."""
        k = min(k, len(self.doc_ids))
        scores, rows = self.faiss_index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), k)
        return [[(self.doc_ids[r], float(s)) for r, s in zip(row_ids, row_scores) if r >= 0]
                for row_ids, row_scores in zip(rows, scores)]

    def document(self, doc_id: str) -> dict | None:
        row = self._row.get(doc_id)
        if row is None:
            return None
        return {name: self.documents.column(name)[row].as_py() for name in ("doc_id", "title", "text")}


def _check_encoder(directory: str, manifest: dict, expect: EncoderSpec) -> None:
    mismatched = EncoderSpec(**manifest["encoder"]).compatible_with(expect)
    if mismatched or model_fingerprint(expect.model) != manifest["model_fingerprint"]:
        raise LratError(f"index {directory} was built with {manifest['encoder']} "
                        f"(fingerprint {manifest['model_fingerprint']}); the encoder given is "
                        f"{dataclasses.asdict(expect)}: differs in {mismatched or ['model weights']}")


# ---------------------------------------------------------------------------------------------
# Building with Ray Data
# ---------------------------------------------------------------------------------------------

class _EncodeDocuments:
    """Ray Data actor: one encoder, many batches."""

    def __init__(self, spec: dict, batch_size: int, bf16: bool = False):
        from lrat_ray.model import Encoder

        self.encoder = Encoder(EncoderSpec(**spec), batch_size=batch_size, bf16=bf16)

    def __call__(self, batch: dict) -> dict:
        return {"row": batch["row"], "embedding": self.encoder.encode_documents(list(batch["text"]))}


def encode_corpus(texts: Sequence[str], spec: EncoderSpec, workers: int | None = None, batch_size: int = 64,
                  per_worker: dict | None = None, bf16: bool = False) -> np.ndarray:
    """Embeddings of ``texts`` (row i = text i), computed by a Ray Data actor pool of ``workers``
    actors (default: as many as fit), each reserving ``per_worker`` (default one CPU)."""
    import ray

    from lrat_ray.runtime import fit_workers, remote_args

    per_worker = per_worker or {"CPU": 1.0}
    workers = fit_workers(workers, per_worker, "index")
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    items = [{"row": i, "text": texts[i]} for i in order]
    blocks = max(1, min(len(items) // batch_size, workers * 8))
    ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _EncodeDocuments, batch_size=batch_size * 4,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, blocks))),
        **remote_args(per_worker),
        fn_constructor_kwargs={"spec": dataclasses.asdict(spec), "batch_size": batch_size, "bf16": bf16})
    out = None
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if out is None:
            out = np.empty((len(texts), batch["embedding"].shape[1]), dtype=np.float32)
        out[batch["row"]] = batch["embedding"]
    if out is None:
        raise LratError("no documents to encode")
    return out


def corpus_checksum(files: list[str]) -> str:
    digest = hashlib.sha256()
    for uri in files:
        digest.update(uri.encode())
        digest.update(storage.read_bytes(uri))
    return digest.hexdigest()


def run_index(config: IndexConfig) -> dict:
    """Build the index directory; returns its manifest."""
    import faiss
    import pyarrow as pa

    from lrat_ray.runtime import actor_resources, init_ray

    started = time.time()
    spec = config.encoder_spec()
    files = storage.expand_inputs(config.corpus)
    skipped: dict[str, int] = {}
    doc_ids, titles, texts, searchable = [], [], [], []
    for doc_id, record in iter_documents(files, strict=config.strict, skipped=skipped):
        doc_ids.append(doc_id)
        titles.append(record.get("title") or "")
        texts.append(record.get("text") or "")
        searchable.append(document_text(record))
    if not doc_ids:
        raise LratError(f"no usable documents in {config.corpus} (skipped: {skipped})")
    if len(set(doc_ids)) != len(doc_ids):
        raise LratError(f"corpus {config.corpus} has duplicate document ids")
    checksum = corpus_checksum(files)
    fingerprint = model_fingerprint(spec.model)
    cache_key = hashlib.sha256(json.dumps([checksum, fingerprint, dataclasses.asdict(spec), config.bf16]).encode()
                               ).hexdigest()

    os.makedirs(config.output, exist_ok=True)
    manifest_path = os.path.join(config.output, "manifest.json")
    embeddings_path = os.path.join(config.output, "embeddings.npy")
    previous = json.loads(open(manifest_path).read()) if os.path.isfile(manifest_path) else {}
    if previous.get("embeddings_cache_key") == cache_key and os.path.isfile(embeddings_path):
        log.info("corpus and model unchanged: reusing %s", embeddings_path)
        vectors = np.load(embeddings_path)
        reused = True
    else:
        init_ray(config.address)
        per_worker = actor_resources(config.cpus_per_worker, config.gpus_per_worker, config.resources)
        vectors = encode_corpus(searchable, spec, config.workers, config.batch_size, per_worker, config.bf16)
        _save_npy_atomic(embeddings_path, vectors)
        reused = False
    encode_seconds = time.time() - started

    index = build_faiss(vectors, config.index_type, config.nlist, config.nprobe, config.hnsw_m, config.ef_search)
    if config.faiss_gpu:
        index = faiss.index_gpu_to_cpu(to_gpu(index))
    tmp = os.path.join(config.output, f".index.faiss.tmp-{os.getpid()}")
    faiss.write_index(index, tmp)
    os.replace(tmp, os.path.join(config.output, "index.faiss"))
    storage.write_table_atomic(os.path.join(config.output, "documents.parquet"), pa.table(
        {"doc_id": doc_ids, "title": titles, "text": texts}))
    manifest = {
        "format": "lrat-index/1",
        "model": spec.model,
        "model_fingerprint": fingerprint,
        "encoder": dataclasses.asdict(spec),
        "dimension": int(vectors.shape[1]),
        "count": len(doc_ids),
        "corpus": {"files": files, "sha256": checksum, "records_skipped": skipped},
        "index": {"type": config.index_type, "nlist": config.nlist, "nprobe": config.nprobe,
                  "hnsw_m": config.hnsw_m, "ef_search": config.ef_search},
        "embeddings_cache_key": cache_key,
        "embeddings_reused": reused,
        "bf16": config.bf16,
        "encode_seconds": round(encode_seconds, 3),
        "versions": {"lrat_ray": __version__, "faiss": faiss.__version__},
    }
    storage.write_json_atomic(manifest_path, manifest)  # last: a manifest means a complete index
    return manifest


def _save_npy_atomic(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)
