"""The paper's decoder-embedder recipe end to end on a real decoder: SmolLM2-135M-Instruct (llama
architecture, prepared by ``lrat prepare-llm``) stands in for Qwen3-Embedding. Last-token pooling,
a query instruction, EOS appended (SmolLM2's tokenizer does not add one), left and right padding:
a few training steps, save, reload in sentence-transformers with equal vectors, index, search."""

import numpy as np
import pytest
import torch

from lrat_ray.models.encoder import Encoder, load_tokenizer, spec_for
from lrat_ray.stages.index import build_faiss
from lrat_ray.stages.train import TrainConfig, fit_in_process

INSTRUCTION = "Instruct: Given a claim, retrieve abstracts that support or refute it\nQuery:"
DOCS = [
    "Aspirin lowers the risk of a second heart attack in adults with coronary disease.",
    "Vitamin D supplements did not prevent fractures in older women.",
    "Regular running improves cardiovascular fitness in sedentary adults.",
    "Smoking during pregnancy raises the risk of low birth weight.",
]
QUERIES = [
    "aspirin prevents heart attacks",
    "vitamin D and bone fractures",
    "exercise and the heart",
    "smoking harms the unborn child",
]


@pytest.fixture(scope="module")
def smollm2():
    from lrat_ray.models.tiny_llm import tiny_model_path

    return tiny_model_path()


def test_eos_is_appended_for_last_token_pooling(smollm2):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(smollm2)
    assert plain("a claim")["input_ids"][-1] != plain.eos_token_id  # the raw tokenizer adds none
    tokenizer = load_tokenizer(smollm2, spec_for(smollm2, pooling="last"))
    ids = tokenizer("a claim")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and ids[:-1] == plain("a claim")["input_ids"]
    truncated = tokenizer("word " * 100, truncation=True, max_length=16)["input_ids"]
    assert len(truncated) == 16 and truncated[-1] == tokenizer.eos_token_id
    assert load_tokenizer(smollm2, spec_for(smollm2, pooling="mean"))("a claim")["input_ids"][-1] != plain.eos_token_id


@pytest.fixture(scope="module")
def trained(smollm2, tmp_path_factory):
    """A few training steps of the recipe, saved like every lrat model."""
    from lrat_ray.models.encoder import save_encoder

    config = TrainConfig(
        pairs=[],
        output="",
        model=smollm2,
        workers=1,
        per_device_batch=4,
        group_size=2,
        learning_rate=1e-4,
        pooling="last",
        query_prefix=INSTRUCTION,
        query_max_length=32,
        document_max_length=48,
        seed=0,
    )
    examples = [
        {"query": q, "positive": d, "negatives": [DOCS[(i + 1) % 4]], "weight": 1.0}
        for i, (q, d) in enumerate(zip(QUERIES, DOCS))
    ]
    fitted = fit_in_process(config, examples, steps=3)
    assert all(np.isfinite(fitted["losses"])) and len(fitted["losses"]) == 3
    out = tmp_path_factory.mktemp("decoder") / "model"
    save_encoder(fitted["model"], fitted["tokenizer"], fitted["spec"], str(out))
    return fitted, out


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_decoder_embedder_reloads_in_sentence_transformers_with_equal_vectors_and_searches(
    trained, smollm2, padding_side
):
    from sentence_transformers import SentenceTransformer

    fitted, out = trained
    ours = Encoder(spec_for(str(out)), device="cpu", batch_size=3)  # odd batches: padding in play
    assert (ours.spec.pooling, ours.spec.query_prefix) == ("last", INSTRUCTION)
    theirs = SentenceTransformer(str(out), device="cpu", model_kwargs={"dtype": torch.float32})
    assert theirs.prompts["query"] == INSTRUCTION
    ours.tokenizer.padding_side = theirs.tokenizer.padding_side = padding_side
    assert theirs.tokenizer("a claim")["input_ids"][-1] == theirs.tokenizer.eos_token_id  # saved with the model
    queries = ours.encode_queries(QUERIES)
    np.testing.assert_allclose(queries, theirs.encode(QUERIES, prompt_name="query", batch_size=3), atol=2e-4)
    np.testing.assert_allclose(ours.encode_documents(DOCS), theirs.encode(DOCS, batch_size=3), atol=2e-4)
    one_by_one = np.stack([ours.encode_queries([q])[0] for q in QUERIES])  # no padding at all
    np.testing.assert_allclose(queries, one_by_one, atol=2e-4)
    assert not torch.equal(fitted["model"].embed_tokens.weight, _base_embeddings(smollm2))  # training moved it
    index = build_faiss(ours.encode_documents(DOCS))
    _, rows = index.search(queries, 1)
    assert sum(int(r[0]) == i for i, r in enumerate(rows)) >= 3


def _base_embeddings(path):
    from lrat_ray.models.encoder import load_transformer

    return load_transformer(path).embed_tokens.weight
