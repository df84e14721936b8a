"""The retriever as a Ray Serve application: the two tools a deep-research agent uses.

``POST /search`` ``{"query": str | [str], "k": int}`` returns ranked ``{docid, score, title,
snippet}`` (a list of such lists for a list of queries); ``GET /documents/{docid}`` returns the full
document; ``GET /healthz`` says which index is loaded (and which replica answers). Queries arriving at the same time are
encoded and searched together (``@serve.batch``): one forward pass and one FAISS call for many
requests, which is what makes a CPU replica keep up with a fleet of agents.

Two layouts answer the same API. By default each replica holds the whole retriever (index,
documents, encoder): the simplest and fastest while one process holds the corpus. With
``composed`` the application is an ingress (HTTP, auth, admission, batching, merging), a
``QueryEncoder`` deployment (its own replicas and autoscaling, GPUs if asked) and one
``IndexShard<N>`` deployment per shard of the index (CPU; a replica holds one shard, documents
memory-mapped and read by row). The ingress encodes a batch once, asks every shard for its top k
and merges them by score, which is exactly what one flat index over the corpus returns.

The loaded index is the deployment's ``user_config`` (``{"index": DIR}``). Changing it is a Ray
Serve lightweight update (the deployments' versions are pinned to everything but the index, see
:func:`_pinned`): every replica loads the new model and index in a worker thread while it
keeps answering from the old one, then swaps them in one assignment, so the flywheel redeploys a
retrained retriever without failing a request. Composed, the ingress switches once the encoder and
every shard have loaded the new index; each request names the index it was admitted under, and the
parts keep the previous one loaded until the next swap, so no request mixes two indexes.

Every request is checked before it joins a batch, and every error answer is ``{"error": message}``:
wrong content type (415), malformed or too deeply nested JSON (400), a body over the limit (413),
empty, over-long or non-Unicode query (a lone surrogate), ``k`` out of range or a wrong field type
(422), unknown document or route (404, 405), missing or wrong bearer token when one is configured
(401). A request that fails inside a batch anyway is answered 500 alone (the batch is retried one
request at a time); one not answered in ``request_timeout_s`` gets 503. The token reaches the
replicas only as its SHA-256. ``deploy`` checks that the cluster can hold every replica and waits
for the application with a deadline, so a layout that cannot start fails in one line instead of
accepting connections it never answers. The server binds to 127.0.0.1 unless told otherwise.
Ray Serve's request metrics and the ``lrat_search_*`` ones defined here go through Ray's metrics
system (Prometheus format on each node's metrics export port).
"""

import asyncio
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrat_ray.infra.config import RayCluster, checked, option

log = logging.getLogger(__name__)
APP_NAME = "lrat-retriever"
COMPOSED_BATCHES = 4  # search batches one composed ingress replica keeps in flight


@dataclass(kw_only=True)
@checked
class ServeConfig(RayCluster):
    """Options of ``lrat serve`` (the deployment's settings; ``index`` is its user_config)."""

    index: str = option(help="index directory built by `lrat index`", path=True)
    host: str = option("127.0.0.1", help="address to bind; 127.0.0.1 keeps the server local")
    port: int = option(8000, help="HTTP port")
    token: str | None = option(None, help="if set, requests need 'Authorization: Bearer <token>' (an argument shows "
                                         "in the process list: prefer --token-file or the token_env variable)")
    token_file: str | None = option(None, help="file holding the bearer token (its first line)")
    token_env: str = option("LRAT_SERVE_TOKEN", help="environment variable holding the bearer token, used when "
                                                     "neither --token nor --token-file is given")
    replicas: int = option(1, help="replicas (ignored when autoscaling)")
    autoscale_min: int | None = option(None, help="autoscaling: minimum replicas (enables autoscaling)")
    autoscale_max: int | None = option(None, help="autoscaling: maximum replicas")
    target_ongoing_requests: float = option(8.0,
                                            help="autoscaling (whole layout): target in-flight requests per replica")
    replica_cpus: float = option(1.0, help="CPUs reserved per replica")
    replica_gpus: float = option(0.0, help="GPUs per replica (encoder and FAISS on GPU)")
    resources: dict = option({}, help="custom resources per replica, e.g. {\"cpu_stage\": 1}")
    max_batch_size: int = option(32, help="@serve.batch: most requests encoded together")
    batch_wait_timeout_s: float = option(0.005, help="@serve.batch: longest wait to fill a batch")
    max_k: int = option(100, help="largest k a request may ask for")
    max_query_chars: int = option(2048, help="longest query accepted, in characters")
    max_queries: int = option(64, help="most queries in one request")
    max_body_bytes: int = option(1 << 20, minimum=1, help="largest request body accepted, in bytes (413 beyond)")
    request_timeout_s: float = option(30.0, minimum=0.1, help="a search not answered within this long gets 503 and "
                                                             "Retry-After (a part that is not up, a stuck batch) "
                                                             "instead of an open-ended wait")
    start_timeout_s: float = option(120.0, minimum=1, help="fail when the application is not running after this long "
                                                          "(replicas that cannot be placed or do not start)")
    snippet_chars: int = option(300, help="characters of document text returned as a snippet")
    max_in_flight: int = option(1024, minimum=1, help="queue depth: searches one replica holds at once (encoding, "
                                                      "searching or waiting for a batch); beyond it a request is "
                                                      "answered at once with 503 and Retry-After instead of queueing "
                                                      "until it times out (the project's agent client waits and "
                                                      "retries)")
    retry_after_s: int = option(1, minimum=1, help="least Retry-After of a turned-away request, in seconds; a "
                                                   "longer queue gives the time it takes to drain at the recent rate")
    composed: bool = option(False, help="serve as parts: an ingress, a query-encoder deployment (replicas, "
                                        "autoscaling, replica_cpus and replica_gpus apply to it) and one deployment "
                                        "per index shard, each replica holding one shard; for corpora too large for "
                                        "one process")
    shard_replicas: int = option(1, minimum=1, help="composed: replicas of each index-shard deployment")
    shard_cpus: float = option(0.5, help="composed: CPUs reserved per index-shard replica")
    ingress_replicas: int = option(1, minimum=1, help="composed: replicas of the HTTP ingress")
    target_ongoing_batches: float = option(1.0, help="composed, autoscaling: target encode batches in flight per "
                                                     "encoder replica (each ingress keeps up to 4 in flight)")
    ingress_cpus: float = option(0.25, help="composed: CPUs reserved per ingress replica (it parses, admits and "
                                            "merges; the work is in the parts)")
    access_log: bool = option(False, help="log every request (Ray Serve access log)")
    swap: bool = option(False, help="hot swap: point the retriever already running on the cluster (--address, "
                                    "else RAY_ADDRESS) at --index without dropping a request, then exit; give the "
                                    "options (or --config) it runs with")
    proxy_location: str = option("EveryNode", choices=("EveryNode", "HeadOnly"),
                                 help="where Ray Serve runs HTTP proxies: on every node (clients on any node "
                                      "reach the app at HOST:PORT of their own node) or on the head only")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_search_request(content_type: str | None, body: bytes, max_k: int, max_query_chars: int,
                         max_queries: int) -> tuple[list[str], int, bool]:
    """Validate a /search request; returns (queries, k, whether the query was a list)."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise RequestError(415, "content type must be application/json")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    except RecursionError:  # the parser recurses per nesting level; the API needs two
        raise RequestError(400, "malformed JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise RequestError(422, "the body must be a JSON object with 'query' and optional 'k'")
    query, k = payload.get("query"), payload.get("k", 10)
    as_list = isinstance(query, list)
    queries = query if as_list else [query]
    if not queries or len(queries) > max_queries:
        raise RequestError(422, f"'query' must hold 1 to {max_queries} queries")
    for q in queries:
        if not isinstance(q, str):
            raise RequestError(422, "'query' must be a string or a list of strings")
        if not q.strip():
            raise RequestError(422, "empty query")
        if len(q) > max_query_chars:
            raise RequestError(422, f"query longer than {max_query_chars} characters")
        try:
            q.encode("utf-8")  # JSON may carry lone surrogates (\ud800): no tokenizer takes them
        except UnicodeEncodeError as exc:
            raise RequestError(422, f"query is not valid Unicode text ({exc.reason} at character {exc.start})"
                               ) from None
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise RequestError(422, f"'k' must be an integer from 1 to {max_k}")
    return queries, k, as_list


def resolve_token(settings: ServeConfig) -> str | None:
    """The bearer token: ``--token``, else the first line of ``--token-file``, else the
    ``token_env`` variable; None when none is set (no authentication)."""
    from lrat_ray.infra.errors import LratError

    if settings.token:
        return settings.token
    if settings.token_file:
        try:
            text = Path(settings.token_file).read_text().strip()
        except OSError as exc:
            raise LratError(f"token_file {settings.token_file}: {exc.strerror}") from None
        if not text:
            raise LratError(f"token_file {settings.token_file}: the file is empty")
        return text.splitlines()[0].strip()
    return os.environ.get(settings.token_env) or None


def token_digest(token: str | None) -> str | None:
    """What replicas hold instead of the token: it never reaches a deployment's config."""
    return None if token is None else hashlib.sha256(token.encode()).hexdigest()


def authorized(header: str | None, digest: str | None) -> bool:
    """``Authorization: Bearer <token>`` against the token's digest; the scheme is matched without
    regard to case, as HTTP defines it."""
    if digest is None:
        return True
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(hashlib.sha256(credentials.strip().encode()).hexdigest(), digest)


@dataclass
class _Failed:
    """One request's failure inside a batch: answered alone, its batch-mates are not touched."""

    message: str


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
    from lrat_ray.stages.index import _check_encoder, read_manifest

    manifest = manifest or read_manifest(index_dir)
    encoder = Encoder(EncoderSpec(**manifest["encoder"]), device=device)
    _check_encoder(index_dir, manifest, encoder.spec)
    return encoder


def _results(index, hits: list[list[tuple[int, int, float]]], snippet_chars: int) -> list[list[dict]]:
    """:meth:`RetrievalIndex.hits` as the API's ``{docid, score, title, snippet}`` lists."""
    out = []
    for per_query in hits:
        documents = [(index.shards[n].document(r), s) for n, r, s in per_query]
        out.append([{"docid": d["doc_id"], "score": s, "title": d["title"], "snippet": d["text"][:snippet_chars]}
                    for d, s in documents])
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
        return {"index": loaded.directory, "documents": loaded.index.count, "model": loaded.index.manifest["model"],
                "shards": len(loaded.index.shards)}

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
            raise ValueError(f"index {directory} has shards {sorted(numbers)}, this application serves "
                             f"{sorted(self.shards)}: deploy it with lrat serve instead of swapping")
        # Loaded everywhere first, then switched in one assignment.
        await asyncio.gather(self.encoder.load.remote(directory),
                             *(handle.load.remote(directory) for handle in self.shards.values()))
        self.current = (directory, manifest)

    @property
    def directory(self) -> str:
        return self.current[0]

    def describe(self) -> dict:
        directory, manifest = self.current
        return {"index": directory, "documents": manifest["count"], "model": manifest["model"],
                "shards": len(self.shards)}

    async def search(self, queries: list[str], depth: int) -> list[list[dict]]:
        directory, _ = self.current
        vectors = await self.encoder.encode.remote(directory, queries)
        answers = await asyncio.gather(*(h.search.remote(directory, vectors, depth) for h in self.shards.values()))
        # Stable sort over the shards in order: the same order as lrat_ray.stages.index.merge_top_k.
        return [sorted((hit for answer in answers for hit in answer[q]), key=lambda hit: -hit["score"])[:depth]
                for q in range(len(queries))]

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


@functools.cache
def make_part_deployments():
    """The encoder and index-shard deployments of the composed retriever."""
    from ray import serve

    @serve.deployment(name="QueryEncoder")
    class QueryEncoder:
        def __init__(self):
            self.versions = _Versions(load_query_encoder)

        async def reconfigure(self, user_config: dict) -> None:
            await self.versions.get(user_config["index"])

        async def load(self, directory: str) -> None:
            await self.versions.get(directory)

        async def encode(self, directory: str, queries: list[str]):
            encoder = await self.versions.get(directory)
            return await asyncio.to_thread(encoder.encode_queries, queries)

    @serve.deployment(name="IndexShard")
    class IndexShardServer:
        def __init__(self, shard: int, snippet_chars: int):
            from lrat_ray.stages.index import RetrievalIndex

            self.shard, self.snippet_chars = shard, snippet_chars
            self.versions = _Versions(lambda directory: RetrievalIndex.load(directory, shards=[shard]))

        async def reconfigure(self, user_config: dict) -> None:
            await self.versions.get(user_config["index"])

        async def load(self, directory: str) -> None:
            await self.versions.get(directory)

        async def search(self, directory: str, vectors, k: int) -> list[list[dict]]:
            index = await self.versions.get(directory)
            hits = await asyncio.to_thread(index.hits, vectors, k)
            return _results(index, hits, self.snippet_chars)

        async def document(self, directory: str, docid: str) -> dict | None:
            return (await self.versions.get(directory)).document(docid)

    return QueryEncoder, IndexShardServer


def build_fastapi_app():
    """The HTTP app; every error it answers is JSON ``{"error": ...}``, whatever raised it."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="lrat retriever", description="search + browse tools for research agents")

    @app.middleware("http")
    async def _json_errors(request, call_next):
        # Anything unexpected still answers JSON, and is logged. (An exception handler registered
        # for Exception answers, but Starlette then re-raises, and Ray Serve answers plain text.)
        try:
            return await call_next(request)
        except Exception:
            log.exception("unexpected error on %s", request.url.path)
            return JSONResponse({"error": "internal error"}, status_code=500)

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return JSONResponse({"error": f"no such route: {request.method} {request.url.path}"}, status_code=404)

    @app.exception_handler(405)
    async def _not_allowed(request, exc):
        return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)

    return app


@functools.cache
def make_deployment():
    """The Ray Serve ingress deployment class (made once per process: redeploying the same class
    object with only a new user_config is a lightweight update, not a code change)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from ray import serve
    from ray.util import metrics

    app = build_fastapi_app()

    @serve.deployment(name="Retriever")
    @serve.ingress(app)
    class Retriever:
        def __init__(self, config: dict, encoder=None, shards: list | None = None, shard_numbers: list | None = None,
                     token_sha256: str | None = None):
            # The index is not an init argument but the user_config: changing it must not restart us.
            self.config = ServeConfig(index="", **config)
            self.token_sha256 = token_sha256
            self.replica = os.urandom(4).hex()  # in /healthz: shows that a swap reconfigured, not restarted
            self.backend = (LocalSearch(self.config.snippet_chars) if encoder is None
                            else ComposedSearch(encoder, dict(zip(shard_numbers, shards))))
            self.queries_total = metrics.Counter("lrat_search_queries", "queries answered by /search")
            self.shed_total = metrics.Counter("lrat_requests_shed", "requests answered 503 (replica full)")
            self.in_flight = 0
            self.answered = 0  # searches answered, for the drain rate behind Retry-After
            self._rate, self._rate_since, self._answered_since = 0.0, time.monotonic(), 0
            self.batch_size = metrics.Histogram("lrat_search_batch_requests", "requests per encoder batch",
                                                boundaries=[1, 2, 4, 8, 16, 32, 64])
            self.batched = self._search_batch if encoder is None else self._search_batch_pipelined
            self.batched.set_max_batch_size(self.config.max_batch_size)
            self.batched.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

        async def reconfigure(self, user_config: dict) -> None:
            started = time.time()
            await self.backend.load(user_config["index"])
            log.info("serving %s, loaded in %.1fs", self.backend.describe(), time.time() - started)

        def _busy(self) -> JSONResponse | None:
            """Admission: a full replica says so at once (503 + Retry-After) rather than queueing
            work it cannot finish before the client gives up."""
            if self.in_flight < self.config.max_in_flight:
                return None
            self.shed_total.inc()
            return JSONResponse({"error": "retriever busy, retry later"}, status_code=503,
                                headers={"Retry-After": str(self._drain_seconds())})

        def _drain_seconds(self) -> int:
            """How long the queue takes to drain at the recent answer rate: a fleet turned away all
            at once comes back spread over that time, not every second (each 503 costs the proxy
            as much as an answer)."""
            now = time.monotonic()
            if now - self._rate_since >= 2.0:
                self._rate = (self.answered - self._answered_since) / (now - self._rate_since)
                self._rate_since, self._answered_since = now, self.answered
            if self._rate <= 0:
                return self.config.retry_after_s
            return max(self.config.retry_after_s, min(60, math.ceil(self.in_flight / self._rate)))

        def _authorized(self, request: Request) -> bool:
            return authorized(request.headers.get("authorization"), self.token_sha256)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def _search_batch(self, requests: list[tuple[list[str], int]]) -> list[list]:
            return await self._search(requests)

        # Composed, a batch mostly waits on the encoder and the shards: several in flight keep
        # both busy (and give the encoder's autoscaling a load to see). Whole, one at a time
        # lets the next batch grow while this one computes.
        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, max_concurrent_batches=COMPOSED_BATCHES)
        async def _search_batch_pipelined(self, requests: list[tuple[list[str], int]]) -> list[list]:
            return await self._search(requests)

        async def _search(self, requests: list[tuple[list[str], int]]) -> list:
            self.batch_size.observe(len(requests))
            try:
                out = await self._search_together(requests)
            except Exception:
                # A request the checks let through still broke the batch: each alone, so only the
                # request that fails is answered with the error, never its batch-mates.
                log.warning("a batch of %d searches failed; answering each alone", len(requests), exc_info=True)
                out = [await self._search_alone(request) for request in requests]
            self.answered += len(requests)
            return out

        async def _search_alone(self, request: tuple[list[str], int]) -> list | _Failed:
            try:
                return (await self._search_together([request]))[0]
            except Exception as exc:
                log.exception("search of %d queries failed", len(request[0]))
                return _Failed(f"the search failed on the server ({type(exc).__name__})")

        async def _search_together(self, requests: list[tuple[list[str], int]]) -> list[list]:
            flat = [q for queries, _ in requests for q in queries]
            hits = await self.backend.search(flat, max(k for _, k in requests))
            out, start = [], 0
            for queries, k in requests:
                out.append([h[:k] for h in hits[start:start + len(queries)]])
                start += len(queries)
            self.queries_total.inc(len(flat))
            return out

        @app.post("/search")
        async def search(self, request: Request):
            if not self._authorized(request):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
            try:
                body = await read_body(request, self.config.max_body_bytes)
                queries, k, as_list = parse_search_request(
                    request.headers.get("content-type"), body, self.config.max_k,
                    self.config.max_query_chars, self.config.max_queries)
            except RequestError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            busy = self._busy()
            if busy:
                return busy
            self.in_flight += 1
            try:
                index = self.backend.directory
                results = await asyncio.wait_for(self.batched((queries, k)), self.config.request_timeout_s)
            except TimeoutError:
                return JSONResponse({"error": f"not answered within {self.config.request_timeout_s:g}s; retry later"},
                                    status_code=503, headers={"Retry-After": str(self._drain_seconds())})
            finally:
                self.in_flight -= 1
            if isinstance(results, _Failed):
                return JSONResponse({"error": results.message}, status_code=500)
            return {"results": results if as_list else results[0], "index": index}

        @app.get("/documents/{docid:path}")
        async def document(self, docid: str, request: Request):
            if not self._authorized(request):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
            busy = self._busy()
            if busy:
                return busy
            try:
                doc = await asyncio.wait_for(self.backend.document(docid), self.config.request_timeout_s)
            except TimeoutError:
                return JSONResponse({"error": f"not answered within {self.config.request_timeout_s:g}s; retry later"},
                                    status_code=503, headers={"Retry-After": str(self._drain_seconds())})
            if doc is None:
                return JSONResponse({"error": f"unknown document {docid!r}"}, status_code=404)
            return {"docid": doc["doc_id"], "title": doc["title"], "text": doc["text"]}

        @app.get("/healthz")
        async def health(self, request: Request):
            # Liveness for anyone (load balancers probe without credentials); what is served, for
            # token holders only: the index path tells an outsider about the machine.
            if not self._authorized(request):
                return {"status": "ok"}
            return {"status": "ok", **self.backend.describe(), "replica": self.replica}

    return Retriever


def build_app(args: dict):
    """Serve application builder (``serve run lrat_ray.serving.retriever:build_app index=DIR``, or from a
    Serve config file such as ``serve/config.yaml``)."""
    settings = ServeConfig(**args)
    if os.path.exists(settings.index):  # replicas may run elsewhere: a local index by absolute path
        settings = dataclasses.replace(settings, index=os.path.abspath(settings.index))
    index = {"index": settings.index}
    # Serve hands a replica more than it admits, so that the replica's own admission answers the
    # excess at once: a request the proxy must hold back waits in its slow retry loop (the
    # throughput collapse once seen at 1,024 sessions). Beyond that the proxy answers 503.
    queue = {"max_ongoing_requests": settings.max_in_flight * 2, "max_queued_requests": settings.max_in_flight * 2,
             "logging_config": {"enable_access_log": settings.access_log}}
    worker = {"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus,
              **({"resources": settings.resources} if settings.resources else {})}
    scaling: dict[str, Any] = {"num_replicas": settings.replicas}
    if settings.autoscale_min is not None or settings.autoscale_max is not None:
        scaling = {"autoscaling_config": {
            "min_replicas": settings.autoscale_min or 1,
            "max_replicas": settings.autoscale_max or max(settings.autoscale_min or 1, 1),
            # composed, the encoder sees batches, not requests
            "target_ongoing_requests": settings.target_ongoing_batches if settings.composed
            else settings.target_ongoing_requests}}
    # The token stays in this process: replicas get its digest (the config is visible on the dashboard).
    digest = token_digest(resolve_token(settings))
    init = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("index", "swap", "token", "token_file")}
    if not settings.composed:
        return _pinned(make_deployment().options(user_config=index, ray_actor_options=worker, **queue, **scaling),
                       init, digest).bind(init, token_sha256=digest)

    from lrat_ray.stages.index import read_manifest

    encoder_class, shard_class = make_part_deployments()
    encoder = _pinned(encoder_class.options(user_config=index, ray_actor_options=worker, **queue, **scaling),
                      init).bind()
    numbers = [entry["shard"] for entry in read_manifest(settings.index)["shards"]]
    shards = [_pinned(shard_class.options(name=f"IndexShard{n}", user_config=index,
                                          num_replicas=settings.shard_replicas,
                                          ray_actor_options={"num_cpus": settings.shard_cpus}, **queue), init, n
                      ).bind(n, settings.snippet_chars) for n in numbers]
    return _pinned(make_deployment().options(user_config=index, num_replicas=settings.ingress_replicas,
                                             ray_actor_options={"num_cpus": settings.ingress_cpus}, **queue),
                   init, numbers, digest).bind(init, encoder, shards, numbers, token_sha256=digest)


def placement_demand(settings: ServeConfig) -> list[tuple[str, int, dict]]:
    """(deployment, replicas, resources of one replica) of the application as deployed, at its
    smallest (autoscaling: the minimum replicas)."""
    from lrat_ray.infra.runtime import actor_resources

    autoscaling = settings.autoscale_min is not None or settings.autoscale_max is not None
    replicas = (settings.autoscale_min or 1) if autoscaling else settings.replicas
    worker = actor_resources(settings.replica_cpus, settings.replica_gpus, settings.resources)
    if not settings.composed:
        return [("Retriever", replicas, worker)]
    from lrat_ray.stages.index import read_manifest

    numbers = [entry["shard"] for entry in read_manifest(settings.index)["shards"]]
    return [("Retriever (ingress)", settings.ingress_replicas, actor_resources(settings.ingress_cpus)),
            ("QueryEncoder", replicas, worker),
            *((f"IndexShard{n}", settings.shard_replicas, actor_resources(settings.shard_cpus)) for n in numbers)]


def check_placement(settings: ServeConfig, cluster: dict) -> None:
    """Fail in one line when the cluster (``ray.cluster_resources()``) can never hold every
    replica: Ray Serve would otherwise wait for them forever, and every request with it."""
    from lrat_ray.infra.errors import LratError

    demand = placement_demand(settings)
    needed: dict[str, float] = {}
    for _, replicas, per in demand:
        for name, amount in per.items():
            needed[name] = needed.get(name, 0.0) + replicas * amount
    short = {name: amount for name, amount in needed.items() if cluster.get(name, 0.0) + 1e-9 < amount}
    if short:
        parts = ", ".join(f"{replicas} {name} x {per.get(resource, 0):g}" for name, replicas, per in demand
                          for resource in short if per.get(resource))
        lacking = "; ".join(f"{amount:g} {name} ({parts}) but the cluster has {cluster.get(name, 0):g}"
                            for name, amount in short.items())
        raise LratError(f"the retriever cannot be placed: it needs {lacking}; lower --replica-cpus, --shard-cpus, "
                        "--ingress-cpus or the replicas, serve an index with fewer shards, or add nodes")


def _pinned(deployment, *identity):
    """The deployment with a version made of everything but its index (``identity``: its init
    settings; the code of this package). ``serve.run`` from Python gives a deployment a fresh random
    version each time, so even a new user_config restarted every replica (a rolling restart: no
    failed request, but a cold start of every part under load); with the version pinned, a swap is
    Serve's in-place reconfigure. No public option sets it (``Deployment.options(version=)`` is
    kept for Serve's own use), hence ``_internal``."""
    code = b"".join(Path(module).read_bytes() for module in (__file__, _index_module_file()))
    version = hashlib.sha256(json.dumps([deployment.name, identity, hashlib.sha256(code).hexdigest()],
                                        sort_keys=True, default=str).encode()).hexdigest()[:16]
    return deployment.options(version=version, _internal=True)


def _index_module_file() -> str:
    from lrat_ray.registry import index

    return index.__file__


def deploy(settings: ServeConfig, blocking: bool = False) -> str:
    """Start (or update in place) the application on this Ray; returns its base URL."""
    import ray
    from ray import serve

    from lrat_ray.infra.runtime import init_ray, quiet_ray_loggers
    from lrat_ray.stages.index import read_manifest

    read_manifest(settings.index)  # not an index: one line now, not a replica's traceback later
    init_ray(settings.address)
    check_placement(settings, ray.cluster_resources())
    serve.start(http_options={"host": settings.host, "port": settings.port}, proxy_location=settings.proxy_location)
    quiet_ray_loggers()  # Serve set its own on start
    url = f"http://{settings.host}:{settings.port}"
    # serve.run waits without end for replicas that never start (not placeable now, failing
    # constructors): deploy without waiting, then wait here with a deadline.
    serve._run(build_app(dataclasses.asdict(settings)), _blocking=False, name=APP_NAME, route_prefix="/")
    _wait_until_running(settings.start_timeout_s)
    _wait_until_healthy(url)
    if blocking:
        wait_for_interrupt()
    return url


def _wait_until_running(timeout_s: float) -> None:
    """Until the application runs; on failure or timeout one error naming the deployments that are
    not running and why (the application is deleted: nothing half-started keeps resources)."""
    from ray import serve

    from lrat_ray.infra.errors import LratError

    deadline = time.time() + timeout_s
    while True:
        app = serve.status().applications.get(APP_NAME)
        state = str(getattr(app, "status", "")).rsplit(".", 1)[-1]
        if state == "RUNNING":
            return
        if state == "DEPLOY_FAILED" or time.time() > deadline:
            waiting = {name: f"{str(d.status).rsplit('.', 1)[-1]}: {_first_line(d.message)}"
                       for name, d in (app.deployments.items() if app else []) if str(d.status).rsplit(".", 1)[-1]
                       != "HEALTHY"}
            import ray

            free = {k: round(v, 2) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            serve.delete(APP_NAME)
            why = "failed to deploy" if state == "DEPLOY_FAILED" else f"is not running after {timeout_s:g}s"
            raise LratError(f"the retriever {why}: " + "; ".join(f"{n} {m}" for n, m in waiting.items())
                            + f" (free now: {free})")
        time.sleep(0.5)


def _first_line(message: str | None) -> str:
    """The line of a Serve status message that names the cause (the rest is a traceback)."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    causes = [line for line in lines if "Error" in line.split(":", 1)[0] or line.startswith("lrat_ray.infra.errors")]
    return (causes[-1] if causes else lines[0] if lines else "no message")[:300]


def wait_for_interrupt() -> None:
    """Keep this process (and a local Ray it started) alive until Ctrl-C."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _wait_until_healthy(url: str, timeout_s: float = 60.0) -> None:
    """Fail fast when the app does not answer where it should (e.g. Serve already ran on another port)."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    from lrat_ray.infra.errors import LratError

    raise LratError(f"the retriever does not answer at {url}/healthz; if Ray Serve was already running "
                    "with other HTTP options, shut it down (serve shutdown) or use its port")


def swap_running(settings: ServeConfig) -> str:
    """``lrat serve --swap``: point the retriever running on the cluster at ``settings.index``."""
    from ray import serve

    from lrat_ray.infra.errors import LratError
    from lrat_ray.infra.runtime import init_ray

    init_ray(settings.address)
    if APP_NAME not in serve.status().applications:
        raise LratError(f"no lrat retriever ({APP_NAME}) runs on this cluster: start one with lrat serve first")
    return deploy(settings)


def swap_index(settings: ServeConfig, index_dir: str) -> ServeConfig:
    """Point the running application at another index without dropping requests."""
    updated = dataclasses.replace(settings, index=index_dir)
    deploy(updated)
    return updated
