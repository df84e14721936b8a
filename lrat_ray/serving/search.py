"""What answers a search inside the retriever application: the whole retriever in each replica
(:class:`LocalSearch`) or an encoder deployment and one deployment per index shard reached
through handles (:class:`ComposedSearch`); both load a new index beside the old one and switch
in one assignment."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class SearchBackend(Protocol):
    """What the ingress asks of a layout (:class:`LocalSearch` or :class:`ComposedSearch`)."""

    async def load(self, directory: str) -> None:
        """Load the index at ``directory`` beside the current one, then switch to it."""

    @property
    def directory(self) -> str:
        """The index requests are admitted under now."""

    def describe(self) -> dict:
        """What is served: index, documents, model, shards."""

    async def search(self, queries: list[str], depth: int) -> list[list[dict]]:
        """The top ``depth`` results of each query, in the API's result shape."""

    async def document(self, docid: str) -> dict | None:
        """A document by id, or None."""


@dataclass
class _Failed:
    """One request's failure inside a batch: answered alone, its batch-mates are not touched."""

    message: str


@dataclass
class _Loaded:
    """An index and the encoder that matches it; replaced as a whole on reconfigure."""

    index: Any
    encoder: Any
    directory: str


def load_retriever(index_dir: str, device: str | None = None) -> _Loaded:
    from lrat_ray.stages.index import RetrievalIndex

    index = RetrievalIndex.load(index_dir)
    return _Loaded(index, load_query_encoder(index_dir, index.manifest, device), index_dir)


def load_query_encoder(index_dir: str, manifest: dict | None = None, device: str | None = None):
    """The encoder an index was built with; refuses a model that changed under the index. Its
    precision is this machine's (auto, :mod:`lrat_ray.infra.hardware`), not the index builder's: bf16 and
    fp32 vectors of one model differ by rounding only (top-10 overlap 0.99 on SciFact), so an index
    built on an AMX machine is searched in fp32 where bf16 would be emulated, and vice versa."""
    from lrat_ray.models.encoder import Encoder, EncoderSpec
    from lrat_ray.stages.index import check_encoder, read_manifest

    manifest = manifest or read_manifest(index_dir)
    encoder = Encoder(EncoderSpec(**manifest["encoder"]), device=device)
    check_encoder(index_dir, manifest, encoder.spec)
    return encoder


def _results(index, hits: list[list[tuple[int, int, float]]], snippet_chars: int) -> list[list[dict]]:
    """:meth:`RetrievalIndex.hits` as the API's ``{docid, score, title, snippet}`` lists."""
    out = []
    for per_query in hits:
        documents = [(index.shards[n].document(r), s) for n, r, s in per_query]
        out.append(
            [
                {"docid": d["doc_id"], "score": s, "title": d["title"], "snippet": d["text"][:snippet_chars]}
                for d, s in documents
            ]
        )
    return out


class LocalSearch:
    """Index and encoder inside each replica: the simple layout, for corpora one process holds."""

    def __init__(self, snippet_chars: int):
        self.snippet_chars = snippet_chars
        self.loaded: _Loaded | None = None

    async def load(self, directory: str) -> None:
        if self.loaded is None or self.loaded.directory != directory:
            loaded = await asyncio.to_thread(load_retriever, directory)
            self.loaded = loaded  # one assignment: a request sees the old or the new index, whole

    @property
    def directory(self) -> str:
        return self.loaded.directory

    def describe(self) -> dict:
        loaded = self.loaded
        return {
            "index": loaded.directory,
            "documents": loaded.index.count,
            "model": loaded.index.manifest["model"],
            "shards": len(loaded.index.shards),
        }

    async def search(self, queries: list[str], depth: int) -> list[list[dict]]:
        loaded = self.loaded

        def work():
            hits = loaded.index.hits(loaded.encoder.encode_queries(queries), depth)
            return _results(loaded.index, hits, self.snippet_chars)

        return await asyncio.to_thread(work)

    async def document(self, docid: str) -> dict | None:
        return self.loaded.index.document(docid)


class ComposedSearch:
    """The encoder and every index shard in deployments of their own, reached through handles:
    the query encoder scales (and takes GPUs) apart from the CPU search, and a replica of a shard
    holds one shard. Each request names the index it was admitted under, so while a swap is
    loading, every part answers from the same index."""

    def __init__(self, encoder, shards: dict[int, Any]):
        self.encoder, self.shards = encoder, shards
        self.current: tuple[str, dict] | None = None

    async def load(self, directory: str) -> None:
        from lrat_ray.stages.index import read_manifest

        if self.current and self.current[0] == directory:
            return
        manifest = await asyncio.to_thread(read_manifest, directory)
        numbers = {entry["shard"] for entry in manifest["shards"]}
        if numbers != set(self.shards):
            raise ValueError(
                f"index {directory} has shards {sorted(numbers)}, this application serves "
                f"{sorted(self.shards)}: deploy it with lrat serve instead of swapping"
            )
        # Loaded everywhere first, then switched in one assignment.
        await asyncio.gather(
            self.encoder.load.remote(directory), *(handle.load.remote(directory) for handle in self.shards.values())
        )
        self.current = (directory, manifest)

    @property
    def directory(self) -> str:
        return self.current[0]

    def describe(self) -> dict:
        directory, manifest = self.current
        return {
            "index": directory,
            "documents": manifest["count"],
            "model": manifest["model"],
            "shards": len(self.shards),
        }

    async def search(self, queries: list[str], depth: int) -> list[list[dict]]:
        directory, _ = self.current
        vectors = await self.encoder.encode.remote(directory, queries)
        answers = await asyncio.gather(*(h.search.remote(directory, vectors, depth) for h in self.shards.values()))
        # Stable sort over the shards in order: the same order as lrat_ray.stages.index.merge_top_k.
        return [
            sorted((hit for answer in answers for hit in answer[q]), key=lambda hit: -hit["score"])[:depth]
            for q in range(len(queries))
        ]

    async def document(self, docid: str) -> dict | None:
        from lrat_ray.stages.index import shard_of

        directory, manifest = self.current
        handle = self.shards.get(shard_of(docid, manifest["shard_count"]))
        return None if handle is None else await handle.document.remote(directory, docid)


class _Versions:
    """What a deployment loaded per index directory, the newest two: requests admitted before a
    swap finish on the index they started with, and one that names a directory not loaded yet
    (this replica had not reconfigured) waits for it instead of failing."""

    def __init__(self, load):
        self.load = load
        self.tasks: dict[str, asyncio.Future] = {}

    async def get(self, directory: str):
        if directory not in self.tasks:
            self.tasks[directory] = asyncio.ensure_future(asyncio.to_thread(self.load, directory))
            while len(self.tasks) > 2:
                self.tasks.pop(next(iter(self.tasks)))
        try:
            return await self.tasks[directory]
        except Exception:
            self.tasks.pop(directory, None)  # a later request tries again
            raise
