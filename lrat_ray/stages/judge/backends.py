"""The judges, registered by name: what each needs and how it labels.

A backend either labels rows itself (``none``, ``keyword``: no model, no cache) or answers
prompts with a model over a Ray Data dataset (rows with ``judge_prompt`` in, the same rows with
``judge_answer``/``judge_error`` out), which the pipeline then parses, caches and counts. Adding
a judge is one :func:`register` call; nothing else branches on the backend's name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from lrat_ray.infra.hardware import default_device, describe, engine_dtype, torch_dtype
from lrat_ray.stages.judge.prompts import LABELS, keyword_label

if TYPE_CHECKING:
    from lrat_ray.stages.judge.config import JudgeConfig

# Every step around the model is light (reading, prompts, parsing, writing): a full CPU each would
# leave a 2-CPU node with an engine on one core unable to schedule them, and the job would wait forever.
LIGHT_CPUS = 0.1


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


class OpenAIAnswers:
    """Ray Data UDF: one batch of prompts to an OpenAI-compatible endpoint, ``concurrency`` at a time."""

    def __init__(self, config: dict):
        from lrat_ray.infra.chat_client import ChatClient, ChatEndpoint
        from lrat_ray.stages.judge.config import JudgeConfig

        self.config = JudgeConfig(**config)
        c = self.config
        self.client = ChatClient(ChatEndpoint(c.endpoint, c.model, c.api_key_env, c.timeout_s, c.retries))
        self.params = {"temperature": c.temperature, "max_tokens": c.max_new_tokens}
        if c.guided:
            self.params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "verdict",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"label": {"type": "string", "enum": list(LABELS)}},
                        "required": ["label"],
                        "additionalProperties": False,
                    },
                },
            }

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = asyncio.run(self._answers(batch.column("judge_prompt").to_pylist()))
        answers = [r if isinstance(r, str) else None for r in results]
        errors = [None if isinstance(r, str) else _error_text(r) for r in results]
        return batch.append_column("judge_answer", pa.array(answers, pa.string())).append_column(
            "judge_error", pa.array(errors, pa.string())
        )

    async def _answers(self, prompts: list[str]) -> list:
        semaphore = asyncio.Semaphore(self.config.concurrency)
        async with self.client.async_session() as session:

            async def one(prompt):
                async with semaphore:
                    message = await self.client.chat(_messages(prompt), session, **self.params)
                    return message.get("content") or ""

            return await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)


class TransformersAnswers:
    """Ray Data actor: a local causal LM with greedy decoding (chat template when it has one)."""

    def __init__(self, model: str, max_new_tokens: int, dtype: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.device = default_device()
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype(dtype, self.device)).eval()
        self.model.to(self.device)
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        answers, errors = [], []
        for prompt in batch.column("judge_prompt").to_pylist():
            try:
                answers.append(self._generate(prompt)), errors.append(None)
            except Exception as exc:  # one bad row is counted as failed, never the whole job
                answers.append(None), errors.append(_error_text(exc))
        return batch.append_column("judge_answer", pa.array(answers, pa.string())).append_column(
            "judge_error", pa.array(errors, pa.string())
        )

    def _generate(self, prompt: str) -> str:
        import torch

        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(_messages(prompt), tokenize=False, add_generation_prompt=True)
        else:
            text = prompt + "\nAnswer:"
        inputs = self.tokenizer(text, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def vllm_processor_config(config: JudgeConfig, model_path: str):
    """The ``ray.data.llm`` engine settings for ``config`` (GPU bundles, or one CPU bundle)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    from lrat_ray.infra.runtime import gpus_or_cpu

    gpus = gpus_or_cpu(config.gpus_per_replica)
    dtype = engine_dtype(config.dtype, gpus)
    engine_kwargs = {"max_model_len": config.max_model_len, "dtype": dtype}
    if gpus:
        engine_kwargs["tensor_parallel_size"] = gpus
        bundles = [{"GPU": 1, "CPU": 1} for _ in range(gpus)]
    else:
        # vLLM on CPU: no graph capture, a small KV cache (it would claim most of the RAM), sized
        # for one sequence of max_model_len: fp32 entries take twice bf16's (8,192 tokens of the
        # tiny model: 0.35 GiB in fp32).
        engine_kwargs.update(
            enforce_eager=True,
            max_num_seqs=16,
            kv_cache_memory_bytes=(512 << 20) if dtype == "float32" else (256 << 20),
        )
        bundles = [{"CPU": 1}]
    bundles[0] = {**bundles[0], **config.resources}
    engine_kwargs.update(config.engine_kwargs)
    light = {"num_cpus": LIGHT_CPUS}
    return vLLMEngineProcessorConfig(
        model_source=model_path,
        batch_size=config.batch_size,
        concurrency=config.concurrency,
        accelerator_type=config.accelerator_type if gpus else None,
        placement_group_config={"bundles": bundles},
        engine_kwargs=engine_kwargs,
        should_continue_on_error=True,
        chat_template_stage={"enabled": True, **light},
        tokenize_stage={"enabled": True, **light},
        detokenize_stage={"enabled": True, **light},
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}},
    )


def _vllm_request(row: dict, sampling: dict) -> dict:
    return {**row, "messages": _messages(row["judge_prompt"]), "sampling_params": sampling}


def _vllm_result(row: dict) -> dict:
    error = row.pop("__inference_error__", "") or None
    answer = None if error else row.get("generated_text")
    out = {k: v for k, v in row.items() if k not in _VLLM_COLUMNS}
    return {**out, "judge_answer": answer, "judge_error": error}


_VLLM_COLUMNS = {
    "messages",
    "sampling_params",
    "generated_text",
    "generated_tokens",
    "prompt",
    "prompt_token_ids",
    "num_generated_tokens",
    "num_input_tokens",
    "embeddings",
    "request_id",
    "params",
    "metrics",
    "time_taken_llm",
    "generated_logprobs",
    "prompt_logprobs",
    "batch_uuid",
}


def _answer_openai(ds, config: JudgeConfig):
    import ray

    return ds.map_batches(
        OpenAIAnswers,
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=LIGHT_CPUS,
        fn_constructor_kwargs={"config": dataclasses.asdict(config)},
    )


def _answer_transformers(ds, config: JudgeConfig):
    import ray

    from lrat_ray.infra.runtime import actor_resources, remote_args
    from lrat_ray.models.tiny_llm import resolve_llm

    per_replica = actor_resources(1, 0, config.resources)
    return ds.map_batches(
        TransformersAnswers,
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        **remote_args(per_replica),
        fn_constructor_kwargs={
            "model": resolve_llm(config.model),
            "max_new_tokens": config.max_new_tokens,
            "dtype": config.dtype,
        },
    )


def _answer_vllm(ds, config: JudgeConfig):
    from ray.data.llm import build_processor

    from lrat_ray.models.tiny_llm import resolve_llm

    sampling = {"temperature": config.temperature, "max_tokens": config.max_new_tokens}
    if config.guided:
        sampling["structured_outputs"] = {"choice": list(LABELS)}
    processor = build_processor(
        vllm_processor_config(config, resolve_llm(config.model)),
        preprocess=lambda row: _vllm_request(row, sampling),
        postprocess=_vllm_result,
        preprocess_map_kwargs={"num_cpus": LIGHT_CPUS},
        postprocess_map_kwargs={"num_cpus": LIGHT_CPUS},
    )
    return processor(ds)


def _vllm_precision(config: JudgeConfig) -> dict:
    from lrat_ray.infra.runtime import gpus_or_cpu

    return {"dtype": engine_dtype(config.dtype, gpus_or_cpu(config.gpus_per_replica)), "hardware": describe()}


def _transformers_precision(config: JudgeConfig) -> dict:
    return {"dtype": str(torch_dtype(config.dtype, default_device())).removeprefix("torch."), "hardware": describe()}


@dataclass(frozen=True)
class Backend:
    """A judge. ``label``: labels each row's reasoning itself (None: the row is not judged, and
    keeps its positive); ``answer``: runs a model over a dataset of prompts. Exactly one is set;
    a model backend needs ``--model``, caches its answers and reports its precision."""

    name: str
    label: Callable[[str | None], bool | None] | None = None
    answer: Callable[[object, JudgeConfig], object] | None = None
    precision: Callable[[JudgeConfig], dict] = lambda config: {}

    @property
    def needs_model(self) -> bool:
        return self.answer is not None


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if (backend.label is None) == (backend.answer is None):
        raise ValueError(f"judge backend {backend.name!r}: give exactly one of label and answer")
    BACKENDS[backend.name] = backend
    return backend


register(Backend("none", label=lambda reasoning: None))  # keep every browse: the paper's naive variant
register(Backend("keyword", label=keyword_label))
register(Backend("openai", answer=_answer_openai))
register(Backend("transformers", answer=_answer_transformers, precision=_transformers_precision))
register(Backend("vllm", answer=_answer_vllm, precision=_vllm_precision))
