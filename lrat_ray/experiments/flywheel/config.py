"""``FlywheelConfig``: the loop's own options and its nested stage sections, each built into that
stage's typed config when the flywheel config is built."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from lrat_ray.infra.config import build_section, checked, option, section
from lrat_ray.registry import STAGES

RESOURCE_STAGES = ("index", "rollout", "mine", "train", "serve")
SECTIONS = ("index", "mine", "judge", "train", "agent", "agent_llm")


def _agent_config():
    from lrat_ray.agents.config import AgentConfig

    return AgentConfig


def _llm_serve_config():
    from lrat_ray.serving.llm import LLMServeConfig

    return LLMServeConfig


@dataclass
@checked
class FlywheelConfig:
    """Options of ``lrat flywheel`` (YAML: a ``flywheel:`` section). The sub-stages' own options
    are nested sections (``index``, ``mine``, ``judge``, ``train``, ``agent``, ``agent_llm``),
    each the options of that stage's config except the inputs and outputs the flywheel sets; every
    section is built into its typed config when this config is built, so a wrong option anywhere
    fails before any work, with the section and option named."""

    corpus: list[str] = option(help="corpus files (BEIR JSONL or Parquet)", path=True)
    queries: str = option(help="task questions: BEIR queries.jsonl", path=True)
    train_qrels: str = option(help="judgments of the training tasks", path=True)
    heldout_qrels: str | None = option(None, help="judgments of held-out tasks (else split train_qrels)", path=True)
    heldout_fraction: float = option(0.2, minimum=0, help="share of train_qrels held out when heldout_qrels is unset")
    output: str = option(
        "runs/flywheel",
        help="flywheel directory (local, or a URI: then the flywheel runs in a "
        "local scratch directory and uploads the finished one)",
    )
    iterations: int = option(2, minimum=0, help="training iterations after the baseline")
    train_tasks: int | None = option(
        None, minimum=1, help="training tasks rolled out per iteration (sampled; default all)"
    )
    heldout_tasks: int | None = option(None, minimum=1, help="held-out tasks evaluated (sampled once; default all)")
    model: str = option("embedded", help="starting retriever", path=True)
    document_max_length: int = option(256, minimum=1, help="document tokens for indexing and training")
    rollout_workers: int = option(2, minimum=1, help="rollout actors", runtime=True)
    port: int = option(8000, help="port of the served retriever (0: pick a free one)", runtime=True)
    serve_proxy_location: str = option(
        "EveryNode",
        choices=("EveryNode", "HeadOnly"),
        help="Ray Serve HTTP proxies: EveryNode lets rollout actors on any node "
        "reach the retriever at 127.0.0.1:PORT; HeadOnly when all nodes share "
        "one host (a simulated cluster), whose proxies would fight for the port",
        runtime=True,
    )
    seed: int = option(0, help="seed of the task split and sampling")
    index: dict = section(
        STAGES["index"].config_class,
        set_by=("corpus", "output", "model", "document_max_length"),
        help="IndexConfig options of every index built (workers: 2 unless set; index_type, batch_size, bf16, ...)",
    )
    mine: dict = section(
        STAGES["mine"].config_class,
        set_by=("input", "output", "labels"),
        help="MineConfig options (negative_mode, tokenizer, zero_length, workers: 1 unless set, "
        "...); with negative_mode since-last-positive the browse events are judged first "
        "and mined with the labels",
    )
    judge: dict = section(
        STAGES["judge"].config_class,
        set_by=("pairs", "events", "output"),
        help="JudgeConfig options (backend: keyword unless set, model, prompt, guided, "
        "on_failure, concurrency, endpoint, ...)",
    )
    train: dict = section(
        STAGES["train"].config_class,
        set_by=("pairs", "output", "model", "corpus"),
        help="TrainConfig options (workers, per_device_batch, learning_rate, backend, ...)",
    )
    agent: dict = section(_agent_config, help="AgentConfig options of the agents (kind, max_turns, k, ...)")
    agent_llm: dict = section(
        _llm_serve_config,
        help="LLMServeConfig options of the agents' LLM, served on Ray Serve beside the "
        "retriever while agents run (agent kind llm without an agent endpoint)",
    )
    resources: dict = option(
        {},
        help="custom resources per worker of each stage: a mapping from index, rollout, "
        "mine, train or serve to e.g. {\"cpu_stage\": 1} (a section's own "
        "resources option wins)",
        runtime=True,
    )
    stop_after: str | None = option(
        None, help="testing: stop the process after this stage, e.g. iter-1/judge", runtime=True
    )

    def __post_init__(self):
        unknown = sorted(set(self.resources) - set(RESOURCE_STAGES))
        if unknown:
            raise ValueError(f"resources: unknown stage(s) {unknown}; known: {list(RESOURCE_STAGES)}")
        self._sections = {name: self._build_section(name) for name in SECTIONS}
        self._sections["agent"].grader_config()

    def _build_section(self, name: str):
        try:
            return build_section(self, name, self._section_defaults(name))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"flywheel section {name}: {exc}") from None

    def _section_defaults(self, name: str) -> dict:
        """What the flywheel sets in a section's config (inputs, outputs) or defaults there."""
        return {
            "index": {
                "corpus": self.corpus,
                "output": self.output,
                "model": self.model,
                "workers": 2,
                "document_max_length": self.document_max_length,
                "resources": self.resources_of("index"),
            },
            "mine": {
                "input": [self.output],
                "output": self.output,
                "workers": 1,
                "resources": self.resources_of("mine"),
            },
            "judge": {"pairs": self.output, "output": self.output, "cache": os.path.join(self.output, "judge-cache")},
            "train": {
                "pairs": [self.output],
                "output": self.output,
                "corpus": self.corpus,
                "document_max_length": self.document_max_length,
                "resources": self.resources_of("train"),
            },
            "agent": {"seed": self.seed},
            "agent_llm": {},
        }[name]

    def resources_of(self, stage: str) -> dict:
        return dict(self.resources.get(stage) or {})

    def stage_config(self, name: str, **settings):
        """The typed config of sub-stage ``name`` (its section over the flywheel's defaults), with the
        inputs and output the flywheel sets for this run."""
        return dataclasses.replace(self._sections[name], **settings)

    @property
    def judges_events(self) -> bool:
        """The official builder's mode judges browses while mining: judge events, then mine with labels."""
        return (
            self._sections["mine"].negative_mode == "since-last-positive" and self._sections["judge"].backend != "none"
        )

    @property
    def serves_agent_llm(self) -> bool:
        """LLM agents with no endpoint of their own (the section sets none: AgentConfig's default
        endpoint is a placeholder) use the LLM the flywheel serves beside the retriever."""
        return self._sections["agent"].kind == "llm" and not self.agent.get("endpoint")
