"""Ray job entrypoint for ``lrat judge`` (label mined pairs with an LLM judge).

    ray job submit --working-dir . -- python jobs/judge.py --pairs s3://bucket/lrat/mine/<version> --output 's3://bucket/lrat/judge/{version}' --backend vllm --model Qwen/Qwen3-8B

Takes exactly the options of ``lrat judge --help`` (and ``--config YAML``). The output directory is
versioned and immutable: a resubmitted job with the same options and inputs finds the finished
output and exits without redoing it (see lrat_ray/infra/stage_run.py).
"""

from _entry import run

if __name__ == "__main__":
    run("judge")
