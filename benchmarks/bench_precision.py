"""What precision this CPU runs fast: vLLM generation and MiniLM encoding in bf16 and fp32, and what
``auto`` resolves to here (``lrat_ray.infra.hardware``).

1. vLLM: the prepared SmolLM2-135M-Instruct, ``vllm.LLM`` (eager, 256 MiB KV cache), 8 prompts of
   64 generated tokens each (EOS ignored, so every run generates the same count), after a warm-up
   batch; each dtype in a fresh process.
2. Encoding: the embedded MiniLM (``Encoder``) on 256 SciFact abstracts at 256 tokens, fp32 and
   under bf16 autocast, in this process.

    python benchmarks/bench_precision.py [--skip-vllm]

``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` in front of it makes torch and oneDNN use
AVX2 kernels only: an AVX-512 machine's stand-in for an AVX2-only one (bf16 emulated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lrat_ray.infra.hardware import engine_dtype, summary_line

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHILD = """
import json, sys, time
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    from lrat_ray.models.tiny_llm import tiny_model_path
    started = time.time()
    llm = LLM(tiny_model_path(), dtype=sys.argv[1], max_model_len=2048, enforce_eager=True,
              kv_cache_memory_bytes=256 << 20)
    ready = time.time()
    params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
    prompts = [f"Write a short note about topic number {i}." for i in range(8)]
    llm.generate(prompts[:2], params, use_tqdm=False)
    begun = time.time()
    out = llm.generate(prompts, params, use_tqdm=False)
    tokens = sum(len(o.outputs[0].token_ids) for o in out)
    print("RESULT " + json.dumps({"start_s": ready - started, "tokens": tokens,
                                  "tokens_per_s": tokens / (time.time() - begun)}))
"""


def vllm_rate(dtype: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, dtype], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"vLLM in {dtype} failed:\n{done.stderr[-2000:]}")
    return json.loads(line[len("RESULT ") :])


def encoding_rate(bf16: bool, texts: list[str]) -> float:
    from lrat_ray.models.encoder import Encoder, spec_for

    encoder = Encoder(spec_for("embedded", document_max_length=256), device="cpu", batch_size=32, bf16=bf16)
    encoder.encode_documents(texts[:32])  # warm-up
    started = time.time()
    encoder.encode_documents(texts)
    return len(texts) / (time.time() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--documents", type=int, default=256)
    args = parser.parse_args()
    print(summary_line(), flush=True)
    isa = os.environ.get("ATEN_CPU_CAPABILITY")
    print(
        f"torch kernels: {isa or 'default (best the CPU has)'}; vLLM CPU engines here get dtype "
        f"{engine_dtype()} under auto\n"
    )
    rows = []
    if not args.skip_vllm:
        for dtype in ("bfloat16", "float32"):
            result = vllm_rate(dtype)
            rows.append((f"vLLM generation, {dtype}", result["tokens_per_s"], "tokens/s"))
            print(
                f"vLLM {dtype}: engine ready in {result['start_s']:.1f} s, {result['tokens_per_s']:.1f} tokens/s",
                flush=True,
            )
    texts = [
        json.loads(line)["text"]
        for line in (DATA / "scifact-beir" / "corpus.jsonl").read_text().split("\n")
        if line.strip()
    ][: args.documents]
    for bf16 in (True, False):
        rows.append((f"MiniLM encoding, {'bf16 autocast' if bf16 else 'fp32'}", encoding_rate(bf16, texts), "docs/s"))
        print(f"{rows[-1][0]}: {rows[-1][1]:.1f} docs/s", flush=True)
    print("\n| measurement | rate | bf16 / fp32 |\n|---|---:|---:|")
    for i in range(0, len(rows), 2):
        (low, low_rate, unit), (full, full_rate, _) = rows[i], rows[i + 1]
        print(f"| {low} | {low_rate:.1f} {unit} | {low_rate / full_rate:.2f}x |")
        print(f"| {full} | {full_rate:.1f} {unit} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
