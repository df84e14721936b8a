"""``JudgeConfig``: every option of ``lrat judge``."""

from __future__ import annotations

from dataclasses import dataclass

from lrat_ray.infra.config import RayCluster, checked, option
from lrat_ray.infra.hardware import DTYPES
from lrat_ray.stages.judge.backends import BACKENDS
from lrat_ray.stages.judge.prompts import PROMPTS

FAILURE_POLICIES = ("relevant", "irrelevant")


@dataclass(kw_only=True)
@checked
class JudgeConfig(RayCluster):
    """Options of ``lrat judge``."""

    output: str = option(
        help="output directory: pairs/ (or labels/ for --events) and report.json "
        "(local or URI; '{version}' is replaced by the version key)"
    )
    pairs: str | None = option(
        None,
        help="mined pairs to label: a lrat mine output directory, its pairs/ folder or Parquet files (local or URI)",
        path=True,
    )
    events: list[str] = option(
        [],
        help="trajectory files, directories or globs whose browse events to label (for lrat mine --labels)",
        path=True,
    )
    format: str = option("auto", help="--events: trajectory format (as lrat mine --format)")
    backend: str = option("keyword", choices=tuple(BACKENDS), help="which judge (see `lrat judge --help` intro)")
    model: str = option(
        "",
        help="judge model: HF name or path, 'tiny' = the prepared SmolLM2 "
        "(transformers, vllm), or the served name (openai)",
    )
    prompt: str = option(
        "lrat-official",
        choices=tuple(PROMPTS),
        help="lrat-official: the official rule, reasoning only; query-document: plus query and document start",
    )
    guided: bool = option(True, help="force the answer to a label (vLLM guided choice, JSON schema for openai)")
    thinking: bool = option(
        False,
        help="the judge thinks first: parse after the last </think>; an unclosed "
        "<think> is unparseable (needs --no-guided and a large budget)",
    )
    max_new_tokens: int = option(16, help="generation budget (a thinking judge needs thousands)")
    temperature: float = option(0.0, help="sampling temperature (the official judge used 0.8 with thinking)")
    document_chars: int = option(1500, help="query-document prompt: characters of the document shown")
    on_failure: str = option(
        "relevant",
        choices=FAILURE_POLICIES,
        help="label of unparseable answers and failed calls (official: irrelevant)",
    )
    cache: str | None = option(None, help="judgment cache directory (default: OUTPUT/../judge-cache)", runtime=True)
    endpoint: str = option(
        "http://127.0.0.1:8000/v1", help="openai: base URL of the chat completions API", runtime=True
    )
    api_key_env: str = option("OPENAI_API_KEY", help="openai: environment variable holding the API key", runtime=True)
    timeout_s: float = option(120.0, help="openai: timeout of one call", runtime=True)
    retries: int = option(3, help="openai: retries of a failed call (exponential backoff)", runtime=True)
    concurrency: int = option(
        8, help="openai: requests in flight per batch; vllm and transformers: engine replicas", runtime=True
    )
    batch_size: int = option(32, help="rows per Ray Data batch (and per vLLM engine call)", runtime=True)
    gpus_per_replica: int | None = option(
        None,
        help="vllm: GPUs per engine replica (tensor parallel); 0 runs "
        "the engine on one CPU; default: 1 if the cluster has GPUs, "
        "else 0",
        runtime=True,
    )
    accelerator_type: str | None = option(None, help="vllm: GPU type the engines need, e.g. H100", runtime=True)
    resources: dict = option(
        {},
        help="custom resources per engine replica (vllm: added to its first bundle), e.g. {\"gpu_stage\": 1}",
        runtime=True,
    )
    max_model_len: int = option(8192, help="vllm: context length of the engine")
    dtype: str = option(
        "auto",
        choices=DTYPES,
        help="vllm and transformers: the model's compute dtype; auto: bfloat16 on GPUs and on "
        "CPUs with AVX512-BF16/AMX, float32 on other CPUs (lrat_ray.infra.hardware)",
    )
    engine_kwargs: dict = option(
        {}, help="vllm: extra engine arguments (JSON), e.g. {\"max_num_seqs\": 64}", runtime=True
    )
    start_timeout_s: float = option(
        900.0,
        help="fail if the engines have not started after this long (instead of waiting forever for resources)",
        runtime=True,
    )

    def __post_init__(self):
        if bool(self.pairs) == bool(self.events):
            raise ValueError("give exactly one of --pairs (mined pairs) and --events (trajectories)")
        if BACKENDS[self.backend].needs_model and not self.model:
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
        return self.model if BACKENDS[self.backend].needs_model else self.backend

    @property
    def uses_model(self) -> bool:
        return BACKENDS[self.backend].needs_model

    @property
    def output_table(self) -> str:
        return "labels" if self.events else "pairs"
