import json
import multiprocessing

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SHARED_DATA

from lrat_ray.core.pairs import PAIR_SCHEMA
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.runtime import free_port
from lrat_ray.stages.train import (
    GradCacheStepRunner,
    TrainConfig,
    deepspeed_config,
    dropout,
    group_texts,
    load_examples,
    run_train,
    step_runner,
)

SAMPLE = SHARED_DATA / "lrat" / "train_pairs_sample.jsonl"


def test_official_lrat_jsonl_examples():
    examples = load_examples(TrainConfig(pairs=[str(SAMPLE)], output="x"))
    records = [json.loads(l) for l in SAMPLE.read_text().split("\n") if l.strip()]
    assert len(examples) == len(records) == 10
    rates = [r["reweight_rate"] for r in records]  # rescaled to mean 1 over the pairs trained on
    assert [e["weight"] for e in examples] == pytest.approx([w * len(rates) / sum(rates) for w in rates])
    assert examples[0]["positive"] == records[0]["pos"][0] and examples[0]["negatives"] == records[0]["neg"]
    naive = load_examples(TrainConfig(pairs=[str(SAMPLE)], output="x", ablation="naive"))
    assert {e["weight"] for e in naive} == {1.0}


def _pairs_dir(tmp_path, rows):
    full = [{name: row.get(name) for name in PAIR_SCHEMA.names} for row in rows]
    path = tmp_path / "pairs"
    path.mkdir()
    pq.write_table(pa.Table.from_pylist(full, schema=PAIR_SCHEMA), path / "part-0.parquet")
    return path


def test_mined_pairs_use_corpus_texts_and_ablations(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "p", "title": "P", "text": "positive text"}\n{"_id": "n1", "text": "neg one"}\n')
    pairs = _pairs_dir(
        tmp_path,
        [
            {
                "query": "q1",
                "positive_id": "p",
                "negative_ids": ["n1", "n2"],
                "negative_texts": [None, "snippet n2"],
                "weight": 1.5,
                "relevant": True,
                "positive_text": "shown text, much longer than a snippet",
            },
            {"query": "q2", "positive_id": "p", "negative_ids": [], "weight": 0.5, "relevant": False},
        ],
    )
    reweight = load_examples(TrainConfig(pairs=[str(pairs)], output="x", corpus=[str(corpus)]))
    assert reweight == [
        {"query": "q1", "positive": "P\npositive text", "negatives": ["neg one", "snippet n2"], "weight": 1.0}
    ]  # the one pair kept: its weight rescaled to mean 1
    assert len(load_examples(TrainConfig(pairs=[str(pairs)], output="x", ablation="naive", corpus=[str(corpus)]))) == 2
    unfiltered = load_examples(
        TrainConfig(pairs=[str(pairs)], output="x", ablation="reweight-unfiltered", corpus=[str(corpus)])
    )
    assert [e["weight"] for e in unfiltered] == [1.5, 0.5]
    # Without a corpus the positive is cut to the snippets' length: no length shortcut.
    shown = load_examples(TrainConfig(pairs=[str(pairs)], output="x"))
    assert shown[0]["positive"] == "shown text" and shown[0]["negatives"] == ["snippet n2"]


def test_pairs_are_accepted_as_a_stage_directory_its_pairs_folder_or_files(tmp_path):
    pairs = _pairs_dir(
        tmp_path, [{"query": "q", "positive_id": "p", "negative_ids": [], "weight": 1.0, "positive_text": "text"}]
    )
    (tmp_path / "report.json").write_text("{}")  # a stage directory holds more than Parquet
    for spec in (tmp_path, pairs, pairs / "part-0.parquet"):
        assert [e["query"] for e in load_examples(TrainConfig(pairs=[str(spec)], output="x"))] == ["q"]
    with pytest.raises(LratError, match=f"no pairs at {tmp_path / 'nowhere'}"):
        load_examples(TrainConfig(pairs=[str(tmp_path / "nowhere")], output="x"))


def test_bad_training_input(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"query": ["q"]}), bad / "x.parquet")
    with pytest.raises(LratError, match="lack column"):
        load_examples(TrainConfig(pairs=[str(bad)], output="x"))
    negative = _pairs_dir(
        tmp_path, [{"query": "q", "positive_id": "p", "negative_ids": [], "weight": -1.0, "positive_text": "t"}]
    )
    with pytest.raises(LratError, match="non-negative"):
        load_examples(TrainConfig(pairs=[str(negative)], output="x"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LratError, match="no pairs"):
        load_examples(TrainConfig(pairs=[str(empty)], output="x"))
    # Official LRAT JSONL goes through the same weight check, naming the file and the query.
    official = tmp_path / "official.jsonl"
    official.write_text(
        "\n".join(
            json.dumps({"query": q, "pos": ["p"], "neg": ["n"], "reweight_rate": w})
            for q, w in (("fine", 0.5), ("the bad one", -0.25))
        )
        + "\n"
    )
    with pytest.raises(LratError, match=r"official\.jsonl: pair for query 'the bad one' has weight -0\.25"):
        load_examples(TrainConfig(pairs=[str(official)], output="x"))
    with pytest.raises(LratError, match="does not load"):
        run_train(TrainConfig(pairs=[str(SAMPLE)], output=str(tmp_path / "m"), model=str(tmp_path / "nope")))
    assert not (tmp_path / "m").exists()


def _runner(config, fast_dropout=False):
    from transformers import AutoTokenizer

    from lrat_ray.models.embedded import embedded_model_path
    from lrat_ray.models.encoder import load_transformer, spec_for

    torch.manual_seed(0)
    model = load_transformer(embedded_model_path())
    if fast_dropout:
        dropout.install(model)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    spec = spec_for("embedded", document_max_length=64)
    return step_runner(model, tokenizer, spec, config, torch.device("cpu")), model


def test_grad_cache_equals_no_caching():
    import random

    examples = load_examples(TrainConfig(pairs=[str(SAMPLE)], output="x"))[:4]
    batch = {k: [e[k] for e in examples] for k in ("query", "positive", "negatives", "weight")}
    texts = group_texts(batch, 3, random.Random(0), True)
    grads, losses = [], []
    for chunk in (None, 3):
        runner, model = _runner(TrainConfig(pairs=["x"], output="x", group_size=3, grad_cache_chunk=chunk))
        assert isinstance(runner, GradCacheStepRunner) == bool(chunk)  # the step the config chose
        losses.append(runner.run(*texts, backward=lambda v: v.backward()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("fast_dropout", [False, True])
def test_grad_cache_replays_dropout_so_it_equals_the_big_batch_gradient(fast_dropout):
    """With dropout on (training mode; torch's or the cheaper CPU one), GradCache's second pass must
    see the random masks of the first: then its gradient equals one differentiable pass over the
    same chunks."""
    import random

    from lrat_ray.core.loss import distributed_loss

    examples = load_examples(TrainConfig(pairs=[str(SAMPLE)], output="x"))[:4]
    batch = {k: [e[k] for e in examples] for k in ("query", "positive", "negatives", "weight")}
    queries, documents, mask, weights = group_texts(batch, 3, random.Random(0), True)
    config = TrainConfig(pairs=["x"], output="x", group_size=3, grad_cache_chunk=3)

    def cached(seed):
        runner, model = _runner(config, fast_dropout)
        model.train()
        torch.manual_seed(seed)
        runner.run(queries, documents, mask, weights, backward=lambda v: v.backward())
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    runner, model = _runner(config, fast_dropout)
    model.train()
    torch.manual_seed(7)
    prepared = runner.prepare(queries, documents, mask, weights)
    assert len(prepared.units) > 2  # really chunked
    reps = [runner._encode([unit])[0].float() for unit in prepared.units]
    value, _ = distributed_loss(
        torch.cat(reps[: prepared.query_units]),
        torch.cat(reps[prepared.query_units :]),
        torch.tensor(weights),
        torch.tensor(mask),
        config.temperature,
        3,
    )
    value.backward()
    direct = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    replayed = cached(7)
    for name in direct:
        torch.testing.assert_close(replayed[name], direct[name], rtol=1e-3, atol=1e-6)
    other = cached(8)  # other dropout masks: the comparison above is not vacuous
    assert any(not torch.allclose(other[n], direct[n], rtol=1e-3, atol=1e-6) for n in direct)


def _gathered_worker(rank, world, port, out):
    import torch.distributed as dist

    from lrat_ray.core.loss import distributed_loss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    w_proj = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    xq, xd, weights = _linear_batch()
    half = slice(rank * 3, rank * 3 + 3)
    q = torch.nn.functional.normalize(xq[half] @ w_proj, dim=-1)
    d = torch.nn.functional.normalize(xd[rank * 6 : rank * 6 + 6] @ w_proj, dim=-1)
    value, loss = distributed_loss(q, d, weights[half], torch.ones(6, dtype=torch.bool), 0.1, 2)
    value.backward()
    dist.all_reduce(w_proj.grad)
    w_proj.grad /= world  # what DDP does with gradients
    out.put((rank, loss.item(), w_proj.grad.numpy()))
    dist.destroy_process_group()


def _linear_batch():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(6, 6, generator=g, dtype=torch.float64),
        torch.randn(12, 6, generator=g, dtype=torch.float64),
        torch.rand(6, generator=g, dtype=torch.float64) + 0.5,
    )


def test_two_worker_gathered_loss_and_gradient_equal_one_process():

    from lrat_ray.core.loss import weighted_info_nce

    torch.manual_seed(0)
    w_proj = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    xq, xd, weights = _linear_batch()
    q = torch.nn.functional.normalize(xq @ w_proj, dim=-1)
    d = torch.nn.functional.normalize(xd @ w_proj, dim=-1)
    single = weighted_info_nce(q, d, weights, 0.1, 2)
    single.backward()
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_gathered_worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for _, loss, grad in results:
        assert loss == pytest.approx(single.item(), rel=1e-12)
        np.testing.assert_allclose(grad, w_proj.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_deepspeed_config_plumbing(tmp_path):
    config = TrainConfig(pairs=["x"], output="x", per_device_batch=8, grad_accumulation=2, workers=4, bf16=True)
    ds = deepspeed_config(config)
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_batch_size"] == 64
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["bf16"] == {"enabled": True}
    from lrat_ray.stages.train import CONFIG_DIR

    for stage in (1, 2, 3):
        ds = deepspeed_config(
            TrainConfig(pairs=["x"], output="x", deepspeed_config=str(CONFIG_DIR / f"deepspeed_zero{stage}.json"))
        )
        assert ds["zero_optimization"]["stage"] == stage
    with pytest.raises(LratError, match="DeepSpeed config"):
        deepspeed_config(TrainConfig(pairs=["x"], output="x", deepspeed_config=str(tmp_path / "none.json")))


def test_deepspeed_zero2_trains_on_cpu_workers(ray_session, tmp_path):
    """DeepSpeed ZeRO-2 inside the TorchTrainer with 2 CPU workers (gloo), torch's AdamW, packed
    encoding through PairForward's one forward (the padded PairForward runs in the multi-node test)."""
    pytest.importorskip("deepspeed")
    from lrat_ray.models.encoder import Encoder, spec_for

    out = tmp_path / "ds-model"
    summary = run_train(
        TrainConfig(
            pairs=[str(SAMPLE)],
            output=str(out),
            workers=2,
            per_device_batch=2,
            group_size=2,
            backend="deepspeed",
            document_max_length=64,
            max_steps=2,
            packing=True,
        )
    )
    assert summary["steps"] == 2 and np.isfinite(summary["final_metrics"]["loss"])
    assert summary["final_metrics"]["packing"] is True and summary["precision"] == "fp32"
    vectors = Encoder(spec_for(str(out))).encode_queries(["who founded the club"])
    assert vectors.shape == (1, 384) and np.isfinite(vectors).all()


def test_every_epoch_after_the_first_is_reshuffled_and_the_order_is_reproducible(ray_session):
    import ray

    from lrat_ray.stages.train.worker import epoch_batches

    shard = ray.data.from_items([{"query": f"q{i}"} for i in range(64)]).iterator()
    config = TrainConfig(pairs=["x"], output="x", per_device_batch=8, seed=3)

    def order(epoch, rank=0):
        return [q for batch in epoch_batches(shard, config, epoch, rank) for q in batch["query"]]

    first, second, third = order(0), order(1), order(2)
    assert first == [f"q{i}" for i in range(64)]  # as the driver shuffled it
    assert sorted(second) == sorted(first) and second != first and third != second
    assert order(1) == second  # a restarted worker skips exactly the batches it had done
    assert order(1, rank=1) != second


def test_infeasible_worker_request_fails_fast(ray_session, tmp_path):
    with pytest.raises(LratError, match="training needs 3 CPU"):
        run_train(TrainConfig(pairs=[str(SAMPLE)], output=str(tmp_path / "m"), workers=3))


def test_lora_trains_only_adapters_and_merges_on_save(tmp_path):
    pytest.importorskip("peft")
    import random

    from transformers import AutoTokenizer

    from lrat_ray.models.embedded import embedded_model_path
    from lrat_ray.models.encoder import Encoder, load_transformer, save_encoder, spec_for
    from lrat_ray.stages.train.worker import _with_lora

    model = _with_lora(load_transformer(embedded_model_path()), rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    spec = spec_for("embedded", document_max_length=64)
    config = TrainConfig(pairs=["x"], output="x", group_size=2)
    runner = step_runner(model, tokenizer, spec, config, torch.device("cpu"))
    examples = load_examples(TrainConfig(pairs=[str(SAMPLE)], output="x"))[:4]
    batch = {k: [e[k] for e in examples] for k in ("query", "positive", "negatives", "weight")}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    runner.run(*group_texts(batch, 2, random.Random(0), True), backward=lambda v: v.backward())
    optimizer.step()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    save_encoder(model.merge_and_unload(), tokenizer, spec, str(tmp_path / "merged"))
    merged = Encoder(spec_for(str(tmp_path / "merged"))).encode_queries(["a query"])
    base = Encoder(spec_for("embedded")).encode_queries(["a query"])
    assert merged.shape == base.shape and not np.allclose(merged, base, atol=1e-4)


def test_length_groups_split_only_where_padding_costs_more_than_a_call():
    from lrat_ray.stages.train.step import GROUP_COST_TOKENS, length_groups

    assert length_groups([20] * 32, 4) == [list(range(32))]  # nothing to save: the batch as it is
    mixed = [128 if i % 2 else 10 for i in range(32)]
    groups = length_groups(mixed, 4)
    assert groups == [list(range(0, 32, 2)), list(range(1, 32, 2))]  # short ones apart from long ones
    assert length_groups(mixed, 1) == [list(range(32))]
    assert length_groups([10, 11], 4) == [[0, 1]]  # saving 1 token is not worth a call
    assert GROUP_COST_TOKENS > 1 and length_groups([], 4) == [[]]


def test_grouped_and_paired_encoding_equal_one_padded_batch():
    """Encoding each side in length groups (plain module: a call per group; the DDP/DeepSpeed
    ``PairForward``: one forward for all) gives the vectors and gradient of one batch padded to
    its longest, in the input order."""
    from transformers import AutoTokenizer

    from lrat_ray.models.embedded import embedded_model_path
    from lrat_ray.models.encoder import load_transformer, spec_for
    from lrat_ray.stages.train.step import length_groups, pair_forward, step_runner, unwrap

    path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    spec = spec_for("embedded", query_max_length=32, document_max_length=96)
    queries = ["tides", "who wrote the iliad", "why is the sky blue on a clear day but red at sunset, and why"] * 4
    documents = [
        "Tides are caused by the gravitational pull of the moon and the sun on the oceans. " * 4,
        "The Iliad is an ancient Greek epic poem attributed to Homer.",
        "Rayleigh scattering.",
    ] * 4
    lengths = [len(x) for x in tokenizer(documents, truncation=True, max_length=96)["input_ids"]]
    assert len(length_groups(lengths, 4)) > 1  # the case under test: documents are really grouped
    results = []
    for groups, wrap in ((1, False), (4, False), (4, True)):
        torch.manual_seed(0)
        model = load_transformer(path).eval()  # no dropout: the paths must agree exactly
        config = TrainConfig(pairs=["-"], output="-", group_size=1, length_groups=groups)
        runner = step_runner(pair_forward(model) if wrap else model, tokenizer, spec, config, torch.device("cpu"))
        assert runner.paired == wrap and unwrap(runner.model) is model
        q, d = runner._encode(runner.prepare(queries, documents, [True] * 12, [1.0] * 12).units)
        (q @ d.T * torch.arange(1.0, 13.0)).sum().backward()
        results.append((q.detach(), d.detach(), model.embeddings.word_embeddings.weight.grad.clone()))
    (q1, d1, g1) = results[0]
    for q2, d2, g2 in results[1:]:
        torch.testing.assert_close(q1, q2, rtol=0, atol=1e-6)
        torch.testing.assert_close(d1, d2, rtol=0, atol=1e-6)
        # Sums in another order: elementwise noise near zero, so compare the gradient as a whole.
        assert ((g1 - g2).norm() / g1.norm()).item() < 1e-5


def test_streamed_examples_equal_the_examples_built_in_one_process(ray_session, tmp_path, real_trajectory_files):
    """``lrat train`` streams its examples from the pairs' Parquet files (Ray Data read, ablation
    filter and weights, corpus join, shuffle) instead of building them in the driver: for each
    ablation, with or without a corpus, the streamed examples are exactly the in-process ones."""
    from lrat_ray.stages.mine import MineConfig, run_mine
    from lrat_ray.stages.train.data import example_dataset

    mined = tmp_path / "mined"
    run_mine(MineConfig(input=[str(f) for f in real_trajectory_files], output=str(mined), workers=1, tokenizer="chars"))
    table = pq.read_table(mined / "pairs")
    judged = _pairs_dir(tmp_path, [{**row, "relevant": i % 3 != 0} for i, row in enumerate(table.to_pylist())])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"_id": row["positive_id"], "title": "T", "text": f"corpus text {i}"}) + "\n"
            for i, row in enumerate(table.to_pylist()[::2])
        )
    )

    def key(example):
        return example["query"], example["positive"], tuple(example["negatives"])

    with_corpus = [str(corpus)]
    for ablation, texts in (
        ("naive", []),
        ("filter", with_corpus),
        ("reweight-unfiltered", []),
        ("reweight", with_corpus),
    ):
        config = TrainConfig(pairs=[str(judged)], output="x", ablation=ablation, corpus=texts)
        dataset, count = example_dataset(config)
        streamed = sorted(({**row, "negatives": list(row["negatives"])} for row in dataset.take_all()), key=key)
        expected = sorted(load_examples(config), key=key)
        assert count == len(expected) == len(streamed) > 0
        assert [key(e) for e in streamed] == [key(e) for e in expected], (ablation, texts)
        np.testing.assert_allclose([e["weight"] for e in streamed], [e["weight"] for e in expected], rtol=1e-12)
    assert len(expected) < len(table)  # the filter dropped the pairs marked irrelevant
