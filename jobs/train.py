"""Ray job entrypoint for ``lrat train`` (weighted-contrastive training on Ray Train).

    ray job submit --working-dir . -- python jobs/train.py --config lrat_ray/configs/train_lrat_qwen3_embedding_0.6b.yaml --pairs s3://bucket/lrat/judge/<version>/pairs --output 's3://bucket/lrat/models/{version}'

Takes exactly the options of ``lrat train --help`` (and ``--config YAML``). The output directory is
versioned and immutable: a resubmitted job with the same options and inputs finds the finished
output and exits without redoing it (see lrat_ray/infra/stage_run.py).
"""

from _entry import run

if __name__ == "__main__":
    run("train")
