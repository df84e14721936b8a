"""``AblationConfig`` and the experiment's fixed vocabulary: agents, arms, metrics and the
pre-registered comparisons."""

from __future__ import annotations

from dataclasses import dataclass

from lrat_ray.core.loss import ABLATIONS
from lrat_ray.infra.config import checked, option
from lrat_ray.infra.hardware import parse_auto

AGENT_VARIANTS = ("informative", "control")
ARMS = ("oracle",) + ABLATIONS
STREAMS = ("common", "independent")
METRICS = ("ndcg@10", "mrr@100", "recall@100", "evidence_recall")
PRIMARY_METRIC = "ndcg@10"
# The pre-registered comparisons (agent, arm) - (agent, naive), Holm-corrected together.
PRIMARY = (
    ("LRAT - naive", "informative", "reweight"),
    ("oracle - naive", "informative", "oracle"),
    ("control: LRAT - naive", "control", "reweight"),
)
ARM_LABELS = {
    "oracle": "oracle (qrels filter)",
    "naive": "naive",
    "filter": "+filter",
    "reweight-unfiltered": "+reweight",
    "reweight": "+filter +reweight",
}


@dataclass
@checked
class AblationConfig:
    """Options of ``lrat ablation`` (YAML: an ``ablation:`` section; ``agent:`` sets AgentConfig fields)."""

    corpus: list[str] = option(help="corpus files (BEIR JSONL or Parquet)", path=True)
    queries: str = option(help="task texts: BEIR queries.jsonl", path=True)
    train_qrels: str = option(help="judgments of the training tasks", path=True)
    heldout_qrels: str = option(help="judgments of the held-out tasks", path=True)
    output: str = option("runs/ablation", help="directory for pairs, per-arm results and the report")
    model: str = option("embedded", help="starting retriever (every arm trains from it)", path=True)
    seeds: list[int] = option(
        [0, 1, 2, 3, 4],
        help="seeds (the unit of the primary tests; at least 5 for the full run, as many as --pilot says are "
        "needed); the report covers these seeds, and a rerun into the same --output trains only the cells "
        "it has not finished (so seeds can be added)",
    )
    train_tasks: int | None = option(None, help="training tasks per seed (default all; fewer: sampled per seed)")
    heldout_tasks: int | None = option(None, help="held-out tasks scored (default all)")
    agents: list[str] = option(list(AGENT_VARIANTS), help="agent variants: informative, control")
    arms: list[str] = option(
        ["oracle", "naive", "reweight"], help=f"arms trained on the informative agent's pairs, of {list(ARMS)}"
    )
    control_arms: list[str] = option(
        ["naive", "reweight"],
        help="arms trained on the control agent's pairs (no oracle: it does not depend on the reasoning)",
    )
    stream: str = option(
        "common",
        choices=STREAMS,
        help="common: every arm of a seed trains on one batch stream (the naive arm's pairs, "
        "order, negatives and dropout masks), filtered pairs at weight 0, loss normalised "
        "by the batch's weight sum: arms differ only in pair weights (common random "
        "numbers); independent: each arm its own pairs and stream (the earlier design)",
    )
    steps: int = option(48, help="optimizer steps per arm (the same for every arm)")
    batch: int = option(32, help="pairs per step")
    group_size: int = option(2, help="documents per pair: positive + (group_size-1) in-set negatives")
    learning_rate: float = option(1e-4, help="peak learning rate")
    temperature: float = option(0.05, help="InfoNCE temperature")
    document_max_length: int = option(64, help="document tokens (training and indexing)")
    bf16: bool | None = option(
        None,
        convert=parse_auto,
        default_text="auto",
        help="bf16 autocast for training and encoding (auto: where the CPU computes bf16 "
        "natively; lrat_ray.infra.hardware)",
    )
    depth: int = option(100, help="documents retrieved per held-out task")
    equivalence_margin: float = option(0.005, help="the control's equivalence margin on nDCG@10 (TOST over seeds)")
    pilot: bool = option(
        False,
        help="only the pilot: the first seed's informative pairs, naive and LRAT under two "
        "order seeds; prints the spread of their difference and the seeds needed "
        "for 80%% power (minutes)",
        runtime=True,
    )
    agent: dict = option({}, help="AgentConfig fields of both agents (control adds reasoning_signal: false)")

    def __post_init__(self):
        bad = sorted(set(self.agents) - set(AGENT_VARIANTS)) + sorted(set(self.arms + self.control_arms) - set(ARMS))
        if bad:
            raise ValueError(
                f"unknown agent variant(s) or arm(s) {bad}; agents {list(AGENT_VARIANTS)}, arms {list(ARMS)}"
            )
        if "naive" not in self.arms or "naive" not in self.control_arms:
            raise ValueError("arms must include naive: every other arm is compared with it")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError("seeds must be distinct and non-empty")
        if self.steps < 1 or self.batch < 2 or self.group_size < 1 or (self.train_tasks or 1) < 1:
            raise ValueError("steps, train_tasks and group_size must be >= 1 and batch >= 2")
