"""``ServeConfig``: every option of ``lrat serve`` and of the Serve application builder."""

from __future__ import annotations

from dataclasses import dataclass

from lrat_ray.infra.config import RayCluster, checked, option


@dataclass(kw_only=True)
@checked
class ServeConfig(RayCluster):
    """Options of ``lrat serve`` (the deployment's settings; ``index`` is its user_config)."""

    index: str = option(help="index directory built by `lrat index`", path=True)
    host: str = option("127.0.0.1", help="address to bind; 127.0.0.1 keeps the server local")
    port: int = option(8000, help="HTTP port")
    token: str | None = option(
        None,
        help="if set, requests need 'Authorization: Bearer <token>' (an argument shows "
        "in the process list: prefer --token-file or the token_env variable)",
    )
    token_file: str | None = option(None, help="file holding the bearer token (its first line)")
    token_env: str = option(
        "LRAT_SERVE_TOKEN",
        help="environment variable holding the bearer token, used when neither --token nor --token-file is given",
    )
    replicas: int = option(1, help="replicas (ignored when autoscaling)")
    autoscale_min: int | None = option(None, help="autoscaling: minimum replicas (enables autoscaling)")
    autoscale_max: int | None = option(None, help="autoscaling: maximum replicas")
    target_ongoing_requests: float = option(
        8.0, help="autoscaling (whole layout): target in-flight requests per replica"
    )
    replica_cpus: float = option(1.0, help="CPUs reserved per replica")
    replica_gpus: float = option(0.0, help="GPUs per replica (encoder and FAISS on GPU)")
    resources: dict = option({}, help="custom resources per replica, e.g. {\"cpu_stage\": 1}")
    max_batch_size: int = option(32, help="@serve.batch: most requests encoded together")
    batch_wait_timeout_s: float = option(0.005, help="@serve.batch: longest wait to fill a batch")
    max_k: int = option(100, help="largest k a request may ask for")
    max_query_chars: int = option(2048, help="longest query accepted, in characters")
    max_queries: int = option(64, help="most queries in one request")
    max_body_bytes: int = option(1 << 20, minimum=1, help="largest request body accepted, in bytes (413 beyond)")
    request_timeout_s: float = option(
        30.0,
        minimum=0.1,
        help="a search not answered within this long gets 503 and "
        "Retry-After (a part that is not up, a stuck batch) "
        "instead of an open-ended wait",
    )
    start_timeout_s: float = option(
        120.0,
        minimum=1,
        help="fail when the application is not running after this long "
        "(replicas that cannot be placed or do not start)",
    )
    snippet_chars: int = option(300, help="characters of document text returned as a snippet")
    max_in_flight: int = option(
        1024,
        minimum=1,
        help="queue depth: searches one replica holds at once (encoding, "
        "searching or waiting for a batch); beyond it a request is "
        "answered at once with 503 and Retry-After instead of queueing "
        "until it times out (the project's agent client waits and "
        "retries)",
    )
    retry_after_s: int = option(
        1,
        minimum=1,
        help="least Retry-After of a turned-away request, in seconds; a "
        "longer queue gives the time it takes to drain at the recent rate",
    )
    composed: bool = option(
        False,
        help="serve as parts: an ingress, a query-encoder deployment (replicas, "
        "autoscaling, replica_cpus and replica_gpus apply to it) and one deployment "
        "per index shard, each replica holding one shard; for corpora too large for "
        "one process",
    )
    shard_replicas: int = option(1, minimum=1, help="composed: replicas of each index-shard deployment")
    shard_cpus: float = option(0.5, help="composed: CPUs reserved per index-shard replica")
    ingress_replicas: int = option(1, minimum=1, help="composed: replicas of the HTTP ingress")
    target_ongoing_batches: float = option(
        1.0,
        help="composed, autoscaling: target encode batches in flight per "
        "encoder replica (each ingress keeps up to 4 in flight)",
    )
    ingress_cpus: float = option(
        0.25,
        help="composed: CPUs reserved per ingress replica (it parses, admits and merges; the work is in the parts)",
    )
    access_log: bool = option(False, help="log every request (Ray Serve access log)")
    swap: bool = option(
        False,
        help="hot swap: point the retriever already running on the cluster (--address, "
        "else RAY_ADDRESS) at --index without dropping a request, then exit; give the "
        "options (or --config) it runs with",
    )
    proxy_location: str = option(
        "EveryNode",
        choices=("EveryNode", "HeadOnly"),
        help="where Ray Serve runs HTTP proxies: on every node (clients on any node "
        "reach the app at HOST:PORT of their own node) or on the head only",
    )
