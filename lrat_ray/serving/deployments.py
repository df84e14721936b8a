"""The Ray Serve deployments of the retriever: the ingress (HTTP routes, auth, admission,
batching), the composed layout's ``QueryEncoder`` and ``IndexShard<N>``, the application builder
(``serve run lrat_ray.serving.deployments:build_app index=DIR`` or ``serve/config.yaml``), the
placement check and the version pinning that makes an index swap an in-place reconfigure."""

# No "from __future__ import annotations": FastAPI reads the route handlers' annotations at run
# time (``request: Request``, imported inside make_deployment), and strings there would not resolve.
import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from lrat_ray.serving.admission import Admission
from lrat_ray.serving.config import ServeConfig
from lrat_ray.serving.requests import (
    RequestError,
    authorized,
    parse_search_request,
    read_body,
    resolve_token,
    token_digest,
)
from lrat_ray.serving.search import (
    ComposedSearch,
    LocalSearch,
    SearchBackend,
    _Failed,
    _results,
    _Versions,
    load_query_encoder,
)

log = logging.getLogger(__name__)
COMPOSED_BATCHES = 4  # search batches one composed ingress replica keeps in flight


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
        def __init__(
            self,
            config: dict,
            encoder=None,
            shards: list | None = None,
            shard_numbers: list | None = None,
            token_sha256: str | None = None,
        ):
            # The index is not an init argument but the user_config: changing it must not restart us.
            self.config = ServeConfig(index="", **config)
            self.token_sha256 = token_sha256
            self.replica = os.urandom(4).hex()  # in /healthz: shows that a swap reconfigured, not restarted
            self.backend: SearchBackend = (
                LocalSearch(self.config.snippet_chars)
                if encoder is None
                else ComposedSearch(encoder, dict(zip(shard_numbers, shards)))
            )
            self.queries_total = metrics.Counter("lrat_search_queries", "queries answered by /search")
            self.shed_total = metrics.Counter("lrat_requests_shed", "requests answered 503 (replica full)")
            self.admission = Admission(self.config.max_in_flight, self.config.retry_after_s)
            self.batch_size = metrics.Histogram(
                "lrat_search_batch_requests", "requests per encoder batch", boundaries=[1, 2, 4, 8, 16, 32, 64]
            )
            self.batched = self._search_batch if encoder is None else self._search_batch_pipelined
            self.batched.set_max_batch_size(self.config.max_batch_size)
            self.batched.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

        async def reconfigure(self, user_config: dict) -> None:
            started = time.time()
            await self.backend.load(user_config["index"])
            log.info("serving %s, loaded in %.1fs", self.backend.describe(), time.time() - started)

        def _busy(self) -> JSONResponse | None:
            """A full replica answers 503 + Retry-After at once (:mod:`lrat_ray.serving.admission`)."""
            if not self.admission.full:
                return None
            self.shed_total.inc()
            return self._retry_later("retriever busy, retry later")

        def _retry_later(self, message: str) -> JSONResponse:
            return JSONResponse(
                {"error": message}, status_code=503, headers={"Retry-After": str(self.admission.retry_after())}
            )

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
            self.admission.record_answered(len(requests))
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
                out.append([h[:k] for h in hits[start : start + len(queries)]])
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
                    request.headers.get("content-type"),
                    body,
                    self.config.max_k,
                    self.config.max_query_chars,
                    self.config.max_queries,
                )
            except RequestError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            busy = self._busy()
            if busy:
                return busy
            with self.admission.admitted():
                try:
                    index = self.backend.directory
                    results = await asyncio.wait_for(self.batched((queries, k)), self.config.request_timeout_s)
                except TimeoutError:
                    return self._retry_later(f"not answered within {self.config.request_timeout_s:g}s; retry later")
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
                return self._retry_later(f"not answered within {self.config.request_timeout_s:g}s; retry later")
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
    queue = {
        "max_ongoing_requests": settings.max_in_flight * 2,
        "max_queued_requests": settings.max_in_flight * 2,
        "logging_config": {"enable_access_log": settings.access_log},
    }
    worker = {
        "num_cpus": settings.replica_cpus,
        "num_gpus": settings.replica_gpus,
        **({"resources": settings.resources} if settings.resources else {}),
    }
    scaling: dict[str, Any] = {"num_replicas": settings.replicas}
    if settings.autoscale_min is not None or settings.autoscale_max is not None:
        scaling = {
            "autoscaling_config": {
                "min_replicas": settings.autoscale_min or 1,
                "max_replicas": settings.autoscale_max or max(settings.autoscale_min or 1, 1),
                # composed, the encoder sees batches, not requests
                "target_ongoing_requests": settings.target_ongoing_batches
                if settings.composed
                else settings.target_ongoing_requests,
            }
        }
    # The token stays in this process: replicas get its digest (the config is visible on the dashboard).
    digest = token_digest(resolve_token(settings))
    init = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("index", "swap", "token", "token_file")}
    if not settings.composed:
        return _pinned(
            make_deployment().options(user_config=index, ray_actor_options=worker, **queue, **scaling), init, digest
        ).bind(init, token_sha256=digest)

    from lrat_ray.stages.index import read_manifest

    encoder_class, shard_class = make_part_deployments()
    encoder = _pinned(
        encoder_class.options(user_config=index, ray_actor_options=worker, **queue, **scaling), init
    ).bind()
    numbers = [entry["shard"] for entry in read_manifest(settings.index)["shards"]]
    shards = [
        _pinned(
            shard_class.options(
                name=f"IndexShard{n}",
                user_config=index,
                num_replicas=settings.shard_replicas,
                ray_actor_options={"num_cpus": settings.shard_cpus},
                **queue,
            ),
            init,
            n,
        ).bind(n, settings.snippet_chars)
        for n in numbers
    ]
    return _pinned(
        make_deployment().options(
            user_config=index,
            num_replicas=settings.ingress_replicas,
            ray_actor_options={"num_cpus": settings.ingress_cpus},
            **queue,
        ),
        init,
        numbers,
        digest,
    ).bind(init, encoder, shards, numbers, token_sha256=digest)


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
    return [
        ("Retriever (ingress)", settings.ingress_replicas, actor_resources(settings.ingress_cpus)),
        ("QueryEncoder", replicas, worker),
        *((f"IndexShard{n}", settings.shard_replicas, actor_resources(settings.shard_cpus)) for n in numbers),
    ]


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
        parts = ", ".join(
            f"{replicas} {name} x {per.get(resource, 0):g}"
            for name, replicas, per in demand
            for resource in short
            if per.get(resource)
        )
        lacking = "; ".join(
            f"{amount:g} {name} ({parts}) but the cluster has {cluster.get(name, 0):g}"
            for name, amount in short.items()
        )
        raise LratError(
            f"the retriever cannot be placed: it needs {lacking}; lower --replica-cpus, --shard-cpus, "
            "--ingress-cpus or the replicas, serve an index with fewer shards, or add nodes"
        )


def _pinned(deployment, *identity):
    """The deployment with a version made of everything but its index (``identity``: its init
    settings; the code of this package). ``serve.run`` from Python gives a deployment a fresh random
    version each time, so even a new user_config restarted every replica (a rolling restart: no
    failed request, but a cold start of every part under load); with the version pinned, a swap is
    Serve's in-place reconfigure. No public option sets it (``Deployment.options(version=)`` is
    kept for Serve's own use), hence ``_internal``."""
    code = b"".join(Path(module).read_bytes() for module in _code_files())
    version = hashlib.sha256(
        json.dumps([deployment.name, identity, hashlib.sha256(code).hexdigest()], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    return deployment.options(version=version, _internal=True)


def _code_files() -> list[str]:
    """The modules whose code a replica runs: a change to any of them is a new version."""
    from lrat_ray.serving import admission, requests, search
    from lrat_ray.stages.index import faiss_index, retrieval

    modules = (admission, requests, search, retrieval, faiss_index)
    return [__file__, *(module.__file__ for module in modules)]
