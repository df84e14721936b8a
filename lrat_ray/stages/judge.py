"""The reasoning-aware relevance judge (LRAT, Sec. 3.2), streaming on Ray Data.

Agents open documents that turn out useless. What the agent writes right after reading a document
says whether it helped, so an LLM reads that post-browse reasoning and answers ``RELEVANT`` or
``NOT_RELEVANT``; the official LRAT judge says ``NOT_RELEVANT`` only on a clear negative judgement,
since agents often keep searching even after a useful page.

**What is judged.** ``--pairs DIR`` labels mined pairs (``DIR/pairs``) and writes them with judge
columns to ``OUTPUT/pairs``; training's ``filter``/``reweight`` read the labels. ``--events
TRAJECTORIES`` labels every *browse event* of the trajectories (``OUTPUT/labels``: trajectory id,
browse turn, document, label) so that ``lrat mine --labels OUTPUT`` can mine with them: the
official builder (``--negatives since-last-positive``) judges each browse while it mines, and a
judged-irrelevant browse changes the windows and the hard negatives, so judging finished pairs
afterwards cannot give its pairs.

**Prompts** (``prompt``):

``lrat-official`` (default)
    The official LRAT judge prompt's decision rule, verbatim, and only the post-browse reasoning:
    the judge reads the agent's reaction to the document, which is the signal LRAT is about.
``query-document``
    The same rule, plus the query and the start of the document; a strong LLM then makes its own
    topical call as well. Kept for comparison.

**Answers.** ``guided`` (default on) forces the answer to one of the two labels where the backend
can (vLLM guided choice; a JSON-schema ``response_format`` for OpenAI-compatible servers); free
text is parsed robustly anyway (:func:`parse_label`). Thinking judges (``thinking``, e.g.
Qwen3-*-Thinking, whose chat template opens ``<think>`` in the prompt) need ``guided`` off and a
large ``max_new_tokens``: only the text after the last ``</think>`` counts, and an answer whose
thinking never closed (cut off by the budget) is unparseable.

**Failures.** A row whose generation fails (engine error, timeout, HTTP error after retries) gets
``judge_status=failed``; an answer without a label ``unparseable``; neither aborts the job, both
are counted. ``on_failure`` sets their label: ``relevant`` (default: a failed call says nothing
about the document, so the browse keeps its positive signal) or ``irrelevant`` (the official
code's policy, chosen by the paper-reproduction recipe).

Each judged row gets ``relevant`` (the label used downstream), ``judge_label`` (true/false/null),
``judge_status`` (``ok``, ``cached``, ``unparseable``, ``failed``, ``not_judged``), ``judge_raw``,
``judge_backend``, ``judge_model``, ``judge_prompt_version`` and ``judge_key``. Parsed answers
are cached (Parquet under ``cache``) by the hash of the model, the prompt version and the rendered
prompt; a re-run joins the rows with the cache in Ray Data and sends only the misses to the model.
A job killed mid-way keeps the blocks it finished (``OUTPUT/.pairs.partial``): the resubmitted job
puts their answers into the cache first, so only the rest reaches the model.

Backends (``backend``): ``vllm`` (``ray.data.llm`` engine actors; GPU or CPU), ``openai`` (any
OpenAI-compatible endpoint through :class:`~lrat_ray.infra.chat_client.ChatClient`), ``transformers`` (a
local causal LM in Ray Data actors), ``keyword`` (no model: ``NOT_RELEVANT`` exactly when the
reasoning contains an explicit negative phrase of the rule; a transparent stand-in) and ``none``
(keep every browse: the paper's naive variant).
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

import pyarrow as pa
import pyarrow.compute as pc

from lrat_ray.core.pairs import pairs_source
from lrat_ray.infra import storage
from lrat_ray.infra.config import RayCluster, checked, option
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import DTYPES, default_device, describe, engine_dtype, torch_dtype

log = logging.getLogger(__name__)
BACKENDS = ("none", "keyword", "openai", "transformers", "vllm")
MODEL_BACKENDS = ("openai", "transformers", "vllm")
FAILURE_POLICIES = ("relevant", "irrelevant")
LABELS = ("RELEVANT", "NOT_RELEVANT")

# The decision rule of the official LRAT judge (src/data_builder.py in Yuqi-Zhou/LRAT, Apache-2.0),
# verbatim; it sees nothing but the agent's analysis.
OFFICIAL_RULE = """You are an LLM judge. You will classify whether the AnalysisText suggests the browsing text is relevant or not relevant, using a bias aligned with typical browsing behavior: models often keep searching even when content is relevant, but they only say “not relevant” when it’s clearly off-topic.

Input
AnalysisText: another model’s analysis of a browsing page.
Decision rule (important)
Output NOT_RELEVANT only if the analysis contains a clear negative judgment of relevance (explicit or unmistakable), such as: “not relevant / irrelevant / unrelated / off-topic / doesn’t help / cannot answer / no useful info,” or it clearly concludes the content is about a different topic and provides no value for the task.
Otherwise output RELEVANT.
    - This includes cases where the analysis:
    - extracts useful facts/steps/details from the page,
    - says the page is partially helpful,
    - suggests using it as background/context,
    - recommends continuing to search for more sources (continuing search does not imply irrelevance).
Output (strict)
Return exactly one token:

RELEVANT
NOT_RELEVANT
"""  # noqa: E501 (the official prompt, verbatim)
PROMPTS = {
    "lrat-official": ("lrat-official-v1",
                      OFFICIAL_RULE + "\nClassify this:\nAnalysisText:\n{reasoning}"),
    "query-document": ("lrat-judge-v2",
                       OFFICIAL_RULE + "\nClassify this:\nTask query: {query}\nStart of the browsed page: {document}\n"
                                       "AnalysisText:\n{reasoning}"),
}
NEGATIVE_PHRASES = ("not relevant", "irrelevant", "unrelated", "off-topic", "off topic", "doesn't help",
                    "does not help", "not helpful", "no useful information", "no useful info", "cannot answer",
                    "can't answer", "not useful", "nothing useful", "about something else", "different topic")
# Every step around the model is light (reading, prompts, parsing, writing): a full CPU each would
# leave a 2-CPU node with an engine on one core unable to schedule them, and the job would wait forever.
LIGHT_CPUS = 0.1
MAX_READ_TASKS = 64  # many small input files are read a group at a time, not one task each
CACHE_ROWS_PER_FILE = 200_000  # grouping by key leaves one tiny block per key; write them together
JUDGE_FIELDS = [pa.field("judge_key", pa.string()), pa.field("relevant", pa.bool_()),
                pa.field("judge_label", pa.bool_()), pa.field("judge_status", pa.string()),
                pa.field("judge_raw", pa.string()),
                pa.field("judge_backend", pa.string()), pa.field("judge_model", pa.string()),
                pa.field("judge_prompt_version", pa.string())]


@dataclass(kw_only=True)
@checked
class JudgeConfig(RayCluster):
    """Options of ``lrat judge``."""

    output: str = option(help="output directory: pairs/ (or labels/ for --events) and report.json "
                              "(local or URI; '{version}' is replaced by the version key)")
    pairs: str | None = option(None, help="mined pairs to label: a lrat mine output directory, its pairs/ "
                                          "folder or Parquet files (local or URI)", path=True)
    events: list[str] = option([], help="trajectory files, directories or globs whose browse events to label "
                                        "(for lrat mine --labels)", path=True)
    format: str = option("auto", help="--events: trajectory format (as lrat mine --format)")
    backend: str = option("keyword", choices=BACKENDS, help="which judge (see `lrat judge --help` intro)")
    model: str = option("", help="judge model: HF name or path, 'tiny' = the prepared SmolLM2 "
                                 "(transformers, vllm), or the served name (openai)")
    prompt: str = option("lrat-official", choices=tuple(PROMPTS),
                         help="lrat-official: the official rule, reasoning only; query-document: plus query "
                              "and document start")
    guided: bool = option(True, help="force the answer to a label (vLLM guided choice, JSON schema for openai)")
    thinking: bool = option(False, help="the judge thinks first: parse after the last </think>; an unclosed "
                                        "<think> is unparseable (needs --no-guided and a large budget)")
    max_new_tokens: int = option(16, help="generation budget (a thinking judge needs thousands)")
    temperature: float = option(0.0, help="sampling temperature (the official judge used 0.8 with thinking)")
    document_chars: int = option(1500, help="query-document prompt: characters of the document shown")
    on_failure: str = option("relevant", choices=FAILURE_POLICIES,
                             help="label of unparseable answers and failed calls (official: irrelevant)")
    cache: str | None = option(None, help="judgment cache directory (default: OUTPUT/../judge-cache)", runtime=True)
    endpoint: str = option("http://127.0.0.1:8000/v1", help="openai: base URL of the chat completions API",
                           runtime=True)
    api_key_env: str = option("OPENAI_API_KEY", help="openai: environment variable holding the API key",
                              runtime=True)
    timeout_s: float = option(120.0, help="openai: timeout of one call", runtime=True)
    retries: int = option(3, help="openai: retries of a failed call (exponential backoff)", runtime=True)
    concurrency: int = option(8, help="openai: requests in flight per batch; vllm and transformers: engine "
                                      "replicas", runtime=True)
    batch_size: int = option(32, help="rows per Ray Data batch (and per vLLM engine call)", runtime=True)
    gpus_per_replica: int | None = option(None, help="vllm: GPUs per engine replica (tensor parallel); 0 runs "
                                                  "the engine on one CPU; default: 1 if the cluster has GPUs, "
                                                  "else 0", runtime=True)
    accelerator_type: str | None = option(None, help="vllm: GPU type the engines need, e.g. H100", runtime=True)
    resources: dict = option({}, help="custom resources per engine replica (vllm: added to its first bundle), "
                                      "e.g. {\"gpu_stage\": 1}", runtime=True)
    max_model_len: int = option(8192, help="vllm: context length of the engine")
    dtype: str = option("auto", choices=DTYPES,
                        help="vllm and transformers: the model's compute dtype; auto: bfloat16 on GPUs and on "
                             "CPUs with AVX512-BF16/AMX, float32 on other CPUs (lrat_ray.infra.hardware)")
    engine_kwargs: dict = option({}, help="vllm: extra engine arguments (JSON), e.g. {\"max_num_seqs\": 64}",
                                 runtime=True)
    start_timeout_s: float = option(900.0, help="fail if the engines have not started after this long "
                                                "(instead of waiting forever for resources)", runtime=True)

    def __post_init__(self):
        if bool(self.pairs) == bool(self.events):
            raise ValueError("give exactly one of --pairs (mined pairs) and --events (trajectories)")
        if self.backend in MODEL_BACKENDS and not self.model:
            raise ValueError(f"--backend {self.backend} needs --model")
        if self.thinking and self.guided:
            raise ValueError("--thinking needs --no-guided: guided decoding leaves no room to think")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.concurrency < 1:
            raise ValueError("max_new_tokens, batch_size and concurrency must be at least 1")

    @property
    def prompt_version(self) -> str:
        return PROMPTS[self.prompt][0]

    @property
    def model_label(self) -> str:
        return self.model if self.backend in MODEL_BACKENDS else self.backend

    @property
    def output_table(self) -> str:
        return "labels" if self.events else "pairs"


# ---------------------------------------------------------------------------------------------
# The pure core: prompts, labels, cache keys
# ---------------------------------------------------------------------------------------------

def render_prompt(config: JudgeConfig, reasoning: str | None, query: str | None = None,
                  document: str | None = None) -> str:
    template = PROMPTS[config.prompt][1]
    return template.format(reasoning=reasoning or "(the agent wrote nothing)", query=query or "",
                           document=(document or "(not shown)")[:config.document_chars])


def parse_label(answer: str | None, thinking: bool = False) -> bool | None:
    """``RELEVANT`` -> True, ``NOT_RELEVANT`` -> False, anything else -> None.

    Only the text after the last ``</think>`` counts; with ``thinking`` an answer without one
    (thinking cut off by the budget) is unparseable, and so is any answer with an unclosed
    ``<think>``. The verdict is the last label word, case-insensitive, so "NOT RELEVANT",
    "**RELEVANT**", ``{"label": "NOT_RELEVANT"}`` and "Answer: irrelevant" parse.
    """
    if not answer:
        return None
    closed = answer.rfind("</think>")
    if closed >= 0:
        answer = answer[closed + len("</think>"):]
    elif thinking or "<think>" in answer:
        return None
    text = answer.upper().replace("NOT RELEVANT", "NOT_RELEVANT").replace("IRRELEVANT", "NOT_RELEVANT")
    words = re.findall(r"NOT_RELEVANT|RELEVANT", text)
    return None if not words else words[-1] == "RELEVANT"


def keyword_label(reasoning: str | None) -> bool:
    text = (reasoning or "").lower().replace("’", "'")
    return not any(phrase in text for phrase in NEGATIVE_PHRASES)


def judge_key(config: JudgeConfig, prompt: str) -> str:
    """Cache key: everything that determines the answer."""
    parts = [config.prompt_version, config.model, config.guided, config.thinking, config.max_new_tokens,
             config.temperature, prompt]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:32]


def _document(row: dict) -> str | None:
    return row.get("positive_text", row.get("document_text"))


def add_prompts(batch: pa.Table, config: JudgeConfig) -> pa.Table:
    """``judge_prompt`` and ``judge_key`` for each row (pairs or browse events)."""
    rows = batch.select([c for c in ("query", "reasoning", "positive_text", "document_text")
                         if c in batch.column_names]).to_pylist()
    prompts = [render_prompt(config, r.get("reasoning"), r.get("query"), _document(r)) for r in rows]
    return (batch.append_column("judge_prompt", pa.array(prompts, pa.string()))
            .append_column("judge_key", pa.array([judge_key(config, p) for p in prompts], pa.string())))


def output_schema(input_schema: pa.Schema) -> pa.Schema:
    """The input's columns (a stage's judge columns replaced), then ``judge_key`` and the judge columns."""
    replaced = {f.name for f in JUDGE_FIELDS}
    fields = [f for f in input_schema if f.name not in replaced]
    return pa.schema(fields + JUDGE_FIELDS)


def label_rows(batch: pa.Table, config: JudgeConfig, schema: pa.Schema, labels: list[bool | None],
               statuses: list[str], raws: list[str | None]) -> pa.Table:
    """The rows with the judge columns, in ``schema`` (:func:`output_schema`); ``relevant``
    follows the label, else the failure policy."""
    fallback = config.on_failure == "relevant"
    n = batch.num_rows
    judged = {"relevant": [label if label is not None else (True if status == "not_judged" else fallback)
                           for label, status in zip(labels, statuses)],
              "judge_label": labels, "judge_status": statuses, "judge_raw": raws,
              "judge_backend": [config.backend] * n, "judge_model": [config.model_label] * n,
              "judge_prompt_version": [config.prompt_version] * n}
    columns = []
    for field in schema:
        if field.name in judged:
            columns.append(pa.array(judged[field.name], field.type))
        elif field.name in batch.column_names:
            # Row-wise engines hand columns back re-inferred (int64, null-typed): restore the input's types.
            columns.append(batch.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def label_without_model(batch: pa.Table, config: JudgeConfig, schema: pa.Schema) -> pa.Table:
    """The ``none`` and ``keyword`` backends."""
    n = batch.num_rows
    if config.backend == "none":
        return label_rows(batch, config, schema, [None] * n, ["not_judged"] * n, [None] * n)
    labels = [keyword_label(r) for r in batch.column("reasoning").to_pylist()]
    return label_rows(batch, config, schema, labels, ["ok"] * n, [None] * n)


def label_answers(batch: pa.Table, config: JudgeConfig, schema: pa.Schema) -> pa.Table:
    """Parse ``judge_answer`` (or count ``judge_error``) of each row."""
    answers = batch.column("judge_answer").to_pylist()
    errors = batch.column("judge_error").to_pylist()
    labels, statuses, raws = [], [], []
    for answer, error in zip(answers, errors):
        if error:
            labels.append(None), statuses.append("failed"), raws.append(error)
            continue
        label = parse_label(answer, config.thinking)
        labels.append(label), statuses.append("ok" if label is not None else "unparseable"), raws.append(answer)
    return label_rows(batch, config, schema, labels, statuses, raws)


def label_cached(batch: pa.Table, config: JudgeConfig, schema: pa.Schema) -> pa.Table:
    n = batch.num_rows
    return label_rows(batch, config, schema, batch.column("cached_label").to_pylist(), ["cached"] * n,
                      batch.column("cached_raw").to_pylist())


# ---------------------------------------------------------------------------------------------
# Model backends: a dataset with judge_prompt in, the same rows with judge_answer/judge_error out
# ---------------------------------------------------------------------------------------------

def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


class OpenAIAnswers:
    """Ray Data UDF: one batch of prompts to an OpenAI-compatible endpoint, ``concurrency`` at a time."""

    def __init__(self, config: dict):
        from lrat_ray.infra.chat_client import ChatClient, ChatEndpoint

        self.config = JudgeConfig(**config)
        c = self.config
        self.client = ChatClient(ChatEndpoint(c.endpoint, c.model, c.api_key_env, c.timeout_s, c.retries))
        self.params = {"temperature": c.temperature, "max_tokens": c.max_new_tokens}
        if c.guided:
            self.params["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "verdict", "strict": True, "schema": {
                    "type": "object", "properties": {"label": {"type": "string", "enum": list(LABELS)}},
                    "required": ["label"], "additionalProperties": False}}}

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = asyncio.run(self._answers(batch.column("judge_prompt").to_pylist()))
        answers = [r if isinstance(r, str) else None for r in results]
        errors = [None if isinstance(r, str) else _error_text(r) for r in results]
        return (batch.append_column("judge_answer", pa.array(answers, pa.string()))
                .append_column("judge_error", pa.array(errors, pa.string())))

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
        return (batch.append_column("judge_answer", pa.array(answers, pa.string()))
                .append_column("judge_error", pa.array(errors, pa.string())))

    def _generate(self, prompt: str) -> str:
        import torch

        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(_messages(prompt), tokenize=False, add_generation_prompt=True)
        else:
            text = prompt + "\nAnswer:"
        inputs = self.tokenizer(text, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


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
        engine_kwargs.update(enforce_eager=True, max_num_seqs=16,
                             kv_cache_memory_bytes=(512 << 20) if dtype == "float32" else (256 << 20))
        bundles = [{"CPU": 1}]
    bundles[0] = {**bundles[0], **config.resources}
    engine_kwargs.update(config.engine_kwargs)
    light = {"num_cpus": LIGHT_CPUS}
    return vLLMEngineProcessorConfig(
        model_source=model_path, batch_size=config.batch_size, concurrency=config.concurrency,
        accelerator_type=config.accelerator_type if gpus else None,
        placement_group_config={"bundles": bundles}, engine_kwargs=engine_kwargs,
        should_continue_on_error=True,
        chat_template_stage={"enabled": True, **light}, tokenize_stage={"enabled": True, **light},
        detokenize_stage={"enabled": True, **light},
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}})


def _vllm_request(row: dict, sampling: dict) -> dict:
    return {**row, "messages": _messages(row["judge_prompt"]), "sampling_params": sampling}


def _vllm_result(row: dict) -> dict:
    error = row.pop("__inference_error__", "") or None
    answer = None if error else row.get("generated_text")
    out = {k: v for k, v in row.items() if k not in _VLLM_COLUMNS}
    return {**out, "judge_answer": answer, "judge_error": error}


_VLLM_COLUMNS = {"messages", "sampling_params", "generated_text", "generated_tokens", "prompt", "prompt_token_ids",
                 "num_generated_tokens", "num_input_tokens", "embeddings", "request_id", "params", "metrics",
                 "time_taken_llm", "generated_logprobs", "prompt_logprobs", "batch_uuid"}


def answer_dataset(ds, config: JudgeConfig):
    """Run the model backend over ``ds`` (rows with ``judge_prompt``)."""
    import ray

    from lrat_ray.infra.runtime import actor_resources, remote_args
    from lrat_ray.models.tiny_llm import resolve_llm

    if config.backend == "openai":
        return ds.map_batches(OpenAIAnswers, batch_size=config.batch_size, batch_format="pyarrow",
                              compute=ray.data.ActorPoolStrategy(size=1), num_cpus=LIGHT_CPUS,
                              fn_constructor_kwargs={"config": dataclasses.asdict(config)})
    model = resolve_llm(config.model)
    if config.backend == "transformers":
        per_replica = actor_resources(1, 0, config.resources)
        return ds.map_batches(TransformersAnswers, batch_size=config.batch_size, batch_format="pyarrow",
                              compute=ray.data.ActorPoolStrategy(size=config.concurrency), **remote_args(per_replica),
                              fn_constructor_kwargs={"model": model, "max_new_tokens": config.max_new_tokens,
                                                     "dtype": config.dtype})
    from ray.data.llm import build_processor

    sampling = {"temperature": config.temperature, "max_tokens": config.max_new_tokens}
    if config.guided:
        sampling["structured_outputs"] = {"choice": list(LABELS)}
    processor = build_processor(vllm_processor_config(config, model),
                                preprocess=lambda row: _vllm_request(row, sampling), postprocess=_vllm_result,
                                preprocess_map_kwargs={"num_cpus": LIGHT_CPUS},
                                postprocess_map_kwargs={"num_cpus": LIGHT_CPUS})
    return processor(ds)


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

def default_cache(output: str) -> str:
    """``judge-cache`` beside the output directory, so reruns into new directories share it."""
    parent = output.rstrip("/").rpartition("/")[0] if storage.is_remote(output) \
        else os.path.dirname(os.path.abspath(output.rstrip("/")))
    return storage.join(parent, "judge-cache")


def _cache_files(cache: str) -> list[str]:
    if not storage.exists(cache):
        return []
    try:
        return storage.expand_inputs([cache], suffixes=(".parquet",))
    except LratError:  # a cache directory with no entries yet
        return []


def _files_dataset(files: list[str]):
    """One row per file. Ray Data's own readers list files in a task that needs a whole CPU, which
    a small node running an engine never has free; a file list needs none."""
    import ray

    blocks = max(1, min(len(files), MAX_READ_TASKS))
    return ray.data.from_items([{"file": f} for f in files], override_num_blocks=blocks)


def _light(ds, fn, **kwargs):
    return ds.map_batches(fn, batch_format="pyarrow", num_cpus=LIGHT_CPUS, **kwargs)


def read_parquet_files(files: list[str]):
    """The rows of ``files`` (any pyarrow filesystem) as a Ray Dataset, one file per read."""
    return _light(_files_dataset(files), _read_tables, batch_size=None)


def _read_tables(batch: pa.Table) -> pa.Table:
    import pyarrow.parquet as pq

    tables = []
    for uri in batch.column("file").to_pylist():
        fs, path = storage.resolve(uri)
        tables.append(pq.read_table(path, filesystem=fs))
    return pa.concat_tables(tables)


def _events_dataset(config: JudgeConfig):
    return _light(_files_dataset(storage.expand_inputs(config.events)), _file_events, batch_size=None,
                  fn_kwargs={"fmt": config.format})


EVENT_SCHEMA = pa.schema([("trajectory_id", pa.string()), ("browse_turn", pa.int32()), ("doc_id", pa.string()),
                          ("reasoning", pa.string()), ("document_text", pa.string()), ("query", pa.string()),
                          ("source", pa.string())])


def _file_events(batch: pa.Table, fmt: str) -> pa.Table:
    from lrat_ray.core.adapters import read_trajectories
    from lrat_ray.core.mining import browse_events
    from lrat_ray.infra.errors import RecordError

    events = []
    for uri in batch.column("file").to_pylist():
        for _, traj in read_trajectories(uri, fmt):
            if isinstance(traj, RecordError):  # lrat mine counts bad records; there is nothing here to judge
                continue
            events.extend({**dataclasses.asdict(e), "source": uri} for e in browse_events(traj))
    return pa.Table.from_pylist(events, schema=EVENT_SCHEMA)


def _input(config: JudgeConfig):
    """The rows to judge as a Ray Dataset, and their Arrow schema."""
    import pyarrow.parquet as pq

    if config.events:
        return _events_dataset(config), EVENT_SCHEMA
    files = storage.expand_inputs([pairs_source(config.pairs)], suffixes=(".parquet",))
    fs, path = storage.resolve(files[0])
    return read_parquet_files(files), pq.read_schema(path, filesystem=fs)


def _only(batch: pa.Table, column: str, valid: bool) -> pa.Table:
    mask = pc.is_valid(batch.column(column))
    return batch.filter(mask if valid else pc.invert(mask))


def _uncached(batch: pa.Table) -> pa.Table:
    return _only(batch, "cached_label", False).drop_columns(["cached_label", "cached_raw"])


def _write(ds, directory: str, prefix: str, min_rows_per_file: int | None = None) -> None:
    from ray.data.datasource import FilenameProvider

    fs, path = storage.resolve(directory)
    ds.write_parquet(path, filesystem=fs, filename_provider=FilenameProvider(prefix, "parquet"),
                     min_rows_per_file=min_rows_per_file, ray_remote_args={"num_cpus": LIGHT_CPUS})


def _judge_with_model(items, config: JudgeConfig, schema: pa.Schema, tmp: str, scratch: str) -> int:
    """Cached rows from the cache, the rest through the model; returns the number of cache files found."""

    cache = config.cache or default_cache(config.output)
    cached = _cache_files(cache)
    pending = items
    if cached:
        joined_dir = storage.join(scratch, "joined")
        _write(items.join(read_parquet_files(cached), "left_outer", num_partitions=_partitions(cached, 2),
                          on=("judge_key",)), joined_dir, "joined")
        joined = read_parquet_files(storage.expand_inputs([joined_dir], suffixes=(".parquet",)))
        _write(_light(_light(joined, _only, fn_args=("cached_label", True)), label_cached, fn_args=(config, schema)),
               tmp, "cached")
        pending = _light(joined, _uncached)
        if pending.count() == 0:  # everything was cached: no engine to start
            return len(cached)
    answered = answer_dataset(pending, config)
    _write(_light(answered, label_answers, fn_args=(config, schema)), tmp, "judged")
    _extend_cache(tmp, cache)
    return len(cached)


def _extend_cache(tmp: str, cache: str) -> None:
    """New parsed answers -> one more cache file per write task (distinct keys within this run)."""

    files = [f for f in storage.expand_inputs([tmp], suffixes=(".parquet",))
             if os.path.basename(f).startswith("judged_")]
    if not files:
        return
    fresh = (_light(read_parquet_files(files), _only_ok)
             .groupby("judge_key", num_partitions=_partitions(files)).map_groups(_first_entry, batch_format="pyarrow"))
    staged = storage.temp_sibling(storage.join(cache, "entries"))
    _write(fresh, staged, "cache", min_rows_per_file=CACHE_ROWS_PER_FILE)
    for uri in storage.expand_inputs([staged], suffixes=(".parquet",)) if storage.exists(staged) else []:
        data = storage.read_bytes(uri)
        storage.write_bytes_atomic(storage.join(cache, os.path.basename(uri)), data)
    storage.remove_dir(staged)


def _keep_finished_answers(partial: str, cache: str) -> None:
    """An interrupted run's judged blocks go into the cache, so a resubmitted job sends only the
    rest to the model; a file cut off mid-write is dropped (its rows are judged again)."""
    import pyarrow.parquet as pq

    if not storage.exists(partial):
        return
    for uri in storage.expand_inputs([partial], suffixes=(".parquet",)):
        fs, path = storage.resolve(uri)
        try:
            pq.read_metadata(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError):
            fs.delete_file(path)
    _extend_cache(partial, cache)


def _partitions(files: list, per_file: int = 1) -> int:
    """Hash-shuffle partitions sized by the input: Ray Data's default (200) costs several seconds of
    task overhead per shuffle on small inputs, and more partitions than blocks gain nothing."""
    return max(1, min(16, len(files) * per_file))


def _only_ok(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch.column("judge_status"), "ok")).select(["judge_key", "judge_label", "judge_raw"])


def _first_entry(group: pa.Table) -> pa.Table:
    first = group.slice(0, 1)
    return pa.table({"judge_key": first.column("judge_key"), "cached_label": first.column("judge_label"),
                     "cached_raw": first.column("judge_raw")})


def _counts(tmp: str) -> dict:
    """Rows by status and label. Two narrow columns, aggregated in this process with Arrow (a Ray
    Data job here cost seconds of start-up on every run, for a few bytes per row)."""
    import pyarrow.dataset as pads

    files = storage.expand_inputs([tmp], suffixes=(".parquet",))
    fs, _ = storage.resolve(files[0])
    table = pads.dataset([storage.resolve(f)[1] for f in files], filesystem=fs, format="parquet").to_table(
        columns=["judge_status", "relevant"])
    rows = table.group_by(["judge_status", "relevant"]).aggregate([([], "count_all")]).to_pylist()
    counts = {"rows": 0, "ok": 0, "cached": 0, "unparseable": 0, "failed": 0, "not_judged": 0,
              "relevant": 0, "irrelevant": 0}
    for row in rows:
        n = row["count_all"]
        counts["rows"] += n
        counts[row["judge_status"]] += n
        counts["relevant" if row["relevant"] else "irrelevant"] += n
    return counts


def _precision(config: JudgeConfig) -> dict:
    """The model's dtype as resolved for this run, and the driver's hardware (model backends)."""
    if config.backend not in ("vllm", "transformers"):
        return {}
    if config.backend == "vllm":
        from lrat_ray.infra.runtime import gpus_or_cpu

        dtype = engine_dtype(config.dtype, gpus_or_cpu(config.gpus_per_replica))
    else:
        dtype = str(torch_dtype(config.dtype, default_device())).removeprefix("torch.")
    return {"dtype": dtype, "hardware": describe()}


def run_judge(config: JudgeConfig) -> dict:
    """Judge every pair (or browse event); writes OUTPUT/pairs (or labels) and OUTPUT/report.json."""
    from ray.data import DataContext

    from lrat_ray.infra.runtime import init_ray

    started = time.time()
    if config.pairs:
        pairs_source(config.pairs)  # fail before Ray on a wrong input
    else:
        storage.expand_inputs(config.events)
    init_ray(config.address)
    # An engine that cannot be placed (no GPU, too few CPUs) fails the stage instead of waiting forever.
    DataContext.get_current().wait_for_min_actors_s = config.start_timeout_s
    final = storage.join(config.output, config.output_table)
    # A fixed place, not a fresh one: the blocks an interrupted run finished are found here again.
    tmp = storage.join(config.output, f".{config.output_table}.partial")
    if config.backend in MODEL_BACKENDS:
        _keep_finished_answers(tmp, config.cache or default_cache(config.output))
    storage.remove_dir(tmp)
    scratch = storage.temp_sibling(storage.join(config.output, "scratch"))
    rows, input_schema = _input(config)
    schema = output_schema(input_schema)
    items = _light(rows, add_prompts, fn_args=(config,))
    cached_entries = 0
    try:
        if config.backend in MODEL_BACKENDS:
            cached_entries = _judge_with_model(items, config, schema, tmp, scratch)
        else:
            _write(_light(items, label_without_model, fn_args=(config, schema)), tmp, "judged")
        if not storage.exists(tmp):  # no rows at all: an empty table still says what the columns are
            storage.write_table_atomic(storage.join(tmp, "judged_empty.parquet"), schema.empty_table())
        counts = _counts(tmp)
    finally:
        storage.remove_dir(scratch)
    storage.publish_dir(tmp, final)
    prompt_hash = hashlib.sha256(PROMPTS[config.prompt][1].encode()).hexdigest()[:16]
    report = {config.output_table: counts.pop("rows"), **counts, "backend": config.backend,
              "model": config.model_label, "prompt": config.prompt, "prompt_version": config.prompt_version,
              "prompt_sha256": prompt_hash, "on_failure": config.on_failure,
              "cache": (config.cache or default_cache(config.output)) if config.backend in MODEL_BACKENDS else None,
              "cache_files_before": cached_entries, **_precision(config), "config": dataclasses.asdict(config),
              "wall_seconds": round(time.time() - started, 2)}
    storage.write_json_atomic(storage.join(config.output, "report.json"), report)
    return report
