"""Packed (padding-free) encoding equals padded encoding, in vectors and gradients: the embedded
MiniLM (bidirectional; mean and CLS pooling) and a tiny Qwen3-shaped decoder built from a config
(random weights, SmolLM2's tokenizer; causal, grouped-query attention, last-token pooling on an
appended EOS) under right and left padding; the training step with and without GradCache; the
index's vectors. On CPU the packed attention is the exact per-text fallback (``lrat_ray.models.packing``)."""

import copy
import json

import numpy as np
import pytest
import torch

from lrat_ray.models.embedded import resolve_model
from lrat_ray.models.encoder import EncoderSpec, embed, load_tokenizer, load_transformer, spec_for
from lrat_ray.models.packing import embed_packed, install, pack, tokenize_packed

TEXTS = [
    "Vitamin D deficiency is associated with a higher risk of fractures in older adults.",
    "BRCA1",
    "Aspirin reduces the risk of colorectal cancer after long-term use, according to several cohort "
    "studies that followed tens of thousands of participants for more than a decade.",
    "Statins lower LDL cholesterol.",
    "The incidence of tuberculosis is higher among people living with HIV than in the general population.",
]


def minilm(pooling="mean"):
    spec = spec_for("embedded", pooling=pooling, document_max_length=48)
    return spec, load_tokenizer(resolve_model("embedded"), spec), load_transformer(resolve_model("embedded")).eval()


def qwen3():
    from transformers import Qwen3Config, Qwen3Model

    from lrat_ray.models.tiny_llm import tiny_model_path

    spec = EncoderSpec(model="qwen3-test", pooling="last", document_max_length=48)
    tokenizer = load_tokenizer(tiny_model_path(prepare=False), spec)  # appends EOS for last-token pooling
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
    )
    model = Qwen3Model(config).eval()
    model.set_attn_implementation("sdpa")
    return spec, tokenizer, model


def _padded(model, tokenizer, spec, side):
    tokenizer.padding_side = side
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=spec.document_max_length, return_tensors="pt")
    assert batch["attention_mask"].float().mean() < 0.7  # padding really is in play
    return embed(model, batch, spec, side)


def _packed(model, tokenizer, spec):
    row = tokenize_packed(tokenizer, TEXTS, spec.document_max_length)
    assert row.input_ids.shape[1] == row.cu_seqlens[-1] and row.position_ids[0, row.cu_seqlens[1]] == 0
    return embed_packed(model, row, spec)


def _grads(model, vectors, probe):
    model.zero_grad()
    (vectors * probe).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "which,side", [("minilm-mean", "right"), ("minilm-cls", "right"), ("qwen3-last", "right"), ("qwen3-last", "left")]
)
def test_packed_equals_padded_vectors_and_gradients(which, side):
    spec, tokenizer, model = (
        minilm("cls" if which == "minilm-cls" else "mean") if which.startswith("minilm") else qwen3()
    )
    packed_model = copy.deepcopy(model)
    install(packed_model)
    padded = _padded(model, tokenizer, spec, side)
    packed = _packed(packed_model, tokenizer, spec)
    torch.testing.assert_close(packed, padded, atol=2e-5, rtol=1e-4)
    probe = torch.randn(padded.shape, generator=torch.Generator().manual_seed(1))
    expected, got = _grads(model, padded, probe), _grads(packed_model, packed, probe)
    assert expected.keys() == got.keys() and len(expected) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-3, msg=name)


def test_pack_rejects_empty_texts_and_counts_positions():
    row = pack([[5, 6, 7], [8], [9, 10]])
    assert row.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]] and row.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert row.cu_seqlens.tolist() == [0, 3, 4, 6] and row.max_length == 3
    with pytest.raises(ValueError, match="at least one token"):
        pack([[1], []])


@pytest.mark.parametrize("variant", ["plain", "grad-cache", "pair-forward", "lora", "decoder"])
def test_training_step_packed_equals_padded(variant):
    """Same loss and gradients from the step, packed or padded (length groups): plain, GradCache,
    behind PairForward (DDP's and DeepSpeed's one forward per step), with LoRA adapters, and for
    the causal decoder."""
    from lrat_ray.stages.train import TrainConfig
    from lrat_ray.stages.train.step import pair_forward, step_runner
    from lrat_ray.stages.train.worker import _with_lora

    spec, tokenizer, model = qwen3() if variant == "decoder" else minilm()
    if variant == "lora":
        model = _with_lora(model, 4)
    queries = ["vitamin d fractures", "aspirin colorectal cancer", "statins ldl"]
    documents = [TEXTS[0], TEXTS[3], TEXTS[2], TEXTS[1], TEXTS[3], TEXTS[4]]
    results = {}
    for packing in (False, True):
        tower = copy.deepcopy(model)  # eval mode: no dropout, so both paths see the same network
        config = TrainConfig(
            pairs=["-"],
            output="-",
            group_size=2,
            packing=packing,
            length_groups=2,
            grad_cache_chunk=3 if variant == "grad-cache" else None,
            temperature=0.05,
            bf16=False,
        )
        if packing:
            install(tower)
        runner = step_runner(
            pair_forward(tower) if variant == "pair-forward" else tower, tokenizer, spec, config, torch.device("cpu")
        )
        assert runner.paired is (variant == "pair-forward")
        loss = runner.run(queries, documents, [True] * 6, [1.0, 0.5, 2.0], lambda value: value.backward())
        results[packing] = loss, {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}
    (padded_loss, padded), (packed_loss, packed) = results[False], results[True]
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    assert padded.keys() == packed.keys() and padded
    if variant == "lora":
        assert all("lora_" in name for name in padded)  # only the adapters train
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], atol=1e-5, rtol=1e-3, msg=name)


def test_encoder_vectors_packed_equal_padded():
    from lrat_ray.models.encoder import Encoder

    spec = spec_for("embedded", document_max_length=64)
    padded = Encoder(spec, device="cpu", batch_size=2, packed=False).encode_documents(TEXTS)
    packed = Encoder(spec, device="cpu", batch_size=2, packed=True)
    assert packed.packed and packed.model.config._attn_implementation == "lrat_packed"
    np.testing.assert_allclose(packed.encode_documents(TEXTS), padded, atol=2e-6)


def test_index_vectors_with_packing_equal_without(ray_session, msmarco_slice, tmp_path):
    from lrat_ray.stages.index import IndexConfig, run_index

    corpus = tmp_path / "corpus.jsonl"  # 60 passages of real lengths: the fallback encodes them one by one
    corpus.write_text("\n".join((msmarco_slice / "corpus.jsonl").read_text().splitlines()[:60]) + "\n")
    stored = {}
    for packing in (False, True):
        out = tmp_path / f"packing-{packing}"
        manifest = run_index(
            IndexConfig(corpus=[str(corpus)], output=str(out), workers=1, packing=packing, document_max_length=64)
        )
        stored[packing] = np.load(out / manifest["shards"][0]["name"] / "embeddings.npy")
        assert json.loads((out / "manifest.json").read_text())["count"] == len(stored[packing])
    np.testing.assert_allclose(stored[True], stored[False], atol=2e-6)
