"""Training-step throughput: our step against bare torch and sentence-transformers, same run.

All three train the embedded MiniLM on the same real SciFact (claim, abstract) batches with
in-batch negatives (batch 32, queries 32 tokens, documents 128 tokens, scale 20 = temperature 0.05),
one process, fused AdamW (Hugging Face's Trainer default, so what sentence-transformers' ``fit``
uses):

* ``bare torch``: tokenize, one forward for queries and one for documents, mean pooling,
  normalisation, cross-entropy, backward, optimizer step: the least a contrastive step costs;
* ``sentence-transformers``: ``MultipleNegativesRankingLoss`` on a ``SentenceTransformer``;
* ``lrat``: :class:`lrat_ray.stages.train.StepRunner` (weights, masks, gathered loss; each side encoded in
  length groups, ``length_groups``) on the model as ``lrat train`` prepares it on CPU (the cheaper
  dropout of :mod:`lrat_ray.stages.train.dropout`) + the optimizer ``lrat train`` builds. Two more rows
  take one away each: one length group per side, torch's dropout; one packs each side into a
  padding-free row (:mod:`lrat_ray.models.packing`, its exact CPU attention: what the GPU default is).

The three steps run in turn, ``--rounds`` times over the same batches, and each rate sums its
rounds, so a slow minute of the machine does not land on one of them only.

Prints examples/s, the ratio to bare torch (goal: at most 5% overhead, ratio >= 0.95), the ratio
to sentence-transformers, the share of this machine's measured fp32 matmul FLOP/s (2048x2048, same
threads) that the step reaches, and our step under bf16 autocast against fp32. All three train
with dropout on (``.train()``): a ``SentenceTransformer`` loads in eval mode, and timed that way it
skips dropout and looked 1.29x faster than a training step.

``--quality`` then trains the embedded model with the lrat step from the same start for one pass
over SciFact's training pairs (28 steps of 32), in fp32 and under bf16 autocast, and scores the
base and both trained models on SciFact's 300 test claims against their relevant abstracts plus
1,000 others (all encoded in fp32): nDCG@10 of each and the top-10 overlap of the two trained ones.

Usage: ``python benchmarks/bench_train.py [--steps 6] [--batch 32] [--rounds 2] [--quality]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from lrat_ray.infra.hardware import summary_line

DATA = Path(os.environ.get("LRAT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def scifact_batches(batch: int, steps: int) -> list[tuple[list[str], list[str]]]:
    from lrat_ray.core.corpus import document_text

    corpus = {}
    for line in (DATA / "scifact-beir" / "corpus.jsonl").read_text().split("\n"):
        if line.strip():
            doc = json.loads(line)
            corpus[doc["_id"]] = document_text(doc)
    claims = {}
    for line in (DATA / "scifact-beir" / "queries.jsonl").read_text().split("\n"):
        if line.strip():
            q = json.loads(line)
            claims[q["_id"]] = q["text"]
    pairs = []
    for line in (DATA / "scifact-beir" / "qrels" / "train.tsv").read_text().split("\n")[1:]:
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] in claims and parts[1] in corpus:
            pairs.append((claims[parts[0]], corpus[parts[1]]))
    random.Random(0).shuffle(pairs)
    return [
        ([q for q, _ in pairs[i * batch : (i + 1) * batch]], [d for _, d in pairs[i * batch : (i + 1) * batch]])
        for i in range(steps + 1)
    ]


def matmul_flops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    return 10 * 2 * 2048**3 / (time.perf_counter() - start)


def step_flops(config, q_tokens: int, d_tokens: int, batch: int) -> float:
    """Forward + backward (3x forward) matmul FLOPs of a BERT-style encoder on padded tokens."""
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = layers * 2 * (4 * d * d + 2 * d * ff)
    attention = lambda t: layers * 4 * t * t * d  # noqa: E731  (QK^T and AV per sequence)
    forward = batch * (q_tokens * per_token + d_tokens * per_token + attention(q_tokens) + attention(d_tokens))
    return 3 * forward


def bare_torch_step(model, tok, optimizer, queries, docs):
    def encode(texts, n):
        batch = tok(texts, padding=True, truncation=True, max_length=n, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    q, d = encode(queries, 32), encode(docs, 128)
    loss = torch.nn.functional.cross_entropy(q @ d.T * 20, torch.arange(len(queries)))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def seconds_per_round(step, batches) -> float:
    """Seconds for the batches after the first (a warm-up). ``step`` takes one batch, or, marked
    ``over_stream``, the whole list (a step that reads ahead: prefetched input)."""
    if getattr(step, "over_stream", False):
        step(batches[:1])
        start = time.perf_counter()
        step(batches[1:])
        return time.perf_counter() - start
    step(*batches[0])  # warm-up
    start = time.perf_counter()
    for queries, docs in batches[1:]:
        step(queries, docs)
    return time.perf_counter() - start


def report(label, seconds, batches, rounds, base=None, flops=None, peak=None):
    rate = rounds * sum(len(q) for q, _ in batches[1:]) / seconds
    extra = f"  x{rate / base:5.3f} vs bare torch" if base else ""
    share = f"  {flops * rounds * (len(batches) - 1) / seconds / peak:5.1%} of matmul peak" if flops else ""
    print(f"{label:<34} {rate:8.2f} examples/s{extra}{share}", flush=True)
    return rate


def training_quality(path: str, batch: int) -> None:
    """nDCG@10 on SciFact test claims of the base model and of one pass of lrat training in fp32
    and in bf16 from the same start."""
    import numpy as np
    from transformers import AutoTokenizer

    from lrat_ray.core.corpus import document_text
    from lrat_ray.core.datasets import load_qrels, load_queries
    from lrat_ray.core.metrics import score_run
    from lrat_ray.models.encoder import Encoder, load_transformer, spec_for
    from lrat_ray.stages.index import build_faiss
    from lrat_ray.stages.train import TrainConfig, dropout, step_runner
    from lrat_ray.stages.train.optimizer import build_optimizer

    scifact = DATA / "scifact-beir"
    qrels = load_qrels(str(scifact / "qrels" / "test.tsv"))
    queries = load_queries(str(scifact / "queries.jsonl"))
    qids = sorted(q for q in qrels if q in queries)
    relevant = {d for q in qids for d in qrels[q]}
    docs = [json.loads(l) for l in (scifact / "corpus.jsonl").read_text().split("\n") if l.strip()]
    docs = [d for d in docs if d["_id"] in relevant] + [d for d in docs if d["_id"] not in relevant][:1000]
    ids, texts = [d["_id"] for d in docs], [document_text(d) for d in docs]
    tok = AutoTokenizer.from_pretrained(path)
    spec = spec_for("embedded", query_max_length=32, document_max_length=128)
    batches = scifact_batches(batch, 27)  # one pass over the 900-odd training pairs

    def score(model):
        encoder = Encoder.wrap(spec_for("embedded"), model, tok)
        _, rows = build_faiss(encoder.encode_documents(texts)).search(
            encoder.encode_queries([queries[q] for q in qids]), 10
        )
        run = {q: {ids[r]: 10.0 - rank for rank, r in enumerate(row)} for q, row in zip(qids, rows)}
        return score_run(run, qrels, [10])["metrics"]["ndcg@10"], [set(row) for row in rows]

    print(
        f"\ntraining quality: {len(batches)} steps of {batch} SciFact training pairs, then {len(qids)} test "
        f"claims against {len(texts)} abstracts",
        flush=True,
    )
    base, _ = score(load_transformer(path))
    results = {}
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        torch.manual_seed(0)
        model = load_transformer(path).train()
        dropout.install(model)
        config = TrainConfig(pairs=["-"], output="-", group_size=1, temperature=0.05, bf16=bf16)
        _, optimizer, scheduler = build_optimizer(model, config, len(batches))
        runner = step_runner(model, tok, spec, config, torch.device("cpu"))
        start = time.perf_counter()
        for queries_batch, docs_batch in batches:
            runner.run(
                queries_batch,
                docs_batch,
                [True] * len(docs_batch),
                [1.0] * len(queries_batch),
                backward=lambda v: v.backward(),
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        seconds = time.perf_counter() - start
        results[name] = score(model)
        print(f"trained {name:<14} {seconds:6.1f} s  nDCG@10 {results[name][0]:.4f} (base {base:.4f})", flush=True)
    (fp32, top32), (bf16, top16) = results["fp32"], results["bf16 autocast"]
    overlap = float(np.mean([len(a & b) / 10 for a, b in zip(top32, top16)]))
    print(f"bf16 - fp32 training: nDCG@10 {bf16 - fp32:+.4f}; mean top-10 overlap {overlap:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quality", action="store_true", help="also compare fp32 and bf16 training quality")
    args = parser.parse_args()
    print(summary_line(), flush=True)  # figures depend on it: bf16 native or emulated

    from sentence_transformers import SentenceTransformer, losses
    from transformers import AutoTokenizer

    from lrat_ray.models import packing
    from lrat_ray.models.embedded import embedded_model_path
    from lrat_ray.models.encoder import load_transformer, spec_for
    from lrat_ray.stages.train import TrainConfig, dropout, step_runner
    from lrat_ray.stages.train.optimizer import build_optimizer
    from lrat_ray.stages.train.prefetch import prefetched

    path = embedded_model_path()
    batches = scifact_batches(args.batch, args.steps)
    peak = matmul_flops()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul {peak / 1e9:.0f} GFLOP/s; "
        f"batch {args.batch}, {args.steps} timed steps, queries 32 / documents 128 tokens"
    )
    tok = AutoTokenizer.from_pretrained(path)

    torch.manual_seed(0)
    model = load_transformer(path).train()
    q_len = max(len(tok(q, truncation=True, max_length=32)["input_ids"]) for q, _ in batches[1:] for q in q)
    d_len = max(len(tok(d, truncation=True, max_length=128)["input_ids"]) for _, d in batches[1:] for d in d)
    flops = step_flops(model.config, q_len, d_len, args.batch)  # upper bound: longest padding per batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    steps = {"bare torch": lambda q, d: bare_torch_step(model, tok, optimizer, q, d)}

    st = SentenceTransformer(path, device="cpu").train()  # as its fit() does: dropout on, like the other two
    st_loss = losses.MultipleNegativesRankingLoss(st, scale=20.0)
    st_opt = torch.optim.AdamW(st.parameters(), lr=1e-5, fused=True)

    def st_step(queries, docs):
        st.max_seq_length = 32
        features_q = st.tokenize(queries)
        st.max_seq_length = 128
        features_d = st.tokenize(docs)
        st_loss([features_q, features_d], None).backward()
        st_opt.step()
        st_opt.zero_grad()

    steps["sentence-transformers MNRL"] = st_step

    spec = spec_for("embedded", query_max_length=32, document_max_length=128)
    for label, bf16, groups, fast_dropout, packed in (
        ("lrat StepRunner (weighted, gathered)", False, TrainConfig.length_groups, True, False),
        ("lrat, input prefetched in a thread", False, TrainConfig.length_groups, True, False),
        ("lrat, one length group per side", False, 1, True, False),
        ("lrat, torch dropout", False, TrainConfig.length_groups, False, False),
        ("lrat, packed (padding-free)", False, 1, True, True),
        ("lrat StepRunner bf16 autocast", True, TrainConfig.length_groups, True, False),
    ):
        torch.manual_seed(0)
        ours_model = load_transformer(path).train()
        if fast_dropout:
            dropout.install(ours_model)
        if packed:
            packing.install(ours_model)
        config = TrainConfig(
            pairs=["-"],
            output="-",
            group_size=1,
            temperature=0.05,
            bf16=bf16,
            learning_rate=1e-5,
            warmup_ratio=0.0,
            length_groups=groups,
            packing=packed,
        )
        _, ours_opt, _ = build_optimizer(ours_model, config, args.steps)
        runner = step_runner(ours_model, tok, spec, config, torch.device("cpu"))

        def ours_step(queries, docs, runner=runner, ours_opt=ours_opt):
            runner.run(queries, docs, [True] * len(docs), [1.0] * len(queries), backward=lambda v: v.backward())
            ours_opt.step()
            ours_opt.zero_grad()

        def prefetched_steps(stream, runner=runner, ours_opt=ours_opt):
            """As ``lrat train``'s loop runs it: the next batch tokenized in a thread meanwhile."""
            work = (runner.prepare(q, d, [True] * len(d), [1.0] * len(q)) for q, d in stream)
            for prepared in prefetched(work, TrainConfig.prefetch_batches):
                float(runner.run_prepared(prepared, lambda v: v.backward()))
                ours_opt.step()
                ours_opt.zero_grad()

        prefetched_steps.over_stream = True
        steps[label] = prefetched_steps if "prefetched" in label else ours_step

    seconds = dict.fromkeys(steps, 0.0)
    for _ in range(args.rounds):
        for label, step in steps.items():
            seconds[label] += seconds_per_round(step, batches)
    rates, base = {}, None
    for label in steps:
        rates[label] = report(label, seconds[label], batches, args.rounds, base, flops, peak)
        base = base or rates[label]
    ours, ours_bf16 = rates["lrat StepRunner (weighted, gathered)"], rates["lrat StepRunner bf16 autocast"]
    print(
        "\nlrat / sentence-transformers (fp32, both with dropout): "
        f"{ours / rates['sentence-transformers MNRL']:.3f}x; "
        f"length groups / one group: {ours / rates['lrat, one length group per side']:.3f}x; "
        f"cheaper dropout / torch's: {ours / rates['lrat, torch dropout']:.3f}x; "
        f"packed / padded: {rates['lrat, packed (padding-free)'] / ours:.3f}x; "
        f"prefetched / inline input: {rates['lrat, input prefetched in a thread'] / ours:.3f}x; "
        f"lrat bf16 / fp32: {ours_bf16 / ours:.2f}x"
    )
    if args.quality:
        training_quality(path, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
