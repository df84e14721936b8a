"""``lrat ablation``: can a run of this size detect what LRAT's judge filter and weights do, and do they?

The paper's ablation (Fig. 7) compares training on every browse (naive), on the browses the judge
keeps (+filter) and with the reasoning-length weights (+reweight). In a simulation those signals
are only there if the simulated agent puts them there, so this experiment uses the ``simulated``
agent (:mod:`lrat_ray.agents.rollout`), which chooses what to read from snippets (most of its browses are
of documents not judged relevant) and whose notes after reading follow the judgments (an
assumption: the input, not a finding), and a **control agent** that browses the same way but
writes notes independent of what it read: there the judge and the weights carry no information.
Per seed (the seed chooses the rollouts and the training stream):

1. both agents solve every training task (``train_tasks``: all by default) against the untrained
   retriever (an in-process FAISS index, the result shape of ``lrat serve``);
2. the runs are mined (:mod:`lrat_ray.core.mining`), judged by the ``keyword`` judge and weighted
   (:mod:`lrat_ray.core.weighting`; zero-length reasoning weight 1, as the official code);
3. one model per arm, all from the same start for the same steps. With ``stream: common`` (the
   default: **common random numbers**) every arm of a seed trains on one batch stream, the naive
   arm's: the same pairs in the same order, the same negatives and dropout masks; an arm differs
   only in each pair's weight (0 for a pair it filters out, the rest rescaled to mean 1 over the
   kept pairs) and the loss is normalised by the batch's weight sum, so a filtered pair adds
   nothing to the loss while its documents stay in-batch negatives. Arms: ``oracle`` (the pairs the
   judgments call relevant: a perfect judge), ``naive``, ``filter``, ``reweight-unfiltered``,
   ``reweight`` (LRAT). ``stream: independent`` gives each arm its own pairs and stream (the earlier
   design, for comparison);
4. each model indexes the corpus and is scored on the held-out tasks: nDCG@10 (primary), MRR@100,
   Recall@100, and the informative agent's evidence recall solving the held-out tasks with it.

Statistics (:mod:`lrat_ray.experiments.ablation_stats`): the seed is the unit. Pre-registered primary
comparisons on nDCG@10, Holm-corrected together: LRAT - naive, oracle - naive, control LRAT -
naive, each a paired t-test over seeds with a seed x claim bootstrap interval; the control's
equivalence (TOST, +/- ``equivalence_margin``); the A/A calibration (naive on the control agent's
pairs - naive on the informative agent's: the same browsing); the share of the oracle's gain LRAT
recovers; the effect each test detects at 80% power given the spread it saw. Per-claim tests on
seed-averaged scores are reported only as conditional on the trained models. ``--pilot`` (minutes)
trains naive and LRAT on the first seed's pairs under two order seeds and prints how many seeds a
given effect needs. Runs in this process (no Ray): many small trainings, where a worker group's
start-up would cost more than the training; every finished arm is saved, so a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np

from lrat_ray import __version__
from lrat_ray.core.loss import ABLATIONS
from lrat_ray.infra import storage
from lrat_ray.infra.config import checked, option
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import parse_auto, resolve_bf16

log = logging.getLogger(__name__)
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
        help="seeds (the unit of the primary tests; at least 5 for the full run, as many as --pilot says are needed)",
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


@dataclass
class Experiment:
    """What every arm shares: tasks, judgments, corpus and the untrained index."""

    config: AblationConfig
    queries: dict[str, str]
    train_qrels: dict[str, dict[str, int]]
    heldout: dict[str, str]
    heldout_qrels: dict[str, dict[str, int]]
    disjoint: list[str]
    doc_ids: list[str]
    titles: list[str]
    texts: list[str]
    searchable: list[str]
    base_spec: object

    @functools.cached_property
    def text_of(self) -> dict[str, str]:
        """doc id -> the searchable text (what training encodes and the index holds)."""
        return dict(zip(self.doc_ids, self.searchable))


def run_ablation(config: AblationConfig) -> dict:
    """Run every seed x agent x arm (resuming finished ones) and write the report; with
    ``config.pilot`` only the pilot (:func:`run_pilot`)."""
    started = time.time()
    setup = _setup(config)
    if config.pilot:
        return run_pilot(config, setup, started)
    exp, base_retriever, base = setup
    cells: dict[tuple[str, str], dict[int, dict]] = {}
    pair_stats = {}
    for seed in config.seeds:
        tasks = _train_tasks(exp, seed)
        for variant in config.agents:
            pairs = _pairs(exp, base_retriever, tasks, variant, seed)
            pair_stats[f"seed-{seed}/{variant}"] = _pair_summary(pairs)
            for arm in config.arms if variant == "informative" else config.control_arms:
                cells.setdefault((variant, arm), {})[seed] = _arm_cell(exp, pairs, arm, seed, seed, variant)
                log.info("seed %d %s %s done (%.0f s)", seed, variant, arm, time.time() - started)
    report = summarize(cells, base, exp.disjoint, config.seeds, config.equivalence_margin)
    report.update(
        pairs=pair_stats,
        config=dataclasses.asdict(config),
        lrat_ray=__version__,
        heldout_tasks=len(exp.heldout),
        disjoint_tasks=len(exp.disjoint),
        precision="bf16" if resolve_bf16(config.bf16, "cpu") else "fp32",
        wall_seconds=round(time.time() - started, 1),
    )
    storage.write_json_atomic(os.path.join(config.output, "report.json"), report)
    storage.write_bytes_atomic(os.path.join(config.output, "results.md"), render_markdown(report).encode())
    plot(report, os.path.join(config.output, "results.png"))
    return report


def run_pilot(config: AblationConfig, setup, started: float) -> dict:
    """The pilot: the first seed's informative pairs, naive and LRAT each trained under two order
    seeds (the seed itself, whose cells the full run reuses, and seed + 1000), and the oracle under
    the first; five trainings, the oracle first: whether the learning rate moves the oracle clearly
    (up) shows first. The spread of the
    LRAT - naive difference between order seeds estimates the training noise of a seed-level
    difference; from it, the seeds a full run needs to detect a given effect at 80% power. It
    leaves out the rollouts' share of the seed-to-seed spread (one rollout here), so read its
    counts as a lower bound; the full run reports the spread it actually saw."""
    from lrat_ray.experiments import ablation_stats as st

    exp, base_retriever, base = setup
    seed = config.seeds[0]
    pairs = _pairs(exp, base_retriever, _train_tasks(exp, seed), "informative", seed)
    qids = sorted(base)
    scores = {}
    for order in (seed, seed + 1000):
        for arm in ("oracle", "naive", "reweight") if order == seed else ("naive", "reweight"):
            cell = _arm_cell(exp, pairs, arm, seed, order, "informative")
            scores[(arm, order)] = float(np.mean([cell[q][PRIMARY_METRIC] for q in qids]))
            log.info(
                "pilot: %s, order seed %d: nDCG@10 %.4f (%.0f s)",
                arm,
                order,
                scores[(arm, order)],
                time.time() - started,
            )
    diffs = [scores[("reweight", o)] - scores[("naive", o)] for o in (seed, seed + 1000)]
    sd = abs(diffs[0] - diffs[1]) / math.sqrt(2)  # the sample sd of two values
    base_score = float(np.mean([base[q][PRIMARY_METRIC] for q in qids]))
    oracle_gain = scores[("oracle", seed)] - scores[("naive", seed)]
    effects = sorted({0.0025, 0.005, 0.01, 0.02, round(abs(oracle_gain), 4)} - {0.0})
    report = {
        "seed": seed,
        "order_seeds": [seed, seed + 1000],
        "base": base_score,
        "scores": {f"{arm}/order-{o}": v for (arm, o), v in scores.items()},
        "lrat_minus_naive": diffs,
        "aa_naive": scores[("naive", seed + 1000)] - scores[("naive", seed)],
        "naive_minus_untrained": scores[("naive", seed)] - base_score,
        "oracle_minus_untrained": scores[("oracle", seed)] - base_score,
        "oracle_minus_naive": oracle_gain,
        "sd_of_difference": sd,
        "seeds_needed_80": {f"{e:.4f}": st.seeds_needed(e, sd) if sd > 0 else None for e in effects},
        "pairs": _pair_summary(pairs),
        "wall_seconds": round(time.time() - started, 1),
    }
    storage.write_json_atomic(os.path.join(config.output, "pilot", "report.json"), report)
    storage.write_bytes_atomic(os.path.join(config.output, "pilot", "results.md"), render_pilot(report).encode())
    return report


def render_pilot(report: dict) -> str:
    lines = [
        f"Pilot (seed {report['seed']}, order seeds {report['order_seeds']}, {report['wall_seconds']:.0f} s): "
        f"nDCG@10 untrained {report['base']:.4f}, oracle - untrained {report['oracle_minus_untrained']:+.4f}, "
        f"naive - untrained {report['naive_minus_untrained']:+.4f}, oracle - naive "
        f"{report['oracle_minus_naive']:+.4f}, "
        f"LRAT - naive {report['lrat_minus_naive'][0]:+.4f} / {report['lrat_minus_naive'][1]:+.4f}, "
        f"A/A (naive, two order seeds) {report['aa_naive']:+.4f}; sd of the LRAT - naive difference "
        f"between order seeds {report['sd_of_difference']:.4f} (from 2 values: a rough estimate, and "
        "without the rollouts' share).",
        "",
        "| true effect (nDCG@10) | seeds for 80% power |",
        "|---:|---:|",
    ]
    for effect, n in report["seeds_needed_80"].items():
        lines.append(f"| {effect} | {n if n is not None else 'n/a (no spread seen)'} |")
    return "\n".join(lines) + "\n"


def _setup(config: AblationConfig):
    """The experiment, the untrained retriever every agent searches, and its held-out scores."""
    import torch

    from lrat_ray.agents.retrievers import LocalRetriever

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    _claim_output(config)
    exp = _experiment(config)
    base_encoder = _encoder(exp.base_spec, bf16=config.bf16)
    base_index = _index(exp, base_encoder, os.path.join(config.output, "base", "vectors.npy"))
    base_retriever = LocalRetriever(base_index, base_encoder)
    base = _cached(
        os.path.join(config.output, "base", "per_query.json"),
        lambda: _measure(exp, base_encoder, base_index, config.seeds[0]),
    )
    return exp, base_retriever, base


# ---------------------------------------------------------------------------------------------
# Setting up
# ---------------------------------------------------------------------------------------------


def _claim_output(config: AblationConfig) -> None:
    """Finished arms are reused on a rerun, so an output directory belongs to one experiment: the
    same settings (seeds, arms and agents may grow) or a clear error."""
    path = os.path.join(config.output, "experiment.json")
    settings = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in ("output", "seeds", "agents", "arms", "control_arms", "pilot", "equivalence_margin")
    }
    if os.path.isfile(path):
        with open(path) as fh:
            previous = json.load(fh)
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise LratError(f"{config.output} holds an ablation with other settings ({changed}); use another --output")
        return
    storage.write_json_atomic(path, settings)


def _experiment(config: AblationConfig) -> Experiment:
    from lrat_ray.core.corpus import document_text, iter_documents
    from lrat_ray.core.datasets import load_qrels, load_queries
    from lrat_ray.models.encoder import spec_for

    queries = load_queries(config.queries)
    train_qrels = load_qrels(config.train_qrels)
    heldout_qrels = load_qrels(config.heldout_qrels)
    overlap = sorted(set(train_qrels) & set(heldout_qrels))
    if overlap:
        raise LratError(
            f"{config.heldout_qrels}: {len(overlap)} held-out task(s) also in {config.train_qrels}, e.g. {overlap[:3]}"
        )
    ids = sorted(q for q in heldout_qrels if q in queries and any(g > 0 for g in heldout_qrels[q].values()))
    if config.heldout_tasks:
        ids = sorted(random.Random(0).sample(ids, min(config.heldout_tasks, len(ids))))
    train_docs = {d for judged in train_qrels.values() for d, g in judged.items() if g > 0}
    disjoint = [q for q in ids if not {d for d, g in heldout_qrels[q].items() if g > 0} & train_docs]
    doc_ids, titles, texts, searchable = [], [], [], []
    for doc_id, record in iter_documents(storage.expand_inputs(config.corpus)):
        doc_ids.append(doc_id)
        titles.append(record.get("title") or "")
        texts.append(record.get("text") or "")
        searchable.append(document_text(record))
    return Experiment(
        config,
        queries,
        train_qrels,
        {q: queries[q] for q in ids},
        {q: heldout_qrels[q] for q in ids},
        disjoint,
        doc_ids,
        titles,
        texts,
        searchable,
        spec_for(config.model, document_max_length=config.document_max_length),
    )


def _train_tasks(exp: Experiment, seed: int):
    from lrat_ray.agents.tasks import load_tasks

    ids = sorted(q for q in exp.train_qrels if q in exp.queries)
    if exp.config.train_tasks is None or exp.config.train_tasks >= len(ids):
        return load_tasks(exp.queries, exp.train_qrels, ids)  # every training task, every seed
    chosen = sorted(random.Random(f"tasks:{seed}").sample(ids, exp.config.train_tasks))
    return load_tasks(exp.queries, exp.train_qrels, chosen)


def _encoder(spec, model=None, tokenizer=None, bf16: bool | None = None):
    from lrat_ray.models.encoder import Encoder

    return Encoder(spec, device="cpu", bf16=bf16) if model is None else Encoder.wrap(spec, model, tokenizer, bf16=bf16)


def _index(exp: Experiment, encoder, cache: str | None = None):
    """The corpus indexed with ``encoder``; ``cache``: the vectors saved there (the untrained
    model's, which a resumed run or the full run after the pilot need not encode again)."""
    import pyarrow as pa

    from lrat_ray.stages.index import RetrievalIndex

    if cache and os.path.isfile(cache):
        vectors = np.load(cache)
    else:
        vectors = encoder.encode_documents(exp.searchable)
        if cache:
            storage.write_bytes_atomic(cache, storage.npy_bytes(vectors))
    documents = pa.table({"doc_id": exp.doc_ids, "title": exp.titles, "text": exp.texts})
    return RetrievalIndex.in_memory(
        vectors, documents, {"encoder": dataclasses.asdict(encoder.spec)}, exp.config.output
    )


def _measure(exp: Experiment, encoder, index, seed: int) -> dict:
    """Per held-out task: nDCG@10, MRR@100 and Recall@100 of the retriever, and the evidence
    recall of the informative agent solving the task with it (seeded like the training rollouts)."""
    import pytrec_eval

    from lrat_ray.agents.config import AgentConfig
    from lrat_ray.agents.retrievers import LocalRetriever
    from lrat_ray.agents.simulated import run_simulated
    from lrat_ray.agents.tasks import load_tasks
    from lrat_ray.core.adapters import parse_trajectory
    from lrat_ray.core.metrics import score_run, score_trajectories, truncate

    qids = list(exp.heldout)
    hits = index.search(encoder.encode_queries([exp.heldout[q] for q in qids]), exp.config.depth)
    run = {q: dict(h) for q, h in zip(qids, hits)}
    per_query = score_run(run, exp.heldout_qrels, [10, 100])["per_query"]
    mrr = pytrec_eval.RelevanceEvaluator(exp.heldout_qrels, {"recip_rank"})
    for q, values in mrr.evaluate(truncate({q: run.get(q, {}) for q in per_query}, 100)).items():
        per_query[q]["mrr@100"] = values["recip_rank"]
    agent = AgentConfig(
        **{"max_turns": 4, **exp.config.agent, "kind": "simulated", "seed": seed, "reasoning_signal": True}
    )
    retriever = LocalRetriever(index, encoder)
    runs = [run_simulated(task, retriever, agent) for task in load_tasks(exp.queries, exp.heldout_qrels, qids)]
    agents = score_trajectories([parse_trajectory(r) for r in runs], exp.heldout_qrels)["per_task"]
    for q in per_query:
        per_query[q]["evidence_recall"] = agents.get(q, {}).get("evidence_recall", 0.0)
    return _only_metrics(per_query)


def _cached(path: str, compute):
    if os.path.isfile(path):
        with open(path) as fh:
            return json.load(fh)
    value = compute()
    storage.write_json_atomic(path, value)
    return value


# ---------------------------------------------------------------------------------------------
# Rollouts -> judged, weighted pairs
# ---------------------------------------------------------------------------------------------


def _pairs(exp: Experiment, retriever, tasks, variant: str, seed: int) -> list[dict]:
    """The variant's judged, weighted pairs for this seed (rolled out and mined once, then read back)."""
    path = os.path.join(exp.config.output, f"seed-{seed}", variant, "pairs.json.gz")
    if os.path.isfile(path):
        with gzip.open(path, "rt") as fh:
            return json.load(fh)
    pairs = mine_and_judge(_rollouts(exp, retriever, tasks, variant, seed), tasks)
    storage.write_bytes_atomic(path, gzip.compress(json.dumps(pairs).encode()))
    return pairs


def _rollouts(exp: Experiment, retriever, tasks, variant: str, seed: int) -> list[dict]:
    from lrat_ray.agents.config import AgentConfig
    from lrat_ray.agents.simulated import run_simulated

    agent = AgentConfig(
        **{
            "max_turns": 4,
            **exp.config.agent,
            "kind": "simulated",
            "seed": seed,
            "reasoning_signal": variant == "informative",
        }
    )
    return [run_simulated(task, retriever, agent) for task in tasks]


def mine_and_judge(runs: list[dict], tasks) -> list[dict]:
    """Pairs of the runs (attributed mode) with the keyword judge's label, the qrels' verdict
    (``useful``, for the oracle arm), the reasoning length in tokens and the LRAT weight fitted over
    all pairs (zero-length reasoning: weight 1, left out of beta and mu, as the official code)."""
    from lrat_ray.core.adapters import parse_trajectory
    from lrat_ray.core.mining import mine_trajectories
    from lrat_ray.core.weighting import LengthHistogram, fit_weights
    from lrat_ray.stages.judge.backends import BACKENDS
    from lrat_ray.stages.mine import length_measure

    judgments = {t.id: t.judgments for t in tasks}
    judge = BACKENDS["keyword"].label  # the judge stage's keyword backend, row by row
    result = mine_trajectories([parse_trajectory(run) for run in runs], measure=length_measure("embedded"))
    params = fit_weights(LengthHistogram.of(p.reasoning_length for p in result.pairs), zero_length="neutral")
    return [
        {
            "task": p.trajectory_id,
            "query": p.query,
            "positive_id": p.positive_id,
            "negative_ids": p.negative_ids,
            "reasoning_length": p.reasoning_length,
            "relevant": judge(p.reasoning),
            "useful": judgments[p.trajectory_id].get(p.positive_id, 0) > 0,
            "weight": params.weight(p.reasoning_length),
        }
        for p in result.pairs
    ]


def _pair_summary(pairs: list[dict]) -> dict:
    useful = [p["useful"] for p in pairs]
    kept = [p for p in pairs if p["relevant"]]
    weights = {u: [p["weight"] for p in pairs if p["useful"] == u] for u in (True, False)}
    return {
        "pairs": len(pairs),
        "useful_share": _mean(useful),
        "judge_kept": len(kept),
        "judge_kept_useful_share": _mean([p["useful"] for p in kept]),
        "mean_weight_useful": _mean(weights[True]),
        "mean_weight_useless": _mean(weights[False]),
    }


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


# ---------------------------------------------------------------------------------------------
# One arm
# ---------------------------------------------------------------------------------------------


def arm_weights(pairs: list[dict], arm: str) -> list[float]:
    """Each pair's weight in ``arm`` over the common stream: 0 for a pair the arm filters out, the
    others rescaled to mean 1 over the pairs kept (so with the loss normalised by the batch's
    weight sum, filtering is exactly "weight 0" and no arm trains at a larger effective rate)."""
    from lrat_ray.core.loss import ablation_weights

    relevant = [p["useful"] for p in pairs] if arm == "oracle" else [p["relevant"] for p in pairs]
    weights, keep = ablation_weights([p["weight"] for p in pairs], relevant, "filter" if arm == "oracle" else arm)
    if not any(keep):
        raise LratError(f"arm {arm}: no pairs left to train on")
    return [w if k else 0.0 for w, k in zip(weights, keep)]


def arm_examples(pairs: list[dict], arm: str, texts: dict[str, str], stream: str = "common") -> list[dict]:
    """Training examples of one arm; texts of positives and negatives from the corpus. ``common``:
    every pair, the arm's weights (:func:`arm_weights`); ``independent``: only the pairs the arm
    keeps, so its batches are its own."""
    weights = arm_weights(pairs, arm)
    examples = [
        {
            "query": p["query"],
            "positive": texts[p["positive_id"]],
            "negatives": [texts[d] for d in p["negative_ids"] if d in texts],
            "weight": w,
        }
        for p, w in zip(pairs, weights)
    ]
    return examples if stream == "common" else [e for e in examples if e["weight"] > 0]


def _arm_cell(exp: Experiment, pairs: list[dict], arm: str, seed: int, order_seed: int, variant: str) -> dict:
    """One arm's per-query metrics (saved; a rerun reads them back). ``seed`` chose the rollouts,
    ``order_seed`` the training stream (the batch order, negatives and dropout masks)."""
    root = exp.config.output if order_seed == seed else os.path.join(exp.config.output, "pilot", f"order-{order_seed}")
    path = os.path.join(root, f"seed-{seed}", variant, arm, "per_query.json")
    return _cached(path, lambda: _train_and_score(exp, pairs, arm, seed, order_seed))


def arm_train_config(config: AblationConfig, order_seed: int):
    """The in-process training of every arm: same start, steps, batch and stream seed."""
    from lrat_ray.stages.train import TrainConfig

    return TrainConfig(
        pairs=[],
        output="",
        model=config.model,
        workers=1,
        per_device_batch=config.batch,
        group_size=config.group_size,
        learning_rate=config.learning_rate,
        temperature=config.temperature,
        document_max_length=config.document_max_length,
        bf16=config.bf16,
        seed=order_seed,
        normalization="weight_sum" if config.stream == "common" else "mean",
    )


def _train_and_score(exp: Experiment, pairs: list[dict], arm: str, seed: int, order_seed: int) -> dict:
    from lrat_ray.stages.train import fit_in_process

    config = exp.config
    fitted = fit_in_process(
        arm_train_config(config, order_seed), arm_examples(pairs, arm, exp.text_of, config.stream), config.steps
    )
    encoder = _encoder(fitted["spec"], fitted["model"], fitted["tokenizer"], bf16=config.bf16)
    return _measure(exp, encoder, _index(exp, encoder), seed)


def _only_metrics(per_query: dict) -> dict:
    return {q: {m: v for m, v in metrics.items() if m in METRICS} for q, metrics in per_query.items()}


# ---------------------------------------------------------------------------------------------
# Statistics and the report
# ---------------------------------------------------------------------------------------------


def mean_interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean and a t-interval (half-width) over independent runs (seeds)."""
    from scipy import stats

    values = [float(v) for v in values]
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"mean": mean, "half_width": None, "n": len(values)}
    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return {
        "mean": mean,
        "half_width": float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem,
        "n": len(values),
    }


def summarize(
    cells: dict[tuple[str, str], dict[int, dict]],
    base: dict,
    disjoint: list[str],
    seeds: list[int],
    margin: float = 0.005,
) -> dict:
    """Arm means with seed-level intervals (all held-out tasks and the disjoint ones), the
    pre-registered seed-level comparisons (paired t over seeds, seed x claim bootstrap, Holm over
    :data:`PRIMARY` on nDCG@10), the control's equivalence test, the A/A calibration, the share of
    the oracle's gain LRAT recovers, the effect detectable at 80% power, exploratory comparisons
    for the other arms and, labelled conditional, per-claim tests on seed-averaged scores."""
    from lrat_ray.core.metrics import paired_comparison
    from lrat_ray.experiments import ablation_stats as st

    qids = sorted(base)
    subsets = {"all": qids, "disjoint": sorted(disjoint)}
    rows = []
    for (variant, arm), by_seed in sorted(cells.items(), key=lambda kv: (kv[0][0], ARMS.index(kv[0][1]))):
        for subset, ids in subsets.items():
            row = {"agent": variant, "arm": arm, "subset": subset, "queries": len(ids), "seeds": sorted(by_seed)}
            for metric in METRICS:
                row[metric] = mean_interval([np.mean([by_seed[s][q][metric] for q in ids]) for s in sorted(by_seed)])
            rows.append(row)
    base_rows = [
        {"subset": subset, "queries": len(ids), **{m: float(np.mean([base[q][m] for q in ids])) for m in METRICS}}
        for subset, ids in subsets.items()
    ]

    def matrix(key, metric, seeds):  # [seeds, claims] of one arm
        return np.array([[cells[key][s][q][metric] for q in qids] for s in seeds])

    comparisons = []
    for label, variant, arm in PRIMARY + tuple(
        (f"{variant}: {ARM_LABELS[arm]} - naive", variant, arm)
        for variant, arm in sorted(cells)
        if arm not in ("naive", "oracle") and (variant, arm) not in {(v, a) for _, v, a in PRIMARY}
    ):
        if (variant, arm) not in cells or (variant, "naive") not in cells:
            continue
        common = sorted(set(cells[(variant, arm)]) & set(cells[(variant, "naive")]))
        entry = {
            "label": label,
            "agent": variant,
            "arm": arm,
            "seeds": common,
            "primary": any(label == p[0] for p in PRIMARY),
        }
        for metric in METRICS:
            naive, other = (matrix((variant, "naive"), metric, common), matrix((variant, arm), metric, common))
            entry[metric] = {
                **st.paired_seed_test(naive.mean(axis=1), other.mean(axis=1)),
                "bootstrap": st.bootstrap_interval(other - naive) if len(common) > 1 else None,
            }
        entry["per_claim_conditional"] = paired_comparison(
            _seed_average({s: cells[(variant, "naive")][s] for s in common}, qids),
            _seed_average({s: cells[(variant, arm)][s] for s in common}, qids),
            PRIMARY_METRIC,
        )
        comparisons.append(entry)
    primary = [c for c in comparisons if c["primary"]]
    adjusted = st.holm({c["label"]: c[PRIMARY_METRIC]["p"] for c in primary})
    for c in primary:
        c["holm_p"] = adjusted[c["label"]]
        c["detected"] = c["holm_p"] is not None and c["holm_p"] < 0.05
        sd = c[PRIMARY_METRIC]["sd"]
        c["min_detectable_effect_80"] = st.min_detectable_effect(sd, len(c["seeds"])) if sd else None
    extra = {}
    control = next((c for c in comparisons if c["label"] == "control: LRAT - naive"), None)
    if control:
        common = control["seeds"]
        diff = matrix(("control", "reweight"), PRIMARY_METRIC, common) - matrix(
            ("control", "naive"), PRIMARY_METRIC, common
        )
        extra["control_equivalence"] = st.equivalence_test(diff.mean(axis=1), margin)
    if ("informative", "naive") in cells and ("control", "naive") in cells:
        common = sorted(set(cells[("informative", "naive")]) & set(cells[("control", "naive")]))
        first = matrix(("informative", "naive"), PRIMARY_METRIC, common)
        second = matrix(("control", "naive"), PRIMARY_METRIC, common)
        extra["aa"] = {
            "label": "naive (control agent) - naive (informative agent)",
            **st.paired_seed_test(first.mean(axis=1), second.mean(axis=1)),
            "bootstrap": st.bootstrap_interval(second - first) if len(common) > 1 else None,
        }
    if all(k in cells for k in (("informative", "reweight"), ("informative", "oracle"), ("informative", "naive"))):
        common = sorted(
            set(cells[("informative", "reweight")])
            & set(cells[("informative", "oracle")])
            & set(cells[("informative", "naive")])
        )
        naive = matrix(("informative", "naive"), PRIMARY_METRIC, common)
        gain = matrix(("informative", "reweight"), PRIMARY_METRIC, common) - naive
        oracle = matrix(("informative", "oracle"), PRIMARY_METRIC, common) - naive
        extra["oracle_share"] = (
            st.bootstrap_interval(gain, denominator=oracle)
            if len(common) > 1
            else {"mean": float(gain.mean() / oracle.mean()) if oracle.mean() else None, "low": None, "high": None}
        )
    return {"rows": rows, "base": base_rows, "seeds": seeds, "comparisons": comparisons, **extra}


def _seed_average(by_seed: dict[int, dict], qids: list[str]) -> dict[str, dict]:
    return {q: {m: float(np.mean([by_seed[s][q][m] for s in by_seed])) for m in METRICS} for q in qids}


def render_markdown(report: dict) -> str:
    seeds = len(report["seeds"])
    lines = [
        f"Held-out scores: mean over {seeds} seeds ± 95% t-interval over seeds (the seed is the unit: "
        "rollouts, batch stream and dropout).",
        "",
    ]
    for subset in ("all", "disjoint"):
        base = next(b for b in report["base"] if b["subset"] == subset)
        title = (
            "all held-out tasks"
            if subset == "all"
            else "held-out tasks sharing no relevant document with any training task"
        )
        lines += [
            f"**{title}** ({base['queries']} tasks; untrained: nDCG@10 {base['ndcg@10']:.4f}, MRR@100 "
            f"{base['mrr@100']:.4f}, Recall@100 {base['recall@100']:.4f}, evidence recall "
            f"{base['evidence_recall']:.4f})",
            "",
            "| agent | arm | nDCG@10 | MRR@100 | Recall@100 | agent evidence recall |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in (r for r in report["rows"] if r["subset"] == subset):
            lines.append(
                f"| {row['agent']} | {ARM_LABELS[row['arm']]} | " + " | ".join(_fmt(row[m]) for m in METRICS) + " |"
            )
        lines.append("")
    lines += [
        "**Comparisons on nDCG@10, all held-out tasks** (Δ = arm - naive of the same agent, paired by seed; "
        "pre-registered: the first three, Holm-corrected together; the rest exploratory, uncorrected)",
        "",
        "| comparison | Δ | 95% CI (t over seeds) | 95% CI (seed x claim bootstrap) | p (t over seeds) | "
        "Holm p | detected | effect detectable at 80% power |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for c in report["comparisons"]:
        t, boot = c[PRIMARY_METRIC], c[PRIMARY_METRIC]["bootstrap"]
        lines.append(
            f"| {c['label']}{'' if c['primary'] else ' (exploratory)'} | {t['mean']:+.4f} | "
            f"{_interval(t['low'], t['high'])} | {_interval(boot and boot['low'], boot and boot['high'])} | "
            f"{_p(t['p'])} | {_p(c.get('holm_p'))} | "
            f"{'' if 'detected' not in c else ('yes' if c['detected'] else 'no')} | "
            f"{_num(c.get('min_detectable_effect_80'))} |"
        )
    lines.append("")
    if "control_equivalence" in report:
        eq = report["control_equivalence"]
        lines.append(
            f"Control equivalence (TOST over seeds, margin ±{eq['margin']}): p = {_p(eq['p'])} "
            f"({'equivalent' if eq['p'] is not None and eq['p'] < 0.05 else 'equivalence not shown'})."
        )
    if "aa" in report:
        aa = report["aa"]
        lines.append(
            f"A/A calibration ({aa['label']}; both naive arms train on browses made the same way): "
            f"{aa['mean']:+.4f}, 95% CI {_interval(aa['low'], aa['high'])}, p = {_p(aa['p'])}."
        )
    if "oracle_share" in report:
        share = report["oracle_share"]
        interval = (
            _interval(share["low"], share["high"])
            if share["low"] is not None
            else "unbounded (the oracle's own gain is not clear of zero across the resamples)"
        )
        lines.append(
            f"Share of the oracle's gain that LRAT recovers: {_num(share['mean'])}, 95% bootstrap CI {interval}."
        )
    lines += [
        "",
        "Secondary measures (Δ vs naive, mean over seeds, 95% CI over seeds):",
        "",
        "| comparison | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for c in report["comparisons"]:
        lines.append(
            f"| {c['label']} | "
            + " | ".join(f"{c[m]['mean']:+.4f} {_interval(c[m]['low'], c[m]['high'])}" for m in METRICS)
            + " |"
        )
    lines += [
        "",
        "Per-claim tests, **conditional on the trained models** (scores averaged over seeds, paired by "
        "claim: training noise ignored, so these are not tests of the method):",
        "",
        "| comparison | wins / losses / ties | p (t) | p (perm.) |",
        "|---|---:|---:|---:|",
    ]
    for c in report["comparisons"]:
        pc = c["per_claim_conditional"]
        lines.append(
            f"| {c['label']} | {pc['wins_b']} / {pc['losses_b']} / {pc['ties']} | {_p(pc['t_test_p'])} | "
            f"{_p(pc['permutation_p'])} |"
        )
    lines += [
        "",
        "| seed/agent | pairs | useful share | judge kept | useful share of kept | mean w (useful) | "
        "mean w (useless) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, stats in report["pairs"].items():
        lines.append(
            f"| {key} | {stats['pairs']} | {_num(stats['useful_share'])} | {stats['judge_kept']} | "
            f"{_num(stats['judge_kept_useful_share'])} | {_num(stats['mean_weight_useful'])} | "
            f"{_num(stats['mean_weight_useless'])} |"
        )
    return "\n".join(lines) + "\n"


def _interval(low, high) -> str:
    return "-" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def _p(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt(cell: dict) -> str:
    if cell["half_width"] is None:
        return f"{cell['mean']:.4f}"
    return f"{cell['mean']:.4f} ± {cell['half_width']:.4f}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def plot(report: dict, path: str) -> None:
    """Left: nDCG@10 per arm (all held-out tasks) with seed-level 95% intervals, the untrained
    model as a line. Right: each comparison's Δ nDCG@10 vs naive with its seed-level interval
    (what the tests are about: the arms' own spread is mostly shared seed noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = [r for r in report["rows"] if r["subset"] == "all"]
    means = [r["ndcg@10"]["mean"] for r in rows]
    errors = [r["ndcg@10"]["half_width"] or 0.0 for r in rows]
    left.bar(
        range(len(rows)),
        means,
        yerr=errors,
        capsize=4,
        color=["tab:blue" if r["agent"] == "informative" else "tab:gray" for r in rows],
    )
    base = next(b for b in report["base"] if b["subset"] == "all")
    left.axhline(base["ndcg@10"], color="black", linestyle="--", linewidth=1, label="untrained")
    left.set_xticks(
        range(len(rows)), [f"{r['agent']}\n{ARM_LABELS[r['arm']]}" for r in rows], rotation=60, ha="right", fontsize=8
    )
    left.set_ylabel("nDCG@10 (mean ± 95% CI over seeds)")
    left.set_title(f"arms, {base['queries']} held-out tasks")
    left.legend(loc="lower right")
    low = min([m - e for m, e in zip(means, errors)] + [base["ndcg@10"]])
    high = max([m + e for m, e in zip(means, errors)] + [base["ndcg@10"]])
    left.set_ylim(low - 0.02, high + 0.02)
    comparisons = report.get("comparisons", [])
    deltas = [c["ndcg@10"]["mean"] for c in comparisons]
    lows = [c["ndcg@10"]["low"] if c["ndcg@10"]["low"] is not None else d for d, c in zip(deltas, comparisons)]
    highs = [c["ndcg@10"]["high"] if c["ndcg@10"]["high"] is not None else d for d, c in zip(deltas, comparisons)]
    bars = [[d - low for d, low in zip(deltas, lows)], [high - d for d, high in zip(deltas, highs)]]
    right.errorbar(deltas, range(len(comparisons)), xerr=bars, fmt="o", capsize=4)
    right.axvline(0, color="black", linewidth=1)
    if "control_equivalence" in report:
        margin = report["control_equivalence"]["margin"]
        right.axvspan(-margin, margin, color="tab:gray", alpha=0.15, label=f"±{margin} (equivalence margin)")
        right.legend(loc="lower right", fontsize=8)
    right.set_yticks(range(len(comparisons)), [c["label"] for c in comparisons], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("Δ nDCG@10 vs naive (mean, 95% CI over seeds)")
    right.set_title("paired comparisons")
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
