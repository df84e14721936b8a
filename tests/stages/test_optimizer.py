"""bf16 weights with fp32 masters: one update equals fp32 AdamW on the same gradients within bf16
rounding, updates smaller than bf16's resolution still accumulate, and the state round-trips."""

import copy

import torch

from lrat_ray.stages.train import TrainConfig
from lrat_ray.stages.train.optimizer import MasterWeights, build_optimizer, optimizer_step, to_bf16_weights


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))


def _grads(model, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)


def test_master_update_equals_fp32_adamw_within_bf16_rounding():
    config = TrainConfig(pairs=["-"], output="-", learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.01)
    reference, low = _model(), _model()
    to_bf16_weights(low)
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    ref_params, ref_opt, ref_sched = build_optimizer(reference, config, 10)
    params, optimizer, scheduler = build_optimizer(low, config, 10, bf16_weights=True)
    assert isinstance(optimizer, MasterWeights) and all(p.dtype == torch.float32 for p in params)
    for step in range(3):
        _grads(reference, step)
        for p, r in zip(low.parameters(), reference.parameters()):
            p.grad = r.grad.to(torch.bfloat16)  # the same gradients, as a bf16 model produces them
        optimizer_step(ref_params, ref_opt, ref_sched)
        optimizer_step(params, optimizer, scheduler)
    for p, r, m in zip(low.parameters(), reference.parameters(), params):
        torch.testing.assert_close(m, r, atol=2e-3, rtol=1e-2)  # masters follow fp32 (bf16 gradients only)
        torch.testing.assert_close(p.float(), r, atol=2e-2, rtol=1e-2)  # the model: masters rounded to bf16
        assert torch.equal(p, m.to(torch.bfloat16))


def test_updates_below_bf16_resolution_accumulate_in_the_masters():
    config = TrainConfig(pairs=["-"], output="-", learning_rate=1e-4, warmup_ratio=0.0, weight_decay=0.0)
    model = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    plain = copy.deepcopy(model).to(torch.bfloat16)
    to_bf16_weights(model)
    params, optimizer, scheduler = build_optimizer(model, config, 100, bf16_weights=True)
    naive = torch.optim.AdamW(plain.parameters(), lr=1e-4, weight_decay=0.0)
    for _ in range(100):
        model.weight.grad = torch.ones_like(model.weight)
        plain.weight.grad = torch.ones_like(plain.weight)
        optimizer_step(params, optimizer, scheduler, max_norm=1e9)
        naive.step()
    assert torch.all(plain.weight == 1.0)  # each 1e-4 step rounds away in bf16 alone
    assert torch.all(params[0] < 0.995)  # the masters moved by ~100 x 1e-4 (linear decay: a bit less)
    assert torch.all(model.weight < 1.0)


def test_lora_adapters_stay_fp32_over_a_bf16_base():
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential(torch.nn.Linear(8, 8))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["0"]))
    to_bf16_weights(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    _, optimizer, _ = build_optimizer(model, TrainConfig(pairs=["-"], output="-"), 10, bf16_weights=True)
    assert not isinstance(optimizer, MasterWeights)  # fp32 adapters need no masters


def test_state_round_trips_for_resume():
    config = TrainConfig(pairs=["-"], output="-", learning_rate=1e-2, warmup_ratio=0.0)
    model = _model()
    to_bf16_weights(model)
    params, optimizer, scheduler = build_optimizer(model, config, 10, bf16_weights=True)
    _grads(model, 0)
    optimizer_step(params, optimizer, scheduler)
    state = copy.deepcopy(optimizer.state_dict())
    other = _model()
    to_bf16_weights(other)
    _, restored, _ = build_optimizer(other, config, 10, bf16_weights=True)
    restored.load_state_dict(state)
    for a, b in zip(restored.params, params):
        assert torch.equal(a, b)
    for a, b in zip(other.parameters(), model.parameters()):
        assert torch.equal(a, b)
