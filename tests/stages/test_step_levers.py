"""The training step's speed levers change speed and memory, never the result: selective and full
activation checkpointing give the gradients of no checkpointing (dropout on: the recompute replays
its masks) while keeping less; regional torch.compile gives eager's gradients; prefetched input is
the same input, in order, with its errors raised where they happened."""

import copy
import random
import threading
import time

import pytest
import torch

from lrat_ray.stages.train import TrainConfig, checkpointing
from lrat_ray.stages.train.prefetch import prefetched
from lrat_ray.stages.train.regional_compile import compile_layers, layer_list
from lrat_ray.stages.train.step import step_runner
from tests.models.test_packing import TEXTS, minilm, qwen3

QUERIES = ["vitamin D fractures", "BRCA1 breast cancer", "aspirin colorectal", "statins LDL"]


def _step_grads(model, tokenizer, spec, seed, **options):
    config = TrainConfig(pairs=["-"], output="-", group_size=1, length_groups=1, **options)
    runner = step_runner(model, tokenizer, spec, config, torch.device("cpu"))
    model.zero_grad()
    torch.manual_seed(seed)
    loss = runner.run(QUERIES, TEXTS[:4], [True] * 4, [1.0, 0.5, 2.0, 1.0], lambda value: value.backward())
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _op_counts(model, tokenizer):
    """(matmuls, all ops) dispatched by one forward + backward: what each mode recomputes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    matmuls = {aten.mm.default, aten.addmm.default, aten.bmm.default}

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.matmuls, self.ops = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.matmuls += func in matmuls
            self.ops += 1
            return func(*args, **(kwargs or {}))

    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with Count() as count:
        model(**batch).last_hidden_state.sum().backward()
    return count.matmuls, count.ops


@pytest.mark.parametrize("which", ["minilm", "qwen3"])
def test_checkpointing_modes_give_the_same_gradients_and_keep_less(which):
    spec, tokenizer, base = minilm() if which == "minilm" else qwen3()
    if which == "qwen3":
        base.config.attention_dropout = 0.1  # dropout in play for both families
        for layer in base.layers:
            layer.self_attn.attention_dropout = 0.1
    results, counts = {}, {}
    for mode in checkpointing.MODES:
        model = copy.deepcopy(base).train()
        checkpointing.enable(model, mode)
        results[mode] = _step_grads(model, tokenizer, spec, seed=3)
        counts[mode] = _op_counts(model, tokenizer)
    loss, expected = results["off"]
    assert len(expected) > 10
    for mode in ("full", "selective"):
        got_loss, got = results[mode]
        assert got_loss == pytest.approx(loss, rel=1e-6)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-4, msg=f"{mode}: {name}")
    # other dropout masks change the gradient: the equality above is not vacuous
    _, other = _step_grads(copy.deepcopy(base).train(), tokenizer, spec, seed=4)
    assert any(not torch.allclose(other[n], expected[n], atol=1e-6, rtol=1e-4) for n in expected)
    # full recomputes every matmul of the forward; selective none of them, only elementwise work
    (off_mm, off_ops), (full_mm, full_ops), (sel_mm, sel_ops) = (counts[m] for m in ("off", "full", "selective"))
    assert sel_mm == off_mm < full_mm and off_ops < min(sel_ops, full_ops), counts


def test_checkpointing_mode_parsing_keeps_the_old_boolean():
    assert [checkpointing.parse_mode(v) for v in (True, False, "true", "selective", "FULL")] == [
        "full",
        "off",
        "full",
        "selective",
        "full",
    ]
    config = TrainConfig(pairs=["-"], output="-", gradient_checkpointing=True)
    assert config.gradient_checkpointing == "full"
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        TrainConfig(pairs=["-"], output="-", gradient_checkpointing="sometimes")


@pytest.mark.slow
def test_regional_compile_gives_eager_gradients():
    """Each layer of the Qwen3-shaped decoder compiled by inductor (CPU here: C++ codegen): same
    loss and gradients within float tolerance (fused kernels reorder sums), parameters unchanged in
    name (checkpoints and saving see no difference)."""
    for spec, tokenizer, base in (qwen3(),):
        base.eval()  # no dropout: inductor draws its random numbers differently from eager
        eager_loss, eager = _step_grads(base, tokenizer, spec, seed=0, packing=False)
        model = copy.deepcopy(base)
        names = [n for n, _ in model.named_parameters()]
        assert compile_layers(model) == len(layer_list(model)) >= 2
        assert [n for n, _ in model.named_parameters()] == names  # checkpoints and saving unchanged
        loss, got = _step_grads(model, tokenizer, spec, seed=0, packing=False)
        assert loss == pytest.approx(eager_loss, rel=1e-4)
        for name in eager:
            torch.testing.assert_close(got[name], eager[name], atol=1e-5, rtol=1e-3, msg=name)


def test_prefetched_keeps_order_runs_ahead_and_raises_where_it_happened():
    produced = []

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise KeyError(f"record {i}")
            produced.append(i)
            yield i

    assert list(prefetched(items(20), depth=3)) == list(range(20))
    assert list(prefetched(items(5), depth=0)) == list(range(5))
    produced.clear()
    stream = prefetched(items(100), depth=2)
    assert next(stream) == 0
    deadline = time.time() + 5
    while len(produced) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert len(produced) == 3  # ran ahead by the depth (and one being handed over), no further
    stream.close()  # the producer stops: no thread left behind
    assert not any(t.name == "lrat-prefetch" and t.is_alive() for t in threading.enumerate())
    got = []
    with pytest.raises(KeyError, match="record 4"):
        for item in prefetched(items(10, fail_at=4), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3]


def test_a_step_prepared_in_another_thread_equals_one_prepared_inline():
    spec, tokenizer, base = minilm()
    config = TrainConfig(pairs=["-"], output="-", group_size=1)
    rng = random.Random(0)
    batches = [(rng.sample(QUERIES, 4), rng.sample(TEXTS, 4)) for _ in range(3)]
    losses = {}
    for depth in (0, 2):
        model = copy.deepcopy(base)
        runner = step_runner(model, tokenizer, spec, config, torch.device("cpu"))
        work = (runner.prepare(q, d, [True] * 4, [1.0] * 4) for q, d in batches)
        losses[depth] = [float(runner.run_prepared(p, lambda v: v.backward())) for p in prefetched(work, depth)]
    assert losses[0] == losses[2] and len(set(losses[0])) == 3
