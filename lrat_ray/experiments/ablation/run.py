"""Running the ablation: the shared setup (tasks, corpus, the untrained index), each seed's
rollouts and pairs, and each arm trained and scored in this process, every finished piece saved
so that a rerun resumes."""

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
from lrat_ray.experiments.ablation.arms import arm_examples, arm_train_config, mine_and_judge, pair_summary
from lrat_ray.experiments.ablation.config import METRICS, PRIMARY_METRIC, AblationConfig
from lrat_ray.experiments.ablation.report import plot, render_markdown, render_pilot, summarize
from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import resolve_bf16

log = logging.getLogger(__name__)


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
        tasks = training_tasks(exp, seed)
        for variant in config.agents:
            pairs = _pairs(exp, base_retriever, tasks, variant, seed)
            pair_stats[f"seed-{seed}/{variant}"] = pair_summary(pairs)
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
    from lrat_ray.experiments.ablation import stats as st

    exp, base_retriever, base = setup
    seed = config.seeds[0]
    pairs = _pairs(exp, base_retriever, training_tasks(exp, seed), "informative", seed)
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
        "pairs": pair_summary(pairs),
        "wall_seconds": round(time.time() - started, 1),
    }
    storage.write_json_atomic(os.path.join(config.output, "pilot", "report.json"), report)
    storage.write_bytes_atomic(os.path.join(config.output, "pilot", "results.md"), render_pilot(report).encode())
    return report


def _setup(config: AblationConfig):
    """The experiment, the untrained retriever every agent searches, and its held-out scores."""
    import torch

    from lrat_ray.agents.retrievers import LocalRetriever

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    _claim_output(config)
    exp = load_experiment(config)
    base_encoder = make_encoder(exp.base_spec, bf16=config.bf16)
    base_index = corpus_index(exp, base_encoder, os.path.join(config.output, "base", "vectors.npy"))
    base_retriever = LocalRetriever(base_index, base_encoder)
    base = _cached(
        os.path.join(config.output, "base", "per_query.json"),
        lambda: _measure(exp, base_encoder, base_index, config.seeds[0]),
    )
    return exp, base_retriever, base


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


def load_experiment(config: AblationConfig) -> Experiment:
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


def training_tasks(exp: Experiment, seed: int):
    from lrat_ray.agents.tasks import load_tasks

    ids = sorted(q for q in exp.train_qrels if q in exp.queries)
    if exp.config.train_tasks is None or exp.config.train_tasks >= len(ids):
        return load_tasks(exp.queries, exp.train_qrels, ids)  # every training task, every seed
    chosen = sorted(random.Random(f"tasks:{seed}").sample(ids, exp.config.train_tasks))
    return load_tasks(exp.queries, exp.train_qrels, chosen)


def make_encoder(spec, model=None, tokenizer=None, bf16: bool | None = None):
    from lrat_ray.models.encoder import Encoder

    return Encoder(spec, device="cpu", bf16=bf16) if model is None else Encoder.wrap(spec, model, tokenizer, bf16=bf16)


def corpus_index(exp: Experiment, encoder, cache: str | None = None):
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


def _pairs(exp: Experiment, retriever, tasks, variant: str, seed: int) -> list[dict]:
    """The variant's judged, weighted pairs for this seed (rolled out and mined once, then read back)."""
    path = os.path.join(exp.config.output, f"seed-{seed}", variant, "pairs.json.gz")
    if os.path.isfile(path):
        with gzip.open(path, "rt") as fh:
            return json.load(fh)
    pairs = mine_and_judge(roll_out(exp, retriever, tasks, variant, seed), tasks)
    storage.write_bytes_atomic(path, gzip.compress(json.dumps(pairs).encode()))
    return pairs


def roll_out(exp: Experiment, retriever, tasks, variant: str, seed: int) -> list[dict]:
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


def _arm_cell(exp: Experiment, pairs: list[dict], arm: str, seed: int, order_seed: int, variant: str) -> dict:
    """One arm's per-query metrics (saved; a rerun reads them back). ``seed`` chose the rollouts,
    ``order_seed`` the training stream (the batch order, negatives and dropout masks)."""
    root = exp.config.output if order_seed == seed else os.path.join(exp.config.output, "pilot", f"order-{order_seed}")
    path = os.path.join(root, f"seed-{seed}", variant, arm, "per_query.json")
    return _cached(path, lambda: _train_and_score(exp, pairs, arm, seed, order_seed))


def _train_and_score(exp: Experiment, pairs: list[dict], arm: str, seed: int, order_seed: int) -> dict:
    from lrat_ray.stages.train import fit_in_process

    config = exp.config
    fitted = fit_in_process(
        arm_train_config(config, order_seed), arm_examples(pairs, arm, exp.text_of, config.stream), config.steps
    )
    encoder = make_encoder(fitted["spec"], fitted["model"], fitted["tokenizer"], bf16=config.bf16)
    return _measure(exp, encoder, corpus_index(exp, encoder), seed)


def _only_metrics(per_query: dict) -> dict:
    return {q: {m: v for m, v in metrics.items() if m in METRICS} for q, metrics in per_query.items()}
