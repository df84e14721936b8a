"""The reasoning-aware relevance judge (LRAT, Sec. 3.2).

Agents open documents that turn out useless. What the agent writes right after reading a document
says whether it helped, so an LLM reads that post-browse reasoning (with the query and the start
of the document) and answers ``RELEVANT`` or ``NOT_RELEVANT``; following the official LRAT judge,
it says ``NOT_RELEVANT`` only on a clear negative judgement, since agents often keep searching even
after a useful page. Pairs judged irrelevant are dropped by training's ``filter``/``reweight``
ablations.

The prompt is one versioned template (:data:`PROMPT_VERSION`). Each judged pair gets the columns
``relevant`` (the label used downstream), ``judge_label`` (what the judge said: true/false/null),
``judge_status`` (``ok``, ``cached``, ``unparseable``, ``failed``, ``not_judged``),
``judge_raw`` (the raw answer or error), ``judge_backend``, ``judge_model`` and
``judge_prompt_version``. An unparseable answer or a failed call never drops a pair silently: it
is counted, and ``on_failure`` decides its label (``relevant``, the default, keeps it as the
prompt's rule does for anything short of a clear negative; ``irrelevant`` drops it as the official
code does). Judgments are cached by (pair, prompt version, model), so a re-run pays only for new
pairs.

Backends (``backend``):

``vllm``
    vLLM engine actors on GPUs through ``ray.data.llm`` (``vLLMEngineProcessorConfig`` +
    ``build_processor``); the paper's judge was Qwen3-30B-A3B-Thinking.
``openai``
    Any OpenAI-compatible chat endpoint (a vLLM or SGLang server, a hosted API), with bounded
    concurrency, retries with backoff and a timeout per call.
``transformers``
    A local causal LM (CPU or GPU), greedy decoding.
``keyword``
    No model: ``NOT_RELEVANT`` exactly when the reasoning contains an explicit negative phrase
    from the prompt's decision rule ("not relevant", "irrelevant", "unrelated", "off-topic",
    "doesn't help", "no useful information", ...). A transparent CPU stand-in for an LLM judge,
    used by the demo; it reads the same decision rule literally and nothing more.
``none``
    Keep every browsed pair (the paper's naive variant).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass

from lrat_ray import storage
from lrat_ray.config import option
from lrat_ray.errors import LratError

log = logging.getLogger(__name__)
BACKENDS = ("none", "keyword", "openai", "transformers", "vllm")
FAILURE_POLICIES = ("relevant", "irrelevant")
PROMPT_VERSION = "lrat-judge-v1"
PROMPT_TEMPLATE = """You judge whether a document a research agent opened was useful, from what the agent wrote after reading it.

Task query: {query}
Start of the document: {document}
The agent's reasoning right after reading it:
{reasoning}

Decision rule: answer NOT_RELEVANT only if the reasoning clearly says the document is not relevant, irrelevant, unrelated or off-topic, does not help, has no useful information, cannot answer the question, or is about something else. Otherwise answer RELEVANT: also when the reasoning takes facts or details from the document, finds it partly helpful or useful as background, or decides to keep searching (continuing to search does not mean the document was irrelevant).

Answer with exactly one word: RELEVANT or NOT_RELEVANT."""
NEGATIVE_PHRASES = ("not relevant", "irrelevant", "unrelated", "off-topic", "off topic", "doesn't help",
                    "does not help", "not helpful", "no useful information", "no useful info", "cannot answer",
                    "can't answer", "not useful", "nothing useful", "about something else", "different topic")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


@dataclass
class JudgeConfig:
    """Options of ``lrat judge``."""

    pairs: str = option(help="mined pairs directory (lrat mine output: DIR or DIR/pairs; local or URI)", path=True)
    output: str = option(help="output directory: pairs/*.parquet with judge columns, report.json (local or URI; "
                              "'{version}' is replaced by the version key)")
    backend: str = option("keyword", choices=BACKENDS, help="which judge (see `lrat judge --help` intro)")
    model: str = option("", help="judge model: HF name/path (transformers, vllm) or served name (openai)")
    endpoint: str = option("http://127.0.0.1:8000/v1", help="openai: base URL of the chat completions API",
                           runtime=True)
    api_key_env: str = option("OPENAI_API_KEY", help="openai: environment variable holding the API key",
                              runtime=True)
    concurrency: int = option(8, help="openai: requests in flight; vllm and transformers: engine replicas",
                              runtime=True)
    batch_size: int = option(32, help="vllm and transformers: prompts per Ray Data batch", runtime=True)
    resources: dict = option({}, help="vllm and transformers: custom resources per engine replica, e.g. "
                                      "{\"gpu_stage\": 1}", runtime=True)
    accelerator_type: str | None = option(None, help="vllm: GPU type the engines need, e.g. H100", runtime=True)
    timeout_s: float = option(120.0, help="openai: timeout of one call", runtime=True)
    retries: int = option(3, help="openai: retries of a failed call (exponential backoff)", runtime=True)
    max_new_tokens: int = option(1024, help="tokens the judge may generate (thinking models need many)")
    document_chars: int = option(1500, help="characters of the document shown to the judge")
    on_failure: str = option("relevant", choices=FAILURE_POLICIES,
                             help="label for unparseable answers and failed calls")
    cache: str | None = option(None, help="judgment cache directory (default: OUTPUT/../judge-cache)", runtime=True)
    gpus_per_replica: float = option(1.0, help="vllm: GPUs per engine replica (tensor parallel size)", runtime=True)


def render_prompt(query: str, document: str | None, reasoning: str, document_chars: int = 1500) -> str:
    return PROMPT_TEMPLATE.format(query=query, document=(document or "(not shown)")[:document_chars],
                                  reasoning=reasoning or "(the agent wrote nothing)")


def parse_label(answer: str | None) -> bool | None:
    """``RELEVANT`` -> True, ``NOT_RELEVANT`` -> False, anything else -> None.

    Thinking models' ``<think>...</think>`` is ignored; the verdict is the last label word in the
    answer, case-insensitive, so "NOT RELEVANT", "**RELEVANT**" and "Answer: NOT_RELEVANT" parse.
    """
    if not answer:
        return None
    text = _THINK.sub(" ", answer).upper().replace("NOT RELEVANT", "NOT_RELEVANT").replace("IRRELEVANT", "NOT_RELEVANT")
    words = re.findall(r"NOT_RELEVANT|RELEVANT", text)
    if not words:
        return None
    return words[-1] == "RELEVANT"


def keyword_label(reasoning: str) -> bool:
    text = (reasoning or "").lower().replace("’", "'")
    return not any(phrase in text for phrase in NEGATIVE_PHRASES)


def cache_key(row: dict, model: str) -> str:
    parts = [PROMPT_VERSION, model, row["query"], row["positive_id"], row["reasoning"] or ""]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# Backends: a list of prompts in, a list of raw answers (or exceptions) out
# ---------------------------------------------------------------------------------------------

async def _openai_answers(prompts: list[str], config: JudgeConfig) -> list[str | Exception]:
    import httpx

    key = os.environ.get(config.api_key_env, "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    semaphore = asyncio.Semaphore(config.concurrency)

    async def one(client, prompt):
        payload = {"model": config.model, "messages": [{"role": "user", "content": prompt}],
                   "temperature": 0.0, "max_tokens": config.max_new_tokens}
        last: Exception | None = None
        for attempt in range(config.retries + 1):
            async with semaphore:
                try:
                    response = await client.post("/chat/completions", json=payload)
                    if response.status_code < 500 and response.status_code != 429:
                        response.raise_for_status()
                        return response.json()["choices"][0]["message"]["content"] or ""
                    last = RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                    last = exc
            await asyncio.sleep(min(2 ** attempt * 0.25, 8))
        return last

    async with httpx.AsyncClient(base_url=config.endpoint.rstrip("/"), headers=headers,
                                 timeout=config.timeout_s) as client:
        return list(await asyncio.gather(*(one(client, p) for p in prompts)))


class _TransformersJudge:
    """Ray Data actor: a local causal LM, greedy decoding."""

    def __init__(self, model: str, max_new_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: dict) -> dict:
        import torch

        answers = []
        for prompt in batch["prompt"]:
            if self.tokenizer.chat_template:
                text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                          add_generation_prompt=True)
            else:
                text = prompt + "\nAnswer:"
            inputs = self.tokenizer(text, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            answers.append(self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
        return {"key": batch["key"], "answer": answers}


def _ray_data_answers(rows: list[dict], config: JudgeConfig) -> dict[str, str | Exception]:
    import ray

    ds = ray.data.from_items([{"key": r["key"], "prompt": r["prompt"]} for r in rows])
    if config.backend == "transformers":
        from lrat_ray.runtime import actor_resources, remote_args

        per_replica = actor_resources(1, 0, config.resources)
        ds = ds.map_batches(_TransformersJudge, batch_size=config.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=config.concurrency),
                            **remote_args(per_replica),
                            fn_constructor_kwargs={"model": config.model, "max_new_tokens": config.max_new_tokens})
    else:
        ds = _vllm_processor(config)(ds)
    return {r["key"]: r["answer"] for r in ds.take_all()}


def _vllm_processor(config: JudgeConfig):
    """vLLM engines on GPUs via ray.data.llm; needs vllm (cluster/runtime_env_vllm.yaml installs it)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    processor_config = vLLMEngineProcessorConfig(
        model_source=config.model, concurrency=config.concurrency, batch_size=config.batch_size,
        resources_per_bundle={"GPU": 1, **config.resources} if config.resources else None,
        accelerator_type=config.accelerator_type,
        engine_kwargs={"max_model_len": 16384, "tensor_parallel_size": max(1, int(config.gpus_per_replica))})
    return build_processor(
        processor_config,
        preprocess=lambda row: {"messages": [{"role": "user", "content": row["prompt"]}],
                                "sampling_params": {"temperature": 0.0, "max_tokens": config.max_new_tokens},
                                "key": row["key"]},
        postprocess=lambda row: {"key": row["key"], "answer": row.get("generated_text", "")},
    )


def answer_prompts(rows: list[dict], config: JudgeConfig) -> dict[str, str | Exception]:
    """Raw answers by cache key for ``rows`` (each with ``key`` and ``prompt``)."""
    if not rows:
        return {}
    if config.backend == "openai":
        answers = asyncio.run(_openai_answers([r["prompt"] for r in rows], config))
        return {r["key"]: a for r, a in zip(rows, answers)}
    if config.backend in ("transformers", "vllm"):
        from lrat_ray.runtime import init_ray

        init_ray()
        return _ray_data_answers(rows, config)
    raise ValueError(f"backend {config.backend!r} does not call a model")


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

def judge_rows(rows: list[dict], config: JudgeConfig, cache: dict[str, dict]) -> tuple[list[dict], dict, dict]:
    """Label ``rows`` (pair dicts); returns (labelled rows, new cache entries, counts)."""
    counts = {"pairs": len(rows), "ok": 0, "cached": 0, "unparseable": 0, "failed": 0, "not_judged": 0}
    model = config.model if config.backend in ("openai", "transformers", "vllm") else config.backend
    fresh: dict[str, dict] = {}
    pending = []
    for row in rows:
        row["judge_backend"], row["judge_model"], row["judge_prompt_version"] = config.backend, model, PROMPT_VERSION
        if config.backend == "none":
            row.update(judge_label=None, judge_status="not_judged", judge_raw=None, relevant=True)
            counts["not_judged"] += 1
        elif config.backend == "keyword":
            label = keyword_label(row["reasoning"])
            row.update(judge_label=label, judge_status="ok", judge_raw=None, relevant=label)
            counts["ok"] += 1
        else:
            key = cache_key(row, model)
            if key in cache:
                row.update(judge_label=cache[key]["label"], judge_status="cached", judge_raw=cache[key]["raw"])
                counts["cached"] += 1
            else:
                row["_key"] = key
                pending.append({"key": key, "prompt": render_prompt(row["query"], row.get("positive_text"),
                                                                      row["reasoning"], config.document_chars)})
    answers = answer_prompts(_unique_by_key(pending), config) if pending else {}
    for row in rows:
        key = row.pop("_key", None)
        if key is None:
            continue
        answer = answers.get(key)
        if isinstance(answer, Exception) or answer is None:
            row.update(judge_label=None, judge_status="failed", judge_raw=repr(answer))
            counts["failed"] += 1
            continue
        label = parse_label(answer)
        row.update(judge_label=label, judge_status="ok" if label is not None else "unparseable", judge_raw=answer)
        counts["ok" if label is not None else "unparseable"] += 1
        if label is not None:
            fresh[key] = {"label": label, "raw": answer}
    for row in rows:
        if row["judge_status"] in ("ok", "cached"):
            row["relevant"] = row["judge_label"]
        elif row["judge_status"] in ("unparseable", "failed"):
            row["relevant"] = config.on_failure == "relevant"
    counts["relevant"] = sum(1 for r in rows if r["relevant"])
    counts["irrelevant"] = len(rows) - counts["relevant"]
    return rows, fresh, counts


def _unique_by_key(pending: list[dict]) -> list[dict]:
    return list({p["key"]: p for p in pending}.values())


def default_cache(output: str) -> str:
    """``judge-cache`` beside the output directory, so reruns into new directories share it."""
    parent = output.rstrip("/").rpartition("/")[0] if storage.is_remote(output) \
        else os.path.dirname(os.path.abspath(output.rstrip("/")))
    return storage.join(parent, "judge-cache")


def load_cache(directory: str) -> dict[str, dict]:
    cache: dict[str, dict] = {}
    if not storage.exists(directory):
        return cache
    try:
        files = storage.expand_inputs([directory], suffixes=(".jsonl",))
    except LratError:  # a cache directory with no entries yet
        return cache
    for uri in files:
        for line in storage.read_bytes(uri).decode("utf-8").split("\n"):
            if line.strip():
                entry = json.loads(line)
                cache[entry["key"]] = entry
    return cache


def run_judge(config: JudgeConfig) -> dict:
    """Judge every pair of ``config.pairs``; writes OUTPUT/pairs/*.parquet and OUTPUT/report.json."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from lrat_ray.pairs import PAIR_SCHEMA

    if config.backend in ("openai", "transformers", "vllm") and not config.model:
        raise LratError(f"--backend {config.backend} needs --model")
    started = time.time()
    source = config.pairs if config.pairs.rstrip("/").endswith("/pairs") else storage.join(config.pairs, "pairs")
    if not storage.exists(source):
        raise LratError(f"no pairs directory at {source}")
    fs, path = storage.resolve(source)
    rows = pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pylist()
    cache_dir = config.cache or default_cache(config.output)
    cache = load_cache(cache_dir)
    rows, fresh, counts = judge_rows(rows, config, cache)
    if fresh:
        lines = "".join(json.dumps({"key": k, **v}, ensure_ascii=False) + "\n" for k, v in fresh.items())
        storage.write_bytes_atomic(storage.join(cache_dir, f"{int(time.time() * 1000)}-{os.getpid()}.jsonl"),
                                   lines.encode())
    schema = PAIR_SCHEMA
    for name, kind in (("judge_label", pa.bool_()), ("judge_status", pa.string()), ("judge_raw", pa.string()),
                       ("judge_backend", pa.string()), ("judge_model", pa.string()),
                       ("judge_prompt_version", pa.string())):
        schema = schema.append(pa.field(name, kind))
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = storage.temp_sibling(storage.join(config.output, "pairs"))
    storage.write_table_atomic(storage.join(tmp, "part-0.parquet"), table)
    storage.publish_dir(tmp, storage.join(config.output, "pairs"))
    prompt_hash = hashlib.sha256(PROMPT_TEMPLATE.encode()).hexdigest()[:16]
    report = {**counts, "backend": config.backend, "model": config.model, "prompt_version": PROMPT_VERSION,
              "prompt_sha256": prompt_hash, "on_failure": config.on_failure, "cache": cache_dir,
              "config": dataclasses.asdict(config), "wall_seconds": round(time.time() - started, 2)}
    storage.write_json_atomic(storage.join(config.output, "report.json"), report)
    return report
