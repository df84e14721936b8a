"""Ray job entrypoint for ``lrat eval`` (IR metrics of an index on judged queries).

    ray job submit --working-dir . -- python jobs/eval.py --index s3://bucket/lrat/index/<version> --queries s3://bucket/q.jsonl --qrels s3://bucket/qrels.tsv --output 's3://bucket/lrat/eval/{version}'

Takes exactly the options of ``lrat eval --help`` (and ``--config YAML``). The output directory is
versioned and immutable: a resubmitted job with the same options and inputs finds the finished
output and exits without redoing it (see lrat_ray/infra/stage_run.py).
"""

from _entry import run

if __name__ == "__main__":
    run("eval")
