"""The paper's training step, device-agnostic: lrat's step (padded, length groups; packed) against
bare torch and sentence-transformers on the same batches, then corpus encoding.

The model is built from a config, no download: Qwen3-Embedding-0.6B's shape (28 x 1024, 16/8 heads,
head_dim 128, FFN 3072) on CUDA, a tiny shape of the same family on CPU (``--shape``), random
weights, SmolLM2's tokenizer (prepared by ``lrat prepare-llm``) with EOS appended for last-token
pooling. The batch is the paper's per-device recipe from SciFact: ``--queries`` claims x
``--group`` documents (the relevant abstract and random others), ``--max-length`` tokens, tau
0.02; on CUDA bf16 autocast and gradient checkpointing, as the recipe needs to fit in 80 GB.

Rows (each: s/step, queries/s, real tokens/s, peak memory, share of a matmul peak measured in this
run, bf16 on CUDA and fp32 on CPU):

* ``bare torch``: one padded forward per side, last-token pooling, in-set + in-batch softmax;
* ``sentence-transformers MNRL`` (when importable): the same weights (saved, then loaded by
  ``SentenceTransformer``) and batches as (anchor, positive, negatives...) columns, scale 1/tau;
* ``lrat padded, length groups``: :class:`lrat_ray.stages.train.StepRunner` as on CPU today;
* ``lrat padded, one group``;
* ``lrat packed``: each side one padding-free row (:mod:`lrat_ray.models.packing`; torch's varlen
  attention on CUDA, the exact per-text fallback on CPU);
* then one lever added per row, each kept in the rows below it: bf16 weights with fp32 masters
  (CUDA; :mod:`lrat_ray.stages.train.optimizer`), full checkpointing (CPU only: the CUDA rows have it from
  the start), selective checkpointing (:mod:`lrat_ray.stages.train.checkpointing`), regional
  ``torch.compile`` of the layers (:mod:`lrat_ray.stages.train.regional_compile`), input prefetched in a
  thread (:mod:`lrat_ray.stages.train.prefetch`). The lrat rows use the training loop's own helpers and
  optimizer step (clipping, schedule), the others a bare fused AdamW.

Then documents/s of corpus encoding: a bare transformers loop (padded) against ``Encoder`` padded
and packed. Not here: Liger Kernel's fused Triton kernels (GPU only; regional compile is the
lever that fuses the same elementwise work and runs on both).

    python benchmarks/bench_gpu_step.py [--shape auto|qwen3-0.6b|tiny] [--steps 3] [--rounds 1]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lrat_ray.infra.hardware import summary_line

DATA = Path(os.environ.get("LRAT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SHAPES = {
    "qwen3-0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
    ),
}


def recipe_batch(queries: int, group: int, seed: int = 0):
    """SciFact claims with their relevant abstract first, then ``group - 1`` random others."""
    from lrat_ray.core.corpus import document_text

    corpus = {}
    for line in (DATA / "scifact-beir" / "corpus.jsonl").read_text().split("\n"):
        if line.strip():
            doc = json.loads(line)
            corpus[doc["_id"]] = document_text(doc)
    claims = {
        json.loads(l)["_id"]: json.loads(l)["text"]
        for l in (DATA / "scifact-beir" / "queries.jsonl").read_text().split("\n")
        if l.strip()
    }
    rng = random.Random(seed)
    pairs = [line.split("\t") for line in (DATA / "scifact-beir" / "qrels" / "train.tsv").read_text().split("\n")[1:]]
    pairs = [(claims[p[0]], p[1]) for p in pairs if len(p) == 3 and p[0] in claims and p[1] in corpus]
    rng.shuffle(pairs)
    ids = sorted(corpus)
    qs, docs = [], []
    for claim, positive in pairs[:queries]:
        qs.append(claim)
        docs.append(corpus[positive])
        docs.extend(corpus[d] for d in rng.sample(ids, group - 1))
    return qs, docs


def matmul_peak(device, dtype) -> float:
    import torch

    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start, reps = time.perf_counter(), 20 if device.type == "cuda" else 5
    for _ in range(reps):
        a @ b
    _sync(device)
    return reps * 2 * n**3 / (time.perf_counter() - start)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def build_model(shape: str, vocab: int, device):
    import torch
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=vocab, max_position_embeddings=4096, **SHAPES[shape])
    model = Qwen3Model(config).to(device)
    model.set_attn_implementation("sdpa")
    return model


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="auto", choices=("auto", *SHAPES))
    parser.add_argument("--queries", type=int, default=None, help="default 32 on CUDA, 8 on CPU")
    parser.add_argument("--group", type=int, default=10, help="documents per query (1 positive + negatives)")
    parser.add_argument("--max-length", type=int, default=None, help="default 512 on CUDA, 128 on CPU")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every row this many times, in turn, and report the median: on a shared CPU the "
        "machine's drift over a run is larger than the differences between rows (keeps every row's "
        "model alive: CPU shapes only)",
    )
    args = parser.parse_args()
    print(summary_line(), flush=True)

    import torch

    from lrat_ray.models.encoder import EncoderSpec, load_tokenizer, save_encoder
    from lrat_ray.models.tiny_llm import tiny_model_path
    from lrat_ray.stages.train import TrainConfig, step_runner

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shape = args.shape if args.shape != "auto" else ("qwen3-0.6b" if cuda else "tiny")
    queries_n, max_length = args.queries or (32 if cuda else 8), args.max_length or (512 if cuda else 128)
    spec = EncoderSpec(model="bench", pooling="last", query_max_length=max_length, document_max_length=max_length)
    tokenizer = load_tokenizer(tiny_model_path(prepare=False), spec)
    queries, documents = recipe_batch(queries_n, args.group)
    lengths = [len(ids) for ids in tokenizer(queries + documents, truncation=True, max_length=max_length)["input_ids"]]
    real = sum(lengths)
    padded = len(queries) * max(lengths[: len(queries)]) + len(documents) * max(lengths[len(queries) :])
    dtype = torch.bfloat16 if cuda else torch.float32
    peak = matmul_peak(device, dtype)
    base = build_model(shape, len(tokenizer), device)
    params = non_embedding_params(base)
    flops = 6 * params * real  # forward + backward of the dense layers on the real tokens
    print(
        f"{shape}: {params / 1e6:.0f}M non-embedding parameters on {device}; {len(queries)} queries x {args.group} "
        f"documents, {max_length} tokens: {real} real tokens, {padded} padded; "
        f"{'bf16' if cuda else 'fp32'} matmul peak {peak / 1e12:.2f} TFLOP/s",
        flush=True,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    group = args.group

    def bare_step(model, optimizer):
        def encode(texts):
            batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(
                device
            )
            hidden = model(**batch).last_hidden_state
            last = (
                batch["attention_mask"].sum(1) - 1
                if tokenizer.padding_side == "right"
                else torch.full((len(texts),), hidden.size(1) - 1, device=device)
            )
            return torch.nn.functional.normalize(hidden[torch.arange(len(texts), device=device), last], dim=-1)

        with autocast:
            q, d = encode(queries), encode(documents)
            loss = torch.nn.functional.cross_entropy(
                (q @ d.T).float() / 0.02, torch.arange(len(queries), device=device) * group
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def st_step(model, optimizer):
        st, mnrl = model
        columns = [queries] + [documents[i::group] for i in range(group)]  # anchor, positive, negatives
        with autocast:
            features = [
                {k: v.to(device) if hasattr(v, "to") else v for k, v in st.tokenize(column).items()}
                for column in columns
            ]
            loss = mnrl(features, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def plain_row(step, build):
        """A row from a step function of (model, optimizer) and a builder of both."""

        def steps(state, n):
            for _ in range(n):
                step(*state)

        return build, steps

    def plain_model():
        model = copy.deepcopy(base).train()
        if cuda:
            model.gradient_checkpointing_enable()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)

    def st_model():
        from sentence_transformers import SentenceTransformer, losses

        st = SentenceTransformer(saved.name, device=str(device)).train()
        st.max_seq_length = max_length
        if cuda:
            st[0].auto_model.gradient_checkpointing_enable()
        return (st, losses.MultipleNegativesRankingLoss(st, scale=1 / 0.02)), torch.optim.AdamW(
            st.parameters(), lr=1e-6, fused=True
        )

    def lrat_row(**options):
        """lrat's step as ``lrat train`` builds it: the model prepared by the worker's own helpers
        (checkpointing, packing, regional compile, bf16 weights with fp32 masters) and its optimizer
        step; with ``prefetch_batches``, the next step's texts are tokenized in a thread meanwhile."""
        from lrat_ray.stages.train.optimizer import build_optimizer, optimizer_step, to_bf16_weights
        from lrat_ray.stages.train.prefetch import prefetched
        from lrat_ray.stages.train.worker import prepare_model

        config = TrainConfig(
            pairs=["-"],
            output="-",
            group_size=group,
            temperature=0.02,
            bf16=cuda,
            use_gpu=cuda,  # on CPU, lrat train's cheaper dropout too
            learning_rate=1e-6,
            warmup_ratio=0.0,
            **{"prefetch_batches": 0, **options},
        )

        def build():
            model = prepare_model(copy.deepcopy(base).train(), config)  # as the worker prepares it
            if config.bf16_weights:
                to_bf16_weights(model)
            params, optimizer, scheduler = build_optimizer(model, config, 10**6, config.bf16_weights)
            return step_runner(model, tokenizer, spec, config, device), params, optimizer, scheduler

        def steps(state, n):
            runner, params, optimizer, scheduler = state
            work = (runner.prepare(queries, documents, [True] * len(documents), [1.0] * len(queries)) for _ in range(n))
            for prepared in prefetched(work, config.prefetch_batches):
                float(runner.run_prepared(prepared, lambda v: v.backward()))  # the step's one sync
                optimizer_step(params, optimizer, scheduler)

        return build, steps

    # Each lrat row adds one lever to the row before it. On CUDA the recipe needs checkpointing
    # (full before the selective row); on CPU the tiny shape runs without it, and the two
    # checkpointing rows show what each costs in time.
    checkpoint = "full" if cuda else "off"
    levers = {"packing": False, "length_groups": 4, "gradient_checkpointing": checkpoint}
    lrat_rows = [("lrat padded, length groups (4)", {})]
    for label, change in (
        ("lrat padded, one group", {"length_groups": 1}),
        ("lrat packed", {"packing": True}),
        ("+ bf16 weights, fp32 masters", {"bf16_weights": True}),
        ("+ full checkpointing", {"gradient_checkpointing": "full"}),
        ("+ selective checkpointing", {"gradient_checkpointing": "selective"}),
        ("+ regional compile", {"compile_layers": True}),
        ("+ prefetched input", {"prefetch_batches": 2}),
    ):
        if (label.startswith("+ bf16") and not cuda) or (label.startswith("+ full") and cuda):
            continue  # bf16 weights need bf16 compute; CUDA starts from full checkpointing
        lrat_rows.append((label, change))
    rows = {"bare torch": plain_row(bare_step, plain_model), "sentence-transformers MNRL": plain_row(st_step, st_model)}
    for label, change in lrat_rows:
        levers = {**levers, **change}
        rows[label] = lrat_row(**levers)
    saved = tempfile.TemporaryDirectory()
    save_encoder(base.eval(), tokenizer, spec, saved.name)  # the same weights for sentence-transformers
    # One round: each row built, measured and freed in turn (what fits a GPU). More rounds keep
    # every row's model alive and measure the rows in turn each round.
    states, timings, memories = {}, {}, {}
    for round_ in range(args.rounds):
        for label, (build, steps) in list(rows.items()):
            if label not in states:
                try:
                    states[label] = build()
                except ImportError as exc:
                    print(f"{label:<34} skipped: {exc}")
                    del rows[label]
                    continue
                steps(states[label], 3 if "compile" in label or "prefetch" in label else 1)  # warm-up, compilation
            _sync(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            steps(states[label], args.steps)
            _sync(device)
            seconds = (time.perf_counter() - started) / args.steps
            timings.setdefault(label, []).append(seconds)
            memory = memories[label] = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "-"
            print(
                f"{label:<34} {seconds:7.3f} s/step  {len(queries) / seconds:7.2f} queries/s  "
                f"{real / seconds:9.0f} real tokens/s  {memory:>9}  {flops / seconds / peak:6.1%} of matmul peak"
                + (f"  (round {round_ + 1})" if args.rounds > 1 else ""),
                flush=True,
            )
            if args.rounds == 1:
                del states[label]
                if cuda:
                    torch.cuda.empty_cache()
    results = [(label, statistics.median(values), min(values), max(values)) for label, values in timings.items()]
    baseline = {label: seconds for label, seconds, _, _ in results}["bare torch"]
    spread = " (median of the rounds; range)" if args.rounds > 1 else ""
    print(
        f"\n| step | s/step{spread} | queries/s | real tokens/s | peak memory | share of matmul peak | vs bare torch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, seconds, low, high in results:
        shown = f"{seconds:.3f}" + (f" ({low:.3f}-{high:.3f})" if args.rounds > 1 else "")
        print(
            f"| {label} | {shown} | {len(queries) / seconds:.2f} | {real / seconds:.0f} | {memories[label]} | "
            f"{flops / seconds / peak:.1%} | {baseline / seconds:.2f}x |"
        )
    encoding(base.eval(), tokenizer, spec, documents, device, cuda, saved.name)
    saved.cleanup()
    return 0


def encoding(model, tokenizer, spec, documents, device, cuda, tmp) -> None:
    """documents/s: a bare padded transformers loop against Encoder, padded and packed."""
    import torch

    from lrat_ray.models.encoder import Encoder

    texts = documents * 4
    batch = 64

    def bare():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            for i in range(0, len(texts), batch):
                inputs = tokenizer(
                    texts[i : i + batch],
                    padding=True,
                    truncation=True,
                    max_length=spec.document_max_length,
                    return_tensors="pt",
                ).to(device)
                model(**inputs).last_hidden_state[:, -1].float().cpu()

    timings = {}
    for label, run in (
        ("bare transformers loop", bare),
        (
            "Encoder padded",
            Encoder(dataclasses.replace(spec, model=tmp), str(device), batch, bf16=cuda, packed=False).encode_documents,
        ),
        (
            "Encoder packed",
            Encoder(dataclasses.replace(spec, model=tmp), str(device), batch, bf16=cuda, packed=True).encode_documents,
        ),
    ):
        call = run if label == "bare transformers loop" else (lambda run=run: run(texts))
        call()  # warm-up
        _sync(device)
        started = time.perf_counter()
        call()
        _sync(device)
        timings[label] = len(texts) / (time.perf_counter() - started)
    print(
        f"\ncorpus encoding ({len(texts)} documents, {spec.document_max_length} tokens): "
        + ", ".join(
            f"{label} {rate:.1f} docs/s ({rate / timings['bare transformers loop']:.2f}x)"
            for label, rate in timings.items()
        )
    )


if __name__ == "__main__":
    sys.exit(main())
