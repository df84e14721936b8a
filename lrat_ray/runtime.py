"""Connecting to Ray: a cluster when one is named, else a local Ray started by the program itself."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


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
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        log.info("starting a local Ray")
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 logging_level=logging.WARNING)
