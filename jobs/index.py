"""Ray job entrypoint for ``lrat index`` (encode a corpus and build a FAISS index).

    ray job submit --working-dir . -- python jobs/index.py --corpus s3://bucket/corpus/ --model s3://bucket/lrat/models/<version> --output 's3://bucket/lrat/index/{version}'

Takes exactly the options of ``lrat index --help`` (and ``--config YAML``). The output directory is
versioned and immutable: a resubmitted job with the same options and inputs finds the finished
output and exits without redoing it (see lrat_ray/infra/stage_run.py).
"""

from _entry import run

if __name__ == "__main__":
    run("index")
