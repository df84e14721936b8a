"""Ray at the edges: joining a cluster (or starting a local Ray) and sizing a stage's workers from
the resources each asks for and the resources the cluster has."""

from __future__ import annotations

import contextlib
import logging
import os

from lrat_ray.infra.errors import LratError

log = logging.getLogger(__name__)


def quiet_ray_console(quiet: bool = True) -> None:
    """Keep Ray's own output (worker logs streamed to the driver, its INFO lines) in Ray's log files
    (``/tmp/ray/session_latest/logs``), so the console shows the stages; ``lrat -v`` shows it all.
    Errors still reach the console: a failed task raises in the driver."""
    global _LOG_TO_DRIVER
    _LOG_TO_DRIVER = not quiet
    if quiet:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # each stage reports its counts in one line
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the C++ core's warnings, printed as errors
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a "Loading weights" bar per model load
    quiet_ray_loggers()


def _ray_level() -> int:
    return logging.INFO if _LOG_TO_DRIVER else logging.ERROR  # warnings too: Ray notes its defaults at length


def quiet_ray_loggers() -> None:
    """Ray Data and Serve configure their loggers when first used: call again after that."""
    level = _ray_level()
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "ray.llm", "vllm"):
        logging.getLogger(name).setLevel(level)
    if not _LOG_TO_DRIVER:
        # A failed Ray Data task logs two long ERROR lines before it raises; the command then
        # prints the cause in one line itself (cli.main), with the full traceback in a file.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)


_LOG_TO_DRIVER = True


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``); without one, start Ray locally.

    The Hub-offline switch travels to the workers so that tokenizers and models load from disk
    there too.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env_vars = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ}
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if not address:
        runtime_env = {
            **(runtime_env or {}),
            "worker_process_setup_hook": "lrat_ray.infra.runtime.serve_grpc_on_loopback",
        }
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=_LOG_TO_DRIVER, logging_level=_ray_level())
    else:
        log.info("starting a local Ray (on 127.0.0.1)")
        # "local": a new Ray of our own, never one that `ray start` left on this machine.
        with _loopback_only():
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                dashboard_host="127.0.0.1",
                runtime_env=runtime_env,
                logging_level=_ray_level(),
                log_to_driver=_LOG_TO_DRIVER,
            )
    import ray.data  # noqa: F401  (configures its loggers on import)

    quiet_ray_loggers()


@contextlib.contextmanager
def _loopback_only():
    """A local Ray whose servers (GCS, raylets, workers, agents, Serve's proxies) listen on
    127.0.0.1 only. Ray maps a node IP of 127.0.0.1 to the machine's reachable address unless
    clusters are switched off, which it does on macOS and Windows (a single machine, on loopback;
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``). That switch is read when ``ray`` is imported and by
    ``ray start``, so it is flipped in this process for the start only, not in the environment
    that child processes (a ``ray start`` of a real cluster) inherit."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def serve_grpc_on_loopback() -> None:
    """Worker setup of a local Ray: Ray Serve replicas open their inter-deployment gRPC server on
    ``[::]:0`` whatever the node's address (ray/serve/_private/replica.py, no option); on a Ray
    with one node on 127.0.0.1 it binds there too. Ray's own helper still does the binding (TLS
    included); only the address changes. The module is patched when a worker imports it (a Serve
    replica), so other workers do not pay for importing Serve."""
    import importlib.abc
    import importlib.util
    import sys

    target = "ray.serve._private.replica"

    class PatchOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target_module=None):
            if name != target:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                _bind_on_loopback(module)

            spec.loader.exec_module = exec_module
            return spec

    if target in sys.modules:
        _bind_on_loopback(sys.modules[target])
    else:
        sys.meta_path.insert(0, PatchOnImport())


def _bind_on_loopback(replica) -> None:
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:
        return

    def on_loopback(server, address: str):
        return bind(server, "127.0.0.1:" + address.rsplit(":", 1)[1] if address.startswith("[::]:") else address)

    replica.add_port_to_grpc_server = on_loopback


def actor_resources(num_cpus: float, num_gpus: float = 0.0, custom: dict | None = None) -> dict:
    """What one actor or worker of a stage asks Ray for: CPUs, GPUs and custom resources.

    Custom resources pin a stage to a node group: nodes advertise e.g. ``cpu_stage: <their CPUs>``
    (see ``cluster/``) and a stage configured with ``resources: {cpu_stage: 1}`` lands only there.
    """
    wanted = {"CPU": float(num_cpus), "GPU": float(num_gpus)}
    for name, amount in (custom or {}).items():
        if name in ("CPU", "GPU"):
            raise LratError(f"resources: give CPUs and GPUs with their own options, not as {name!r}")
        wanted[name] = float(amount)
    return {name: amount for name, amount in wanted.items() if amount > 0}


def fit_workers(requested: int | None, per_worker: dict, stage: str) -> int:
    """``requested``, or when it is unset as many workers as the cluster's resources hold.

    Fails at once, naming the resource, when one worker could never be placed (Ray would otherwise
    queue the work forever).
    """
    import ray

    if requested is not None and requested < 1:
        raise LratError(f"{stage}: workers must be at least 1")
    check_feasible(stage, per_worker, requested or 1)
    if requested is not None:
        return requested
    total = ray.cluster_resources()
    fits = [int(total[name] // amount) for name, amount in per_worker.items() if amount > 0]
    return max(1, min(fits)) if fits else 1


def check_feasible(stage: str, per_worker: dict, workers: int) -> None:
    """Fail at once, naming the resource, when ``workers`` workers of ``per_worker`` can never be
    placed on this cluster (Ray would queue them forever); warn when they do not fit right now."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    for name, amount in per_worker.items():
        needed = amount * workers
        if total.get(name, 0) < needed:
            raise LratError(
                f"{stage} needs {needed:g} {name} ({workers} workers x {amount:g}) but the cluster has "
                f"{total.get(name, 0):g} (resources: {sorted(total)}); lower the workers or what each "
                "reserves"
            )
        if free.get(name, 0) < needed:
            log.warning(
                "%s: only %g of the %g %s it needs are free now; waiting for them",
                stage,
                free.get(name, 0),
                needed,
                name,
            )


def remote_args(per_worker: dict) -> dict:
    """``per_worker`` as keyword arguments of ``ray.remote`` / ``map_batches``."""
    args = {"num_cpus": per_worker.get("CPU", 0), "num_gpus": per_worker.get("GPU", 0)}
    custom = {k: v for k, v in per_worker.items() if k not in ("CPU", "GPU")}
    if custom:
        args["resources"] = custom
    return args


def gpus_or_cpu(requested: int | None) -> int:
    """GPUs per LLM engine: ``requested``, or when unset 1 on a cluster with GPUs and 0 (an engine
    on one CPU) on one without."""
    import ray

    if requested is not None:
        return requested
    return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
