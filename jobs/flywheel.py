"""Ray job entrypoint for ``lrat flywheel`` (the closed loop: serve, roll out, mine, judge, train, re-index, redeploy, evaluate).

    ray job submit --working-dir . -- python jobs/flywheel.py --config my_flywheel.yaml

Takes exactly the options of ``lrat flywheel --help`` (and ``--config YAML``). The output directory is
versioned and immutable: a resubmitted job with the same options and inputs finds the finished
output and exits without redoing it (see lrat_ray/infra/stage_run.py).
"""

from _entry import run

if __name__ == "__main__":
    run("flywheel")
