"""The pipeline stages, each a config and a run function that ``lrat <stage>`` and ``jobs/<stage>.py``
run through :func:`lrat_ray.infra.stage_run.run_stage`: mine, judge, pairs-from-qrels, train,
index, eval and eval-runs (the registry that names them is :mod:`lrat_ray.registry`)."""
