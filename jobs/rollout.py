"""Ray job entrypoint for ``lrat rollout`` (agents solving tasks against a served retriever).

    ray job submit --working-dir . -- python jobs/rollout.py --url http://retriever:8000 --queries s3://bucket/q.jsonl --qrels s3://bucket/qrels.tsv --output 's3://bucket/lrat/runs/{version}'

Takes exactly the options of ``lrat rollout --help`` (and ``--config YAML``). The output directory is
versioned and immutable: a resubmitted job with the same options and inputs finds the finished
output and exits without redoing it (see lrat_ray/infra/stage_run.py).
"""

from _entry import run

if __name__ == "__main__":
    run("rollout")
