"""``lrat serve``: the retriever as a Ray Serve application, the two tools a deep-research agent uses.

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

Modules: :mod:`.config` (``ServeConfig``), :mod:`.requests` (request checks and the token),
:mod:`.admission` (a replica's admission control), :mod:`.search` (the two layouts' search),
:mod:`.deployments` (the Serve deployments and the application builder); this module deploys,
waits and swaps.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from lrat_ray.serving.config import ServeConfig
from lrat_ray.serving.deployments import build_app, check_placement, placement_demand

log = logging.getLogger(__name__)
APP_NAME = "lrat-retriever"

__all__ = [
    "ServeConfig",
    "build_app",
    "check_placement",
    "deploy",
    "placement_demand",
    "swap_index",
    "swap_running",
    "wait_for_interrupt",
]


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
            waiting = {
                name: f"{str(d.status).rsplit('.', 1)[-1]}: {_first_line(d.message)}"
                for name, d in (app.deployments.items() if app else [])
                if str(d.status).rsplit(".", 1)[-1] != "HEALTHY"
            }
            import ray

            free = {k: round(v, 2) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            serve.delete(APP_NAME)
            why = "failed to deploy" if state == "DEPLOY_FAILED" else f"is not running after {timeout_s:g}s"
            raise LratError(
                f"the retriever {why}: " + "; ".join(f"{n} {m}" for n, m in waiting.items()) + f" (free now: {free})"
            )
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

    raise LratError(
        f"the retriever does not answer at {url}/healthz; if Ray Serve was already running "
        "with other HTTP options, shut it down (serve shutdown) or use its port"
    )


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
