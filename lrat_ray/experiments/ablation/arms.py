"""Rollouts -> judged, weighted pairs (the mining, judging and weighting functions of the stages,
applied in process), and each arm's view of them: its weights, its training examples and its
training config."""

from __future__ import annotations

import numpy as np

from lrat_ray.experiments.ablation.config import AblationConfig
from lrat_ray.infra.errors import LratError


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


def pair_summary(pairs: list[dict]) -> dict:
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
