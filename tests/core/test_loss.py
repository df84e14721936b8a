"""The loss against a float64 reference written here, independently, from the paper's Eq. 4."""

import math
import random

import pytest
import torch

from lrat_ray.core.loss import ablation_weights, sample_negatives, weighted_info_nce


def reference_loss(q, d, w, tau, group, mask=None, normalization="mean"):
    """Plain loops in float64: for every query, softmax over every unmasked document."""
    total, n = 0.0, len(q)
    for i in range(n):
        scores = [sum(a * b for a, b in zip(q[i], d[j])) / tau for j in range(len(d)) if mask is None or mask[j]]
        positive = sum(a * b for a, b in zip(q[i], d[i * group])) / tau
        m = max(scores)
        log_z = m + math.log(sum(math.exp(s - m) for s in scores))
        total += w[i] * (log_z - positive)
    return total / (sum(w) if normalization == "weight_sum" else n)


def random_batch(n=5, group=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(n * group, dim, generator=g, dtype=torch.float64), dim=-1)
    w = torch.rand(n, generator=g, dtype=torch.float64) * 2
    return q, d, w


@pytest.mark.parametrize("normalization", ["mean", "weight_sum"])
def test_equals_reference_with_weights_inset_and_inbatch_negatives(normalization):
    q, d, w = random_batch()
    mask = torch.ones(len(d), dtype=torch.bool)
    mask[[3, 7, 18]] = False  # padding slots of pairs 0, 1 and 4
    ours = weighted_info_nce(q, d, w, 0.05, 4, mask, normalization)
    expected = reference_loss(q.tolist(), d.tolist(), w.tolist(), 0.05, 4, mask.tolist(), normalization)
    assert ours.item() == pytest.approx(expected, rel=1e-12)


def test_gradients_agree_with_autograd_on_the_reference():
    q, d, w = random_batch(seed=1)
    q1, d1 = q.clone().requires_grad_(), d.clone().requires_grad_()
    weighted_info_nce(q1, d1, w, 0.1, 4).backward()
    q2, d2 = q.clone().requires_grad_(), d.clone().requires_grad_()
    # the reference as tensor ops written out: logsumexp over all docs minus the positive score
    scores = q2 @ d2.T / 0.1
    per = torch.logsumexp(scores, dim=1) - scores[torch.arange(5), torch.arange(5) * 4]
    ((w * per).sum() / 5).backward()
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d1.grad, d2.grad, rtol=1e-10, atol=1e-12)


def test_all_weights_one_is_plain_info_nce():
    q, d, _ = random_batch(seed=2)
    ones = torch.ones(5, dtype=torch.float64)
    plain = torch.nn.functional.cross_entropy(q @ d.T / 0.02, torch.arange(5) * 4)
    assert weighted_info_nce(q, d, ones, 0.02, 4).item() == pytest.approx(plain.item(), rel=1e-12)
    assert weighted_info_nce(q, d, ones, 0.02, 4, normalization="weight_sum").item() == pytest.approx(plain.item())


def test_several_workers_simulated_by_concatenation_keep_weights():
    """Two workers' gathered batches = one batch of both; weights apply to every pair."""
    qa, da, wa = random_batch(n=3, seed=3)
    qb, db, wb = random_batch(n=2, seed=4)
    q, d, w = torch.cat([qa, qb]), torch.cat([da, db]), torch.cat([wa, wb])
    expected = reference_loss(q.tolist(), d.tolist(), w.tolist(), 0.05, 4)
    assert weighted_info_nce(q, d, w, 0.05, 4).item() == pytest.approx(expected, rel=1e-12)
    doubled = w.clone()
    doubled[3] *= 2  # a weight on the second worker's pair changes the global loss
    assert weighted_info_nce(q, d, doubled, 0.05, 4).item() != pytest.approx(expected, rel=1e-6)


def test_sampling_and_ablations():
    rng = random.Random(0)
    assert sorted(sample_negatives(["a", "b", "c"], 2, rng)) in (["a", "b"], ["a", "c"], ["b", "c"])
    filled = sample_negatives(["a"], 3, rng)
    assert filled[0] == "a" and set(filled) == {"a"} and len(filled) == 3
    assert sample_negatives(["a"], 3, rng, with_replacement=False) == ["a", None, None]
    assert sample_negatives([], 2, rng) == [None, None]
    w, rel = [0.5, 1.5, 1.0], [True, False, None]
    assert ablation_weights(w, rel, "naive") == ([1.0, 1.0, 1.0], [True, True, True])
    assert ablation_weights(w, rel, "filter") == ([1.0, 1.0, 1.0], [True, False, True])
    # Weights are rescaled to mean 1 over the pairs actually trained on.
    assert ablation_weights(w, rel, "reweight-unfiltered") == ([0.5, 1.5, 1.0], [True, True, True])
    weights, keep = ablation_weights(w, rel, "reweight")
    assert keep == [True, False, True] and weights[0] / weights[2] == pytest.approx(0.5)
    assert (weights[0] + weights[2]) / 2 == pytest.approx(1.0)
