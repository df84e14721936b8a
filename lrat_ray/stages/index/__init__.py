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

Modules: :mod:`.config` (``IndexConfig``), :mod:`.faiss_index` (FAISS building, search settings,
merging), :mod:`.retrieval` (reading and searching an index directory), :mod:`.build` (the
stage: partition, shard builders, manifest).
"""

from lrat_ray.stages.index.build import run_index
from lrat_ray.stages.index.config import IndexConfig
from lrat_ray.stages.index.faiss_index import build_faiss, merge_top_k
from lrat_ray.stages.index.retrieval import RetrievalIndex, check_encoder, read_manifest, shard_of

__all__ = [
    "IndexConfig",
    "RetrievalIndex",
    "build_faiss",
    "check_encoder",
    "merge_top_k",
    "read_manifest",
    "run_index",
    "shard_of",
]
