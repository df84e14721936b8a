"""``lrat pairs-from-qrels`` on real TREC DL judgments (msmarco slice): positives are the judged
relevant passages, negatives the base index's top non-relevant ones, texts exactly the indexed ones."""

import json

import pyarrow.parquet as pq

from lrat_ray.cli import main
from lrat_ray.core.corpus import document_text
from lrat_ray.core.datasets import load_qrels, load_queries
from lrat_ray.stages.eval import retrieve
from lrat_ray.stages.train import TrainConfig, load_examples


def test_pairs_from_qrels_on_real_judgments(msmarco_index, msmarco_slice, tmp_path):
    out = tmp_path / "pairs-from-qrels"
    assert (
        main(
            [
                "pairs-from-qrels",
                "--index",
                str(msmarco_index),
                "--queries",
                str(msmarco_slice / "queries.jsonl"),
                "--qrels",
                str(msmarco_slice / "qrels.tsv"),
                "--output",
                str(out),
                "--negative-count",
                "5",
                "--depth",
                "30",
                "--rel-threshold",
                "2",
            ]
        )
        == 0
    )
    rows = pq.read_table(out / "pairs" / "part-0.parquet").to_pylist()
    qrels = load_qrels(str(msmarco_slice / "qrels.tsv"))
    queries = load_queries(str(msmarco_slice / "queries.jsonl"))
    corpus = {
        json.loads(l)["_id"]: json.loads(l)
        for l in (msmarco_slice / "corpus.jsonl").read_text().split("\n")
        if l.strip()
    }
    expected = sorted((q, d) for q, docs in qrels.items() for d, g in docs.items() if g >= 2)
    assert sorted((r["trajectory_id"].removeprefix("qrels:"), r["positive_id"]) for r in rows) == expected
    run = retrieve(str(msmarco_index), queries, 30)
    for row in rows:
        qid = row["trajectory_id"].removeprefix("qrels:")
        ranked = [d for d, _ in sorted(run[qid].items(), key=lambda kv: -kv[1])]
        assert row["negative_ids"] == [d for d in ranked if qrels[qid].get(d, 0) < 2][:5]
        assert row["positive_text"] == document_text(corpus[row["positive_id"]])  # the text the index encoded
        assert row["negative_texts"] == [document_text(corpus[d]) for d in row["negative_ids"]]
        assert (row["weight"], row["relevant"], row["query"]) == (1.0, True, queries[qid])
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"] == len(rows) and report["positives_missing_from_index"] == 0
    examples = load_examples(TrainConfig(pairs=[str(out)], output="x"))  # the stage directory trains as is
    assert len(examples) == len(rows)
