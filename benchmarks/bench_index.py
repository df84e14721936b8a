"""Indexing and search throughput.

1. Encoding: documents per second of ``lrat index`` (encoder actors, embedded MiniLM, 256 tokens)
   against a bare ``transformers`` loop (AutoModel, batches of 64 in file order, mean pooling) over
   the same documents in the same run, in fp32 and under bf16 autocast.
2. Search: queries per second of :class:`RetrievalIndex.search` against raw FAISS
   (``IndexFlatIP.search``) on the same vectors, batched (1,000 queries at once) and one by one.
3. bf16 (``--bf16``): documents/s of the encoder in fp32 and under bf16 autocast in this run, and
   retrieval quality on all of SciFact (5,183 abstracts, 300 test claims): nDCG@10 of both and the
   overlap of their top-10 lists (goals: within 0.005, overlap >= 0.95).

Usage: ``python benchmarks/bench_index.py [--docs 2000] [--search-vectors 100000] [--bf16]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lrat_ray.infra.hardware import summary_line

DATA = Path(os.environ.get("LRAT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def bare_transformers(texts: list[str], batch_size: int = 64, max_length: int = 256, bf16: bool = False) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lrat_ray.models.embedded import embedded_model_path

    tok = AutoTokenizer.from_pretrained(embedded_model_path())
    model = AutoModel.from_pretrained(embedded_model_path()).eval()
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(texts), batch_size):
            batch = tok(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).float().numpy())
    return np.concatenate(out)


def time_search(search, queries: np.ndarray, n: int) -> float:
    """Seconds for ``n`` queries: one batched call for 1000, else one call per query."""
    start = time.perf_counter()
    if n == len(queries):
        search(queries)
    else:
        for q in queries[:n]:
            search(q[None])
    return time.perf_counter() - start


def rate_line(label: str, count: int, seconds: float, unit: str, base: float | None = None) -> float:
    rate = count / seconds
    ratio = f"  x{rate / base:5.2f} vs baseline" if base else ""
    print(f"{label:<48} {seconds:8.2f} s {rate:10.1f} {unit}/s{ratio}", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="SciFact abstracts to encode")
    parser.add_argument("--search-vectors", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also compare fp32 and bf16 encoding (speed, quality)")
    args = parser.parse_args()
    print(summary_line(), flush=True)  # figures depend on it: bf16 native or emulated
    if args.bf16:
        compare_bf16()

    import faiss

    from lrat_ray.core.corpus import document_text
    from lrat_ray.infra.runtime import init_ray
    from lrat_ray.stages.index import IndexConfig, RetrievalIndex, run_index

    lines = (DATA / "scifact-beir" / "corpus.jsonl").read_text().split("\n")[: args.docs]
    texts = [document_text(json.loads(l)) for l in lines if l.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    (work / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    threads = __import__("torch").get_num_threads()
    print(f"encoding {len(texts)} SciFact abstracts (max 256 tokens), torch threads={threads}")

    init_ray(num_cpus=2)
    ids = [json.loads(l)["_id"] for l in lines if l.strip()]
    for precision, bf16 in (("fp32", False), ("bf16 autocast", True)):
        start = time.perf_counter()
        reference = bare_transformers(texts, bf16=bf16)
        base = rate_line(
            f"bare transformers loop, 1 process, {precision}", len(texts), time.perf_counter() - start, "docs"
        )
        start = time.perf_counter()
        output = work / f"index-{'bf16' if bf16 else 'fp32'}"
        run_index(IndexConfig(corpus=[str(work / "corpus.jsonl")], output=str(output), workers=args.workers, bf16=bf16))
        rate_line(
            f"lrat index, {args.workers} actor(s), incl. FAISS, {precision}",
            len(texts),
            time.perf_counter() - start,
            "docs",
            base,
        )
        ours = stored_vectors(output, ids)
        print(f"max |ours - bare| over all vectors, {precision}: {np.abs(ours - reference).max():.2e}")

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.search_vectors, ours.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    noise = 0.1 * rng.normal(size=(1000, ours.shape[1])).astype(np.float32)
    queries = vectors[rng.integers(0, len(vectors), 1000)] + noise
    raw = faiss.IndexFlatIP(vectors.shape[1])
    raw.add(vectors)
    import pyarrow as pa

    ids = [f"{i:08d}" for i in range(len(vectors))]
    ours_index = RetrievalIndex.in_memory(vectors, pa.table({"doc_id": ids, "title": ids, "text": ids}), {})
    print(f"\nsearch, {len(vectors)} x {vectors.shape[1]} vectors, flat inner product, k=10")
    for label, n in (("batch of 1000 queries", 1000), ("one query at a time (200)", 200)):
        base = rate_line(f"raw FAISS, {label}", n, time_search(lambda x: raw.search(x, 10), queries, n), "queries")
        rate_line(
            f"RetrievalIndex.search, {label}",
            n,
            time_search(lambda x: ours_index.search(x, 10), queries, n),
            "queries",
            base,
        )
    return 0


def stored_vectors(index_dir: Path, ids: list[str]) -> np.ndarray:
    """The index's vectors (every shard), in the order of ``ids``."""
    import pyarrow.feather as feather

    by_id = {}
    for entry in json.loads((index_dir / "manifest.json").read_text())["shards"]:
        shard_ids = feather.read_table(index_dir / entry["name"] / "documents.arrow").column("doc_id").to_pylist()
        by_id.update(zip(shard_ids, np.load(index_dir / entry["name"] / "embeddings.npy")))
    return np.stack([by_id[d] for d in ids])


def compare_bf16() -> None:
    from lrat_ray.core.corpus import document_text
    from lrat_ray.core.datasets import load_qrels, load_queries
    from lrat_ray.core.metrics import score_run
    from lrat_ray.models.encoder import Encoder, spec_for
    from lrat_ray.stages.index import build_faiss

    scifact = DATA / "scifact-beir"
    docs = [json.loads(l) for l in (scifact / "corpus.jsonl").read_text().split("\n") if l.strip()]
    ids, texts = [d["_id"] for d in docs], [document_text(d) for d in docs]
    qrels = load_qrels(str(scifact / "qrels" / "test.tsv"))
    queries = load_queries(str(scifact / "queries.jsonl"))
    qids = sorted(q for q in qrels if q in queries)
    spec = spec_for("embedded")
    print(f"fp32 vs bf16 autocast: all {len(texts)} SciFact abstracts (max 256 tokens), {len(qids)} test claims")
    results, base = {}, None
    for name, bf16 in (("fp32", False), ("bf16", True)):
        encoder = Encoder(spec, device="cpu", bf16=bf16)
        start = time.perf_counter()
        vectors = encoder.encode_documents(texts)
        rate = rate_line(f"Encoder.encode_documents, {name}", len(texts), time.perf_counter() - start, "docs", base)
        base = base or rate
        _, rows = build_faiss(vectors).search(encoder.encode_queries([queries[q] for q in qids]), 100)
        run = {q: {ids[r]: 100.0 - rank for rank, r in enumerate(row)} for q, row in zip(qids, rows)}
        results[name] = (score_run(run, qrels, [10, 100])["metrics"], [list(row[:10]) for row in rows])
    (fp32, top32), (bf16, top16) = results["fp32"], results["bf16"]
    overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top32, top16)]))
    print(
        f"nDCG@10 fp32 {fp32['ndcg@10']:.4f}, bf16 {bf16['ndcg@10']:.4f} (difference "
        f"{bf16['ndcg@10'] - fp32['ndcg@10']:+.4f}); Recall@100 {fp32['recall@100']:.4f} vs "
        f"{bf16['recall@100']:.4f}; mean top-10 overlap {overlap:.3f}\n",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
