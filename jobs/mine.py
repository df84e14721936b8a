"""Ray job entrypoint for ``lrat mine`` (mine weighted pairs from trajectories).

    ray job submit --working-dir . -- python jobs/mine.py --input s3://bucket/runs/ --output 's3://bucket/lrat/mine/{version}'

Takes exactly the options of ``lrat mine --help`` (and ``--config YAML``). The output directory is
versioned and immutable: a resubmitted job with the same options and inputs finds the finished
output and exits without redoing it (see lrat_ray/infra/stage_run.py).
"""

from _entry import run

if __name__ == "__main__":
    run("mine")
