"""The cheaper CPU dropout (lrat_ray.stages.train.dropout): the rate, the scale, the gradient, the seed,
and an encoder that uses it computes what it computed before wherever dropout is off."""

import pytest
import torch

from lrat_ray.stages.train import dropout


def test_drop_rate_scale_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(1 << 22, requires_grad=True)
    y = dropout.drop(x, 0.1)
    kept = y != 0
    dropped_share = round(0.1 * dropout.LEVELS) / dropout.LEVELS
    assert (~kept).float().mean().item() == pytest.approx(dropped_share, abs=1e-3)
    assert y[kept].unique().tolist() == [pytest.approx(1 / (1 - dropped_share), rel=1e-6)]
    assert y.mean().item() == pytest.approx(1.0, abs=2e-3)  # unbiased
    (y * torch.arange(len(x), dtype=torch.float32)).sum().backward()
    torch.testing.assert_close(x.grad, y.detach() * torch.arange(len(x), dtype=torch.float32))
    assert dropout.drop(x, 0.1, training=False) is x and not dropout.drop(x, 1.0).any()


def test_masks_follow_torch_seed():
    x = torch.ones(4096)
    torch.manual_seed(3)
    first = dropout.drop(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout.drop(x, 0.5), first)
    assert not torch.equal(dropout.drop(x, 0.5), first)


def test_attention_equals_sdpa_where_nothing_is_dropped():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, :, 3:] = False  # the second text is padded after 3 tokens
    module = torch.nn.Module()
    module.is_causal = False
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
    ours, _ = dropout.attention(module, q, k, v, mask, dropout=1e-9)  # rounds to 0 dropped: exact path, no drops
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_installed_encoder_unchanged_in_eval_and_dropping_in_training():
    from transformers import AutoTokenizer

    from lrat_ray.models.embedded import embedded_model_path
    from lrat_ray.models.encoder import load_transformer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    batch = tokenizer(
        ["a short text", "a rather longer text about tides and the moon"], padding=True, return_tensors="pt"
    )
    plain, ours = load_transformer(embedded_model_path()).eval(), load_transformer(embedded_model_path()).eval()
    assert dropout.install(ours) == 19  # embeddings + 3 per layer x 6 layers
    real = batch["attention_mask"].bool()  # padded positions' states are never used (pooling masks them)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(**batch).last_hidden_state[real], plain(**batch).last_hidden_state[real], rtol=0, atol=1e-5
        )
        ours.train()
        torch.manual_seed(0)
        first = ours(**batch).last_hidden_state
        assert not torch.allclose(first, ours(**batch).last_hidden_state)  # dropout is on
