"""``lrat ablation``: do LRAT's judge filter and reasoning-length weights help, and only when they can?

The paper's ablation (Fig. 7) compares training on every browse (naive), on the browses the judge
keeps (+filter) and with the reasoning-length weights (+reweight). A simulation can only support
that comparison if the signals are not built in, so this experiment uses the ``simulated`` agent
(:mod:`lrat_ray.rollout`), which chooses what to read from the snippets it is shown and so reads
many documents that merely look relevant, and a **control agent** whose reasoning length and
wording are drawn independently of what it read. On the control agent the filter and the weights
carry no information: they must not help there. Per seed:

1. sample ``train_tasks`` training tasks; both agents (same seed) solve them against the untrained
   retriever (an in-process FAISS index: no Serve, the same result shape as ``lrat serve``);
2. mine the trajectories (:mod:`lrat_ray.mining`), judge every pair with the ``keyword`` judge
   (it reads the post-browse reasoning) and weight them (:mod:`lrat_ray.weighting`; zero-length
   reasoning gets weight 1, as in the official code);
3. train one model per arm, every arm from the same start for the same number of steps with the
   same batch and seed, texts from the corpus for positives and negatives alike
   (:func:`lrat_ray.train.fit_in_process`):

   * ``oracle``: the browses the relevance judgments call relevant, weight 1 (a perfect judge);
   * ``naive``, ``filter``, ``reweight-unfiltered``, ``reweight`` (= +filter +reweight, LRAT), as
     in ``lrat train --ablation``; weights are rescaled to mean 1 over the pairs each arm trains on;

4. index the corpus with each model and score the held-out tasks (nDCG@10, Recall@10/100).

Reported: for every arm the mean over seeds with a 95% t-interval (seed-to-seed spread: task
sample, rollouts, training order), and per-query paired tests (t-test and sign-flip permutation on
the per-query metric averaged over seeds) against ``naive`` and against the untrained model. The
held-out tasks that share no relevant document with any training task are reported separately: a
gain there is not a learned prior on documents cited by training tasks. Everything runs in this
process (no Ray): the experiment is many small trainings, where a worker group's start-up would
cost more than the training. Each finished arm is saved, so a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np

from lrat_ray import __version__, storage
from lrat_ray.config import checked, option
from lrat_ray.errors import LratError
from lrat_ray.loss import ABLATIONS

log = logging.getLogger(__name__)
AGENT_VARIANTS = ("informative", "control")
ARMS = ("oracle",) + ABLATIONS
METRICS = ("ndcg@10", "recall@10", "recall@100")
ARM_LABELS = {"oracle": "oracle (qrels filter)", "naive": "naive", "filter": "+filter",
              "reweight-unfiltered": "+reweight", "reweight": "+filter +reweight"}


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
    seeds: list[int] = option([0, 1, 2], help="seeds (at least 3 for an interval)")
    train_tasks: int = option(300, help="training tasks sampled per seed")
    heldout_tasks: int | None = option(None, help="held-out tasks scored (default all)")
    agents: list[str] = option(list(AGENT_VARIANTS), help="agent variants: informative, control")
    arms: list[str] = option(list(ARMS), help=f"arms trained on the informative agent's pairs, of {list(ARMS)}")
    control_arms: list[str] = option(["naive", "filter", "reweight"],
                                     help="arms trained on the control agent's pairs (no oracle: it does not "
                                          "depend on the reasoning)")
    steps: int = option(24, help="optimizer steps per arm (the same for every arm)")
    batch: int = option(32, help="pairs per step")
    group_size: int = option(2, help="documents per pair: positive + (group_size-1) in-set negatives")
    learning_rate: float = option(1e-4, help="peak learning rate")
    temperature: float = option(0.05, help="InfoNCE temperature")
    document_max_length: int = option(64, help="document tokens (training and indexing)")
    depth: int = option(100, help="documents retrieved per held-out task")
    agent: dict = option({}, help="AgentConfig fields of both agents (control adds reasoning_signal: false)")

    def __post_init__(self):
        bad = sorted(set(self.agents) - set(AGENT_VARIANTS)) + sorted(set(self.arms + self.control_arms) - set(ARMS))
        if bad:
            raise ValueError(f"unknown agent variant(s) or arm(s) {bad}; agents {list(AGENT_VARIANTS)}, "
                             f"arms {list(ARMS)}")
        if "naive" not in self.arms or "naive" not in self.control_arms:
            raise ValueError("arms must include naive: every other arm is compared with it")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError("seeds must be distinct and non-empty")
        if self.steps < 1 or self.batch < 2 or self.group_size < 1 or self.train_tasks < 1:
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


def run_ablation(config: AblationConfig) -> dict:
    """Run every seed x agent x arm (resuming finished ones) and write the report."""
    import torch

    from lrat_ray.rollout import LocalRetriever

    started = time.time()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    _claim_output(config)
    exp = _experiment(config)
    base_encoder = _encoder(exp.base_spec)
    base_index = _index(exp, base_encoder)
    base_retriever = LocalRetriever(base_index, base_encoder)  # what every agent searches
    base = _cached(os.path.join(config.output, "base", "per_query.json"),
                   lambda: _only_metrics(_score(exp, base_encoder, base_index)["per_query"]))
    cells: dict[tuple[str, str], dict[int, dict]] = {}
    pair_stats = {}
    for seed in config.seeds:
        tasks = _train_tasks(exp, seed)
        for variant in config.agents:
            pairs = _pairs(exp, base_retriever, tasks, variant, seed)
            pair_stats[f"seed-{seed}/{variant}"] = _pair_summary(pairs)
            for arm in config.arms if variant == "informative" else config.control_arms:
                path = os.path.join(config.output, f"seed-{seed}", variant, arm, "per_query.json")
                cells.setdefault((variant, arm), {})[seed] = _cached(
                    path, lambda: _train_and_score(exp, pairs, arm, seed))
                log.info("seed %d %s %s done (%.0f s)", seed, variant, arm, time.time() - started)
    report = summarize(cells, base, exp.disjoint, config.seeds)
    report.update(pairs=pair_stats, config=dataclasses.asdict(config), lrat_ray=__version__,
                  heldout_tasks=len(exp.heldout), disjoint_tasks=len(exp.disjoint),
                  wall_seconds=round(time.time() - started, 1))
    storage.write_json_atomic(os.path.join(config.output, "report.json"), report)
    storage.write_bytes_atomic(os.path.join(config.output, "results.md"), render_markdown(report).encode())
    plot(report, os.path.join(config.output, "results.png"))
    return report


# ---------------------------------------------------------------------------------------------
# Setting up
# ---------------------------------------------------------------------------------------------

def _claim_output(config: AblationConfig) -> None:
    """Finished arms are reused on a rerun, so an output directory belongs to one experiment: the
    same settings (seeds, arms and agents may grow) or a clear error."""
    path = os.path.join(config.output, "experiment.json")
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in ("output", "seeds", "agents", "arms", "control_arms")}
    if os.path.isfile(path):
        with open(path) as fh:
            previous = json.load(fh)
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise LratError(f"{config.output} holds an ablation with other settings ({changed}); "
                            "use another --output")
        return
    storage.write_json_atomic(path, settings)


def _experiment(config: AblationConfig) -> Experiment:
    from lrat_ray.corpus import document_text, iter_documents
    from lrat_ray.evaluate import load_qrels, load_queries
    from lrat_ray.model import spec_for

    queries = load_queries(config.queries)
    train_qrels = load_qrels(config.train_qrels)
    heldout_qrels = load_qrels(config.heldout_qrels)
    overlap = sorted(set(train_qrels) & set(heldout_qrels))
    if overlap:
        raise LratError(f"{config.heldout_qrels}: {len(overlap)} held-out task(s) also in {config.train_qrels}, "
                        f"e.g. {overlap[:3]}")
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
    return Experiment(config, queries, train_qrels, {q: queries[q] for q in ids},
                      {q: heldout_qrels[q] for q in ids}, disjoint, doc_ids, titles, texts, searchable,
                      spec_for(config.model, document_max_length=config.document_max_length))


def _train_tasks(exp: Experiment, seed: int):
    from lrat_ray.rollout import load_tasks

    ids = sorted(q for q in exp.train_qrels if q in exp.queries)
    chosen = sorted(random.Random(f"tasks:{seed}").sample(ids, min(exp.config.train_tasks, len(ids))))
    return load_tasks(exp.queries, exp.train_qrels, chosen)


def _encoder(spec, model=None, tokenizer=None):
    from lrat_ray.model import Encoder

    return Encoder(spec, device="cpu") if model is None else Encoder.wrap(spec, model, tokenizer)


def _index(exp: Experiment, encoder):
    import pyarrow as pa

    from lrat_ray.index import RetrievalIndex

    vectors = encoder.encode_documents(exp.searchable)
    documents = pa.table({"doc_id": exp.doc_ids, "title": exp.titles, "text": exp.texts})
    return RetrievalIndex.in_memory(vectors, documents, {"encoder": dataclasses.asdict(encoder.spec)},
                                    exp.config.output)


def _score(exp: Experiment, encoder, index=None) -> dict:
    from lrat_ray.evaluate import score_run

    index = index or _index(exp, encoder)
    qids = list(exp.heldout)
    hits = index.search(encoder.encode_queries([exp.heldout[q] for q in qids]), exp.config.depth)
    return score_run({q: dict(h) for q, h in zip(qids, hits)}, exp.heldout_qrels, [10, 100])


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
    from lrat_ray.rollout import AgentConfig, run_simulated

    agent = AgentConfig(**{"max_turns": 4, **exp.config.agent, "kind": "simulated", "seed": seed,
                           "reasoning_signal": variant == "informative"})
    return [run_simulated(task, retriever, agent) for task in tasks]


def mine_and_judge(runs: list[dict], tasks) -> list[dict]:
    """Pairs of the runs (attributed mode) with the keyword judge's label, the qrels' verdict
    (``useful``, for the oracle arm), the reasoning length in tokens and the LRAT weight fitted over
    all pairs (zero-length reasoning: weight 1, left out of beta and mu, as the official code)."""
    from lrat_ray.adapters import parse_trajectory
    from lrat_ray.judge import keyword_label
    from lrat_ray.mine_job import length_measure
    from lrat_ray.mining import mine_trajectories
    from lrat_ray.weighting import LengthHistogram, fit_weights

    judgments = {t.id: t.judgments for t in tasks}
    result = mine_trajectories([parse_trajectory(run) for run in runs], measure=length_measure("embedded"))
    params = fit_weights(LengthHistogram.of(p.reasoning_length for p in result.pairs), zero_length="neutral")
    return [{"task": p.trajectory_id, "query": p.query, "positive_id": p.positive_id,
             "negative_ids": p.negative_ids, "reasoning_length": p.reasoning_length,
             "relevant": keyword_label(p.reasoning), "useful": judgments[p.trajectory_id].get(p.positive_id, 0) > 0,
             "weight": params.weight(p.reasoning_length)} for p in result.pairs]


def _pair_summary(pairs: list[dict]) -> dict:
    useful = [p["useful"] for p in pairs]
    kept = [p for p in pairs if p["relevant"]]
    weights = {u: [p["weight"] for p in pairs if p["useful"] == u] for u in (True, False)}
    return {"pairs": len(pairs), "useful_share": _mean(useful),
            "judge_kept": len(kept), "judge_kept_useful_share": _mean([p["useful"] for p in kept]),
            "mean_weight_useful": _mean(weights[True]), "mean_weight_useless": _mean(weights[False])}


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


# ---------------------------------------------------------------------------------------------
# One arm
# ---------------------------------------------------------------------------------------------

def arm_examples(pairs: list[dict], arm: str, texts: dict[str, str]) -> list[dict]:
    """Training examples of one arm; texts of positives and negatives from the corpus."""
    from lrat_ray.loss import ablation_weights

    relevant = [p["useful"] for p in pairs] if arm == "oracle" else [p["relevant"] for p in pairs]
    weights, keep = ablation_weights([p["weight"] for p in pairs], relevant, "filter" if arm == "oracle" else arm)
    examples = [{"query": p["query"], "positive": texts[p["positive_id"]],
                 "negatives": [texts[d] for d in p["negative_ids"] if d in texts], "weight": w}
                for p, w, k in zip(pairs, weights, keep) if k]
    if not examples:
        raise LratError(f"arm {arm}: no pairs left to train on")
    return examples


def _train_and_score(exp: Experiment, pairs: list[dict], arm: str, seed: int) -> dict:
    from lrat_ray.train import TrainConfig, fit_in_process

    config = exp.config
    texts = dict(zip(exp.doc_ids, exp.searchable))
    train = TrainConfig(pairs=[], output="", model=config.model, workers=1, per_device_batch=config.batch,
                        group_size=config.group_size, learning_rate=config.learning_rate,
                        temperature=config.temperature, document_max_length=config.document_max_length,
                        seed=seed)
    fitted = fit_in_process(train, arm_examples(pairs, arm, texts), config.steps)
    return _only_metrics(_score(exp, _encoder(fitted["spec"], fitted["model"], fitted["tokenizer"]))["per_query"])


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
    return {"mean": mean, "half_width": float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem,
            "n": len(values)}


def summarize(cells: dict[tuple[str, str], dict[int, dict]], base: dict, disjoint: list[str],
              seeds: list[int]) -> dict:
    """Per (agent, arm) and subset: metric means over seeds with intervals, and paired per-query
    tests against naive (same agent) and against the untrained model."""
    from lrat_ray.evaluate import paired_comparison

    subsets = {"all": sorted(base), "disjoint": sorted(disjoint)}
    rows = []
    for (variant, arm), by_seed in sorted(cells.items(), key=lambda kv: (kv[0][0], ARMS.index(kv[0][1]))):
        naive = cells.get((variant, "naive"), {})
        for subset, qids in subsets.items():
            row = {"agent": variant, "arm": arm, "subset": subset, "queries": len(qids), "seeds": sorted(by_seed)}
            averaged = _seed_average(by_seed, qids)
            for metric in METRICS:
                row[metric] = mean_interval([np.mean([by_seed[s][q][metric] for q in qids]) for s in sorted(by_seed)])
                row[f"{metric}_vs_base"] = paired_comparison({q: base[q] for q in qids}, averaged, metric)
                if arm != "naive" and naive:
                    row[f"{metric}_vs_naive"] = paired_comparison(_seed_average(naive, qids), averaged, metric)
            rows.append(row)
    base_rows = [{"subset": subset, "queries": len(qids),
                  **{m: float(np.mean([base[q][m] for q in qids])) for m in METRICS}} for subset, qids in subsets.items()]
    return {"rows": rows, "base": base_rows, "seeds": seeds}


def _seed_average(by_seed: dict[int, dict], qids: list[str]) -> dict[str, dict]:
    return {q: {m: float(np.mean([by_seed[s][q][m] for s in by_seed])) for m in METRICS} for q in qids}


def render_markdown(report: dict) -> str:
    seeds = len(report["seeds"])
    lines = [f"Held-out nDCG@10 and Recall@100: mean over {seeds} seeds ± 95% t-interval; Δ vs naive is the "
             "paired per-query difference (metric averaged over seeds), p from a paired t-test / sign-flip "
             "permutation test.", ""]
    for subset in ("all", "disjoint"):
        base = next(b for b in report["base"] if b["subset"] == subset)
        title = "all held-out tasks" if subset == "all" else "held-out tasks sharing no relevant document with any training task"
        lines += [f"**{title}** ({base['queries']} tasks; untrained model: nDCG@10 {base['ndcg@10']:.4f}, "
                  f"Recall@100 {base['recall@100']:.4f})", "",
                  "| agent | arm | nDCG@10 | Recall@100 | Δ nDCG@10 vs naive | p (t / perm.) | Δ vs untrained | p (t) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in (r for r in report["rows"] if r["subset"] == subset):
            vs_naive = row.get("ndcg@10_vs_naive")
            vs_base = row["ndcg@10_vs_base"]
            naive_cells = ("", "") if not vs_naive else (
                f"{vs_naive['mean_b'] - vs_naive['mean_a']:+.4f}",
                f"{vs_naive['t_test_p']:.3f} / {vs_naive['permutation_p']:.3f}")
            lines.append(f"| {row['agent']} | {ARM_LABELS[row['arm']]} | {_fmt(row['ndcg@10'])} | "
                         f"{_fmt(row['recall@100'])} | {naive_cells[0]} | {naive_cells[1]} | "
                         f"{vs_base['mean_b'] - vs_base['mean_a']:+.4f} | {vs_base['t_test_p']:.3f} |")
        lines.append("")
    lines.append("| seed/agent | pairs | useful share | judge kept | useful share of kept | mean w (useful) | "
                 "mean w (useless) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for key, stats in report["pairs"].items():
        lines.append(f"| {key} | {stats['pairs']} | {_num(stats['useful_share'])} | {stats['judge_kept']} | "
                     f"{_num(stats['judge_kept_useful_share'])} | {_num(stats['mean_weight_useful'])} | "
                     f"{_num(stats['mean_weight_useless'])} |")
    return "\n".join(lines) + "\n"


def _fmt(cell: dict) -> str:
    if cell["half_width"] is None:
        return f"{cell['mean']:.4f}"
    return f"{cell['mean']:.4f} ± {cell['half_width']:.4f}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(report: dict, path: str) -> None:
    """nDCG@10 per arm with 95% intervals, one panel per subset, the untrained model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, subset in zip(axes, ("all", "disjoint")):
        rows = [r for r in report["rows"] if r["subset"] == subset]
        labels = [f"{r['agent']}\n{ARM_LABELS[r['arm']]}" for r in rows]
        means = [r["ndcg@10"]["mean"] for r in rows]
        errors = [r["ndcg@10"]["half_width"] or 0.0 for r in rows]
        colors = ["tab:blue" if r["agent"] == "informative" else "tab:gray" for r in rows]
        ax.bar(range(len(rows)), means, yerr=errors, capsize=4, color=colors)
        base = next(b for b in report["base"] if b["subset"] == subset)
        ax.axhline(base["ndcg@10"], color="black", linestyle="--", linewidth=1, label="untrained")
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{subset} held-out tasks ({base['queries']})")
        ax.set_ylabel("nDCG@10 (mean ± 95% CI over seeds)")
        ax.legend(loc="lower right")
        low = min([m - e for m, e in zip(means, errors)] + [base["ndcg@10"]])
        high = max([m + e for m, e in zip(means, errors)] + [base["ndcg@10"]])
        ax.set_ylim(low - 0.02, high + 0.02)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
