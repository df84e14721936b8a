"""An OpenAI-compatible LLM on Ray Serve (``ray.serve.llm``), next to the retriever.

The agents' LLM lives in the same Ray cluster as the retriever, behind the same HTTP proxy:
``http://HOST:PORT/llm/v1/chat/completions`` beside ``/search``. It is vLLM under Ray Serve LLM
(``LLMConfig`` + ``build_openai_app``), so tool calls (``--tool-call-parser``), JSON-schema
``response_format`` and streaming work as on any vLLM server, and replicas scale like any Serve
deployment.

On a machine without GPUs the engine gets one CPU bundle (``placement_group_config``); without it
Ray Serve LLM asks for a GPU and waits forever. The replica and the OpenAI ingress reserve (almost)
no CPU of their own, so on a small machine they fit beside the retriever and the stages; the
engine's bundle is what the model really uses. With ``gpus_per_replica`` the engine gets GPU
bundles instead (tensor parallel over them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lrat_ray.infra.config import checked, option
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import DTYPES, engine_dtype

APP_NAME = "lrat-llm"
ROUTE_PREFIX = "/llm"


@dataclass
@checked
class LLMServeConfig:
    """The served chat model (``agent_llm:`` in flywheel YAML)."""

    model: str = option("tiny", help="Hugging Face name or path; 'tiny' = the prepared SmolLM2-135M-Instruct")
    name: str = option("tiny", help="model id clients ask for")
    max_model_len: int = option(4096, help="context length of the engine")
    gpus_per_replica: int | None = option(
        None, help="GPUs per engine replica; 0: a CPU engine; default: 1 if the cluster has GPUs, else 0", runtime=True
    )
    replicas: int = option(1, help="engine replicas", runtime=True)
    kv_cache_bytes: int = option(512 << 20, help="CPU engines: KV cache size in bytes", runtime=True)
    dtype: str = option(
        "auto",
        choices=DTYPES,
        help="the model's compute dtype; auto: bfloat16 on GPUs and on CPUs with AVX512-BF16/AMX, "
        "float32 on other CPUs, where bf16 is emulated and ~3x slower (lrat_ray.infra.hardware)",
    )
    tool_call_parser: str = option("hermes", help="vLLM tool-call parser matching the model's chat template")
    ready_timeout_s: float = option(600.0, help="fail if the engine is not answering after this long", runtime=True)


def llm_config(config: LLMServeConfig):
    """The ``ray.serve.llm.LLMConfig`` for ``config``."""
    from ray.serve.llm import LLMConfig

    from lrat_ray.infra.runtime import gpus_or_cpu
    from lrat_ray.models.tiny_llm import resolve_llm

    gpus = gpus_or_cpu(config.gpus_per_replica)
    engine_kwargs = {
        "max_model_len": config.max_model_len,
        "enable_auto_tool_choice": True,
        "tool_call_parser": config.tool_call_parser,
    }
    if gpus:
        engine_kwargs["tensor_parallel_size"] = gpus
        bundles = [{"GPU": 1, "CPU": 1}] * gpus
    else:
        engine_kwargs.update(enforce_eager=True, kv_cache_memory_bytes=config.kv_cache_bytes)
        bundles = [{"CPU": 1}]
    engine_kwargs["dtype"] = engine_dtype(config.dtype, gpus)
    return LLMConfig(
        model_loading_config={"model_id": config.name, "model_source": resolve_llm(config.model)},
        engine_kwargs=engine_kwargs,
        placement_group_config={"bundles": bundles},
        deployment_config={"num_replicas": config.replicas, "ray_actor_options": {"num_cpus": 0}},
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
    )


def deploy_llm(config: LLMServeConfig, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Run the LLM app on the running Serve instance (started by the retriever's deploy or here);
    returns the OpenAI base URL once the model answers."""
    from ray import serve
    from ray.serve.llm import LLMServingArgs, build_openai_app

    serve.start(http_options={"host": host, "port": port})
    app = build_openai_app(
        LLMServingArgs(
            llm_configs=[llm_config(config)], ingress_deployment_config={"ray_actor_options": {"num_cpus": 0.1}}
        )
    )
    serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX, blocking=False)
    base_url = f"http://{host}:{port}{ROUTE_PREFIX}/v1"
    _wait_until_ready(base_url, config.name, config.ready_timeout_s)
    return base_url


def _wait_until_ready(base_url: str, model: str, timeout_s: float) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            response = httpx.get(f"{base_url}/models", timeout=10)
            if response.status_code == 200 and any(m["id"] == model for m in response.json().get("data", [])):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(2)
    raise LratError(
        f"the LLM {model!r} did not answer at {base_url} within {timeout_s:.0f}s "
        "(see the Ray Serve logs: a GPU request on a CPU-only cluster never schedules)"
    )


def undeploy_llm() -> None:
    from ray import serve

    serve.delete(APP_NAME)
