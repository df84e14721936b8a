#!/usr/bin/env bash
# Issue 22's GPU check as one prepared call on a lent GPU machine (the `device` tool's `run`).
#
# Here, once (about 3 minutes; .gpu-carry in .git/info/exclude, then named in the run's carry):
#   bash ../shared/gpu/pack-ray.sh .gpu-carry            # trimmed Ray, its wheels, SmolLM2's tokenizer
#   cp -r ../shared/data/scifact-beir .gpu-carry/        # the benchmark's texts (the data is not in the repo)
# There (the device tool runs this in the checkout's root, $OUT comes back):
#   bash benchmarks/gpu_step.sh .gpu-carry
#
# It installs the packed Ray into /tmp/site (no DeepSpeed: with it importable, sentence-transformers
# does not import on that image; see ../shared/MEASURED.md), points lrat at the carried tokenizer
# and data, and runs benchmarks/bench_gpu_step.py: every row (bare torch, sentence-transformers,
# lrat padded/packed, bf16 weights, selective checkpointing, compiled layers, prefetched input) and
# corpus encoding, on the Qwen3-Embedding-0.6B shape at the paper's recipe. Output: $OUT/gpu_step.txt.
set -euo pipefail
DIR=${1:-.gpu-carry}
OUT=${OUT:-/tmp}
mkdir -p /tmp/site /tmp/lrat-cache/models/SmolLM2-135M-Instruct
if ! python3 -c "import ray" 2>/dev/null; then
  tar xJf "$DIR/ray-trim.tar.xz" -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$DIR"/deps/*.whl
fi
cp "$DIR"/tok/* /tmp/lrat-cache/models/SmolLM2-135M-Instruct/
export PYTHONPATH=/tmp/site:$PWD LRAT_CACHE=/tmp/lrat-cache LRAT_DATA=$PWD/$DIR HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu_step.txt"
timeout 540 python3 benchmarks/bench_gpu_step.py --steps 3 2>&1 | grep -v -i "warn" | tee -a "$OUT/gpu_step.txt"
