import json
import shutil

import numpy as np
import pytest
from conftest import jsonl_lines

from lrat_ray.core.corpus import document_text
from lrat_ray.infra.errors import LratError, RecordError
from lrat_ray.models.encoder import Encoder, EncoderSpec, spec_for
from lrat_ray.stages.index import IndexConfig, RetrievalIndex, build_faiss, run_index


def _vectors_by_id(index_dir) -> dict:
    """doc id -> stored vector, over every shard of an index directory."""
    import pyarrow.feather as feather

    manifest = json.loads((index_dir / "manifest.json").read_text())
    out = {}
    for entry in manifest["shards"]:
        ids = feather.read_table(index_dir / entry["name"] / "documents.arrow").column("doc_id").to_pylist()
        out.update(zip(ids, np.load(index_dir / entry["name"] / "embeddings.npy")))
    return out


def test_index_round_trip_equals_brute_force(msmarco_index, msmarco_slice):
    index = RetrievalIndex.load(str(msmarco_index), expect=spec_for("embedded"))
    stored = _vectors_by_id(msmarco_index)
    ids = sorted(stored)
    vectors = np.stack([stored[d] for d in ids])
    manifest = json.loads((msmarco_index / "manifest.json").read_text())
    corpus_ids = sorted(json.loads(l)["_id"] for l in jsonl_lines(msmarco_slice / "corpus.jsonl"))
    assert ids == corpus_ids and manifest["count"] == index.count == len(ids) and manifest["dimension"] == 384
    assert manifest["shard_count"] == len(manifest["shards"]) == 2  # one per encoder actor by default
    assert manifest["encoder"]["pooling"] == "mean" and manifest["corpus"]["records_skipped"] == {}
    queries = [json.loads(l)["text"] for l in jsonl_lines(msmarco_slice / "queries.jsonl")]
    q = Encoder(index.spec).encode_queries(queries)
    hits = index.search(q, 10)
    scores = q @ vectors.T
    for row, ranked in zip(scores, hits):
        expected = np.argsort(-row, kind="stable")[:10]
        assert [d for d, _ in ranked] == [ids[i] for i in expected]
        np.testing.assert_allclose([s for _, s in ranked], row[expected], rtol=1e-5)
    # the stored vectors are the encoder's vectors of each document's title + text
    doc = index.document(ids[0])
    assert doc["doc_id"] == ids[0] and index.document("no-such-document") is None
    np.testing.assert_allclose(Encoder(index.spec).encode_documents([document_text(doc)])[0], vectors[0], atol=1e-5)


def test_sharded_index_equals_one_flat_index(ray_session, msmarco_index, msmarco_slice, tmp_path):
    """Three shards, the corpus read in several byte ranges: the same documents and vectors as two
    shards, and search over the shards returns exactly what one flat index of their vectors does."""
    import pyarrow as pa

    corpus = str(msmarco_slice / "corpus.jsonl")
    three = run_index(
        IndexConfig(corpus=[corpus], output=str(tmp_path / "three"), shards=3, workers=2, split_bytes=8 << 10)
    )
    two = json.loads((msmarco_index / "manifest.json").read_text())
    assert len(three["shards"]) == 3 and three["count"] == two["count"]
    assert three["corpus"]["records_skipped"] == two["corpus"]["records_skipped"] == {}
    other, sharded = _vectors_by_id(msmarco_index), _vectors_by_id(tmp_path / "three")
    assert sorted(other) == sorted(sharded)
    # encoded in other batches (other padding), so equal up to float noise
    np.testing.assert_allclose(np.stack([other[d] for d in other]), np.stack([sharded[d] for d in other]), atol=1e-5)

    index = RetrievalIndex.load(str(tmp_path / "three"))
    ids = list(sharded)
    documents = pa.Table.from_pylist([index.document(d) for d in ids])
    flat = RetrievalIndex.in_memory(np.stack([sharded[d] for d in ids]), documents, index.manifest)
    queries = [json.loads(l)["text"] for l in jsonl_lines(msmarco_slice / "queries.jsonl")]
    q = Encoder(index.spec).encode_queries(queries + ["axon terminal", "definition of environment"])
    for k in (1, 10, 200):  # 200 > any shard: every shard's whole list merged
        assert index.search(q, k) == flat.search(q, k)
    two_shards = RetrievalIndex.load(str(msmarco_index))
    for doc_id in ids[::17]:
        assert flat.document(doc_id) == index.document(doc_id) == two_shards.document(doc_id)


def test_rerun_keeps_finished_shards_and_rebuilds_the_rest(msmarco_index, msmarco_slice, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(msmarco_index, out)
    corpus = [str(msmarco_slice / "corpus.jsonl")]
    again = run_index(IndexConfig(corpus=corpus, output=str(out), workers=2))
    assert again["embeddings_reused"] == 2
    # a job killed while building: one shard unfinished, no manifest yet
    (out / "shard-00001" / "shard.json").unlink()
    (out / "manifest.json").unlink()
    resumed = run_index(IndexConfig(corpus=corpus, output=str(out), workers=2))
    assert resumed["embeddings_reused"] == 1 and resumed["count"] == again["count"]
    # new index parameters reuse the stored vectors; a changed corpus does not
    hnsw = run_index(IndexConfig(corpus=corpus, output=str(out), workers=2, index_type="hnsw"))
    assert hnsw["embeddings_reused"] == 2 and hnsw["index"]["type"] == "hnsw"
    smaller = tmp_path / "smaller.jsonl"
    smaller.write_text("\n".join(jsonl_lines(msmarco_slice / "corpus.jsonl")[:20]) + "\n")
    changed = run_index(IndexConfig(corpus=[str(smaller)], output=str(out), workers=1))
    assert changed["embeddings_reused"] == 0 and changed["count"] == 20
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("shard-")) == ["shard-00000"]


def test_duplicate_ids_and_strict_errors_name_the_record(ray_session, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "alpha"}\n{"_id": "b", "text": "beta"}\n{"_id": "a", "text": "again"}\n')
    with pytest.raises(LratError, match="duplicate document ids.*'a'"):
        run_index(IndexConfig(corpus=[str(corpus)], output=str(tmp_path / "dup"), shards=2, workers=1))
    corpus.write_text('{"_id": "a", "text": "alpha"}\n{"title": "no id", "text": "x"}\n')
    with pytest.raises(LratError, match=r"c.jsonl:line 2: field '_id'"):
        run_index(IndexConfig(corpus=[str(corpus)], output=str(tmp_path / "strict"), workers=1, strict=True))
    lenient = run_index(IndexConfig(corpus=[str(corpus)], output=str(tmp_path / "lenient"), workers=1))
    assert lenient["count"] == 1 and lenient["corpus"]["records_skipped"] == {"missing_field": 1}


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
    corpus.write_text(
        '{"_id": "a", "text": "alpha"}\n{"title": "no id", "text": "x"}\n{"_id": "c", "text": ""}\n{oops\n'
    )
    from lrat_ray.core.corpus import iter_documents

    skipped = {}
    assert [d for d, _ in iter_documents([str(corpus)], skipped=skipped)] == ["a"]
    assert skipped == {"missing_field": 2, "invalid_json": 1}
    with pytest.raises(RecordError, match=r"c.jsonl:line 2: field '_id'"):
        list(iter_documents([str(corpus)], strict=True))
