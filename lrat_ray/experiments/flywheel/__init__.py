"""``lrat flywheel``: the closed loop of LRAT — serve, roll out, mine, judge, train, re-index, redeploy.

Iteration 0 indexes the corpus with the starting model, serves it and measures the held-out tasks.
Each later iteration ``i``:

1. ``rollout``: agents solve ``train_tasks`` training tasks against the served retriever (HTTP);
2. ``mine``: trajectories -> weighted pairs (:mod:`lrat_ray.stages.mine`);
3. ``judge``: label the pairs from the post-browse reasoning (:mod:`lrat_ray.stages.judge`);
4. ``train``: warm-start from the previous model, weighted InfoNCE on Ray Train;
5. ``index``: re-encode the corpus with the new model;
6. ``deploy``: swap the served index in place (no request dropped);
7. ``eval``: held-out tasks rolled out against the new retriever (success rate, evidence recall
   = share of a task's evidence documents that appeared in any of its search results, steps per
   task) plus the index's IR metrics on the held-out queries.

Tasks are split by query id into training and held-out sets with a fixed seed (or taken from
separate judgment files); held-out tasks never feed training. Every sub-stage runs under
:func:`lrat_ray.infra.stage_run.run_stage` in its own directory ``output/iter-<i>/<stage>/``, like a stage
run from the command line: a ``_lrat_stage.json`` manifest whose version key chains from its
inputs' keys (rollouts and evaluations from the index their agents searched), so a restarted
flywheel skips finished stages, resumes the unfinished one, and refuses to mix in a stage
finished with other options. Results accumulate in
``output/results.csv``, ``output/results.md`` and ``output/results.png``.

Modules: :mod:`.config` (``FlywheelConfig`` and its stage sections), :mod:`.loop` (the
iterations), :mod:`.results` (the metrics table, intervals and plot).
"""

from lrat_ray.experiments.flywheel.config import FlywheelConfig
from lrat_ray.experiments.flywheel.loop import run_flywheel
from lrat_ray.experiments.flywheel.results import results_table

__all__ = ["FlywheelConfig", "results_table", "run_flywheel"]
