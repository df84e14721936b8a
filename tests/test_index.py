import json
import shutil

import numpy as np
import pytest

from conftest import jsonl_lines

from lrat_ray.corpus import document_text
from lrat_ray.errors import LratError, RecordError
from lrat_ray.index import IndexConfig, RetrievalIndex, build_faiss, run_index
from lrat_ray.model import Encoder, EncoderSpec, spec_for


def test_index_round_trip_equals_brute_force(msmarco_index, msmarco_slice):
    index = RetrievalIndex.load(str(msmarco_index), expect=spec_for("embedded"))
    vectors = np.load(msmarco_index / "embeddings.npy")
    manifest = json.loads((msmarco_index / "manifest.json").read_text())
    assert manifest["count"] == len(index.doc_ids) == vectors.shape[0] and manifest["dimension"] == 384
    assert manifest["encoder"]["pooling"] == "mean" and manifest["corpus"]["records_skipped"] == {}
    queries = [json.loads(l)["text"] for l in jsonl_lines(msmarco_slice / "queries.jsonl")]
    q = Encoder(index.spec).encode_queries(queries)
    hits = index.search(q, 10)
    scores = q @ vectors.T
    for row, ranked in zip(scores, hits):
        expected = np.argsort(-row, kind="stable")[:10]
        assert [d for d, _ in ranked] == [index.doc_ids[i] for i in expected]
        np.testing.assert_allclose([s for _, s in ranked], row[expected], rtol=1e-5)
    # the stored vectors are the encoder's vectors of each document's title + text
    doc = index.document(index.doc_ids[0])
    text = document_text(doc)
    np.testing.assert_allclose(Encoder(index.spec).encode_documents([text])[0], vectors[0], atol=1e-5)


def test_rerun_reuses_embeddings_and_changed_corpus_does_not(msmarco_index, msmarco_slice, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(msmarco_index, out)
    again = run_index(IndexConfig(corpus=[str(msmarco_slice / "corpus.jsonl")], output=str(out)))
    assert again["embeddings_reused"] is True
    smaller = tmp_path / "smaller.jsonl"
    smaller.write_text("\n".join(jsonl_lines(msmarco_slice / "corpus.jsonl")[:20]) + "\n")
    changed = run_index(IndexConfig(corpus=[str(smaller)], output=str(out), workers=1))
    assert changed["embeddings_reused"] is False and changed["count"] == 20


def test_index_refuses_a_different_encoder(msmarco_index):
    with pytest.raises(LratError, match="differs in"):
        RetrievalIndex.load(str(msmarco_index), expect=EncoderSpec(pooling="cls"))


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_exact_neighbours(index_type):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 32))  # clustered, as real embeddings are
    vectors = (centers[rng.integers(0, 40, 4000)] + 0.4 * rng.normal(size=(4000, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    exact = build_faiss(vectors, "flat").search(queries, 10)[1]
    approx = build_faiss(vectors, index_type, nlist=64, nprobe=16).search(queries, 10)[1]
    overlap = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert overlap > 0.9
    np.testing.assert_array_equal(exact[:, 0], np.arange(50))


def test_corpus_lines_without_id_or_text(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "alpha"}\n{"title": "no id", "text": "x"}\n'
                      '{"_id": "c", "text": ""}\n{oops\n')
    from lrat_ray.corpus import iter_documents

    skipped = {}
    assert [d for d, _ in iter_documents([str(corpus)], skipped=skipped)] == ["a"]
    assert skipped == {"missing_field": 2, "invalid_json": 1}
    with pytest.raises(RecordError, match=r"c.jsonl:line 2: field '_id'"):
        list(iter_documents([str(corpus)], strict=True))
