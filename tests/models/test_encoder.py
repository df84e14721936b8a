import numpy as np
import pytest

from lrat_ray.models.encoder import Encoder, EncoderSpec, spec_for

TEXTS = [
    "The Eiffel Tower is in Paris.",
    "Photosynthesis converts light into chemical energy.",
    "A short one.",
    "Graded relevance judgments of the TREC 2019 deep learning track " * 8,
]


@pytest.fixture(scope="module")
def encoder():
    return Encoder(spec_for("embedded", document_max_length=256), batch_size=2)


def test_embedded_spec_comes_from_sentence_transformers_pooling_config():
    spec = spec_for("embedded")
    assert (spec.pooling, spec.normalize) == ("mean", True)


def test_encoder_equals_sentence_transformers(encoder):
    """Same model, same pooling, same normalisation: the embeddings must agree."""
    from sentence_transformers import SentenceTransformer

    from lrat_ray.models.embedded import embedded_model_path

    reference = SentenceTransformer(embedded_model_path(), device="cpu")
    reference.max_seq_length = 256
    ours = encoder.encode_documents(TEXTS)
    theirs = reference.encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_order_and_batching_do_not_change_vectors(encoder):
    one_by_one = np.stack([encoder.encode_documents([t])[0] for t in TEXTS])
    np.testing.assert_allclose(encoder.encode_documents(TEXTS), one_by_one, atol=1e-5)


def test_prefixes_and_pooling_choices(encoder):
    spec = EncoderSpec(query_prefix="Instruct: find passages\nQuery:{}")
    assert spec.format_query("q") == "Instruct: find passages\nQuery:q"
    assert EncoderSpec(query_prefix="query: ").format_query("q") == "query: q"
    with pytest.raises(ValueError):
        EncoderSpec(pooling="max")
    cls = Encoder(EncoderSpec(pooling="cls"), batch_size=4).encode_documents(TEXTS[:2])
    last = Encoder(EncoderSpec(pooling="last"), batch_size=4).encode_documents(TEXTS[:2])
    mean = encoder.encode_documents(TEXTS[:2])
    assert not np.allclose(cls, mean) and not np.allclose(last, mean)
    assert EncoderSpec(pooling="cls").compatible_with(EncoderSpec()) == ["pooling"]


def test_an_untrained_sentence_transformers_model_brings_its_pooling_and_prompts(tmp_path):
    """A Qwen3-Embedding-style directory: the base model's index must use the same query
    instruction that the trained model saves, or before/after comparisons are unequal."""
    import json

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    instruction = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": instruction, "document": ""}})
    )
    spec = spec_for(str(tmp_path))
    assert (spec.pooling, spec.query_prefix, spec.document_prefix) == ("last", instruction, "")
    assert spec.format_query("what is LRAT") == instruction + "what is LRAT"
    assert spec_for(str(tmp_path), query_prefix="Q: ").query_prefix == "Q: "  # an explicit option wins


def test_bf16_autocast_encoding_stays_close_to_fp32(encoder):
    bf16 = Encoder(encoder.spec, device="cpu", batch_size=2, bf16=True)
    ours, low = encoder.encode_documents(TEXTS), bf16.encode_documents(TEXTS)
    assert low.dtype == np.float32 and not np.array_equal(ours, low)  # bf16 really ran
    cosines = (ours * low).sum(axis=1)
    assert cosines.min() > 0.99, cosines
