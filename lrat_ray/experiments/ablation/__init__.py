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

Statistics (:mod:`lrat_ray.experiments.ablation.stats`): the seed is the unit. Pre-registered primary
comparisons on nDCG@10, Holm-corrected together: LRAT - naive, oracle - naive, control LRAT -
naive, each a paired t-test over seeds with a seed x claim bootstrap interval; the control's
equivalence (TOST, +/- ``equivalence_margin``); the A/A calibration (naive on the control agent's
pairs - naive on the informative agent's: the same browsing); the share of the oracle's gain LRAT
recovers; the effect each test detects at 80% power given the spread it saw. Per-claim tests on
seed-averaged scores are reported only as conditional on the trained models. ``--pilot`` (minutes)
trains naive and LRAT on the first seed's pairs under two order seeds and prints how many seeds a
given effect needs. Runs in this process (no Ray): many small trainings, where a worker group's
start-up would cost more than the training; every finished arm is saved, so a rerun resumes.

Modules: :mod:`.config` (options, arms, metrics, the pre-registered comparisons), :mod:`.run`
(setup, rollouts, arms trained and scored, resume), :mod:`.arms` (pairs and each arm's weights
and examples), :mod:`.report` (statistics, table, plot), :mod:`.stats` (the seed-level tests).
"""

from lrat_ray.experiments.ablation.config import AblationConfig
from lrat_ray.experiments.ablation.report import render_markdown, render_pilot
from lrat_ray.experiments.ablation.run import run_ablation, run_pilot

__all__ = ["AblationConfig", "render_markdown", "render_pilot", "run_ablation", "run_pilot"]
