"""Batch mixup, section 5.4."""
import pytest
import torch

from timm_bot.loss import MixedTarget
from timm_bot.mixup import BatchMixup


@pytest.mark.parametrize('alpha', [0.2, 1.0])
def test_lam_statistics_match_beta(alpha):
    """lam ~ Beta(alpha, alpha): mean 1/2, variance 1 / (4 (2 alpha + 1)) (0.179 for the paper's alpha = 0.2)."""
    torch.manual_seed(0)
    mixup = BatchMixup(alpha)
    lams = torch.tensor([mixup.sample_lam() for _ in range(20000)], dtype=torch.float64)
    assert lams.min() >= 0 and lams.max() <= 1
    assert abs(lams.mean().item() - 0.5) < 0.015
    assert abs(lams.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_call_draws_lam_from_beta():
    torch.manual_seed(1)
    mixup = BatchMixup(0.2)
    x, y = torch.zeros(2, 1), torch.tensor([0, 1])
    lams = torch.tensor([mixup(x, y)[1].lam for _ in range(4000)])
    assert abs(lams.var().item() - 1 / (4 * 1.4)) < 0.02  # Beta(0.2, 0.2), not e.g. Beta(1, 1) (1/12)


def test_mix_formula_with_random_perm():
    torch.manual_seed(2)
    x = torch.randn(8, 3, 4, 4)
    x_before = x.clone()
    target = torch.arange(8)
    x_mixed, mixed = BatchMixup(0.2)(x, target)
    assert isinstance(mixed, MixedTarget)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)  # caller's x untouched
    perm = mixed.target_b  # target = arange, so target[perm] is perm itself
    assert sorted(perm.tolist()) == list(range(8))
    torch.testing.assert_close(mixed.target_a, target)
    lam = mixed.lam
    assert isinstance(lam, float) and 0 <= lam <= 1
    torch.testing.assert_close(x_mixed, lam * x + (1 - lam) * x[perm])


def test_given_perm_is_exact():
    torch.manual_seed(3)
    x = torch.randn(4, 2)
    target = torch.tensor([3, 1, 4, 1])
    perm = torch.tensor([2, 0, 3, 1])
    x_mixed, mixed = BatchMixup(0.4)(x, target, perm=perm)
    assert mixed.target_b.tolist() == [4, 3, 1, 1]
    torch.testing.assert_close(x_mixed, mixed.lam * x + (1 - mixed.lam) * x[perm])


def test_reproducible_from_torch_rng_state():
    """A checkpoint's torch.get_rng_state() reproduces lam and the pairing exactly."""
    mixup = BatchMixup(0.2)
    x, target = torch.randn(16, 3), torch.arange(16)
    torch.manual_seed(4)
    state = torch.get_rng_state()
    x1, m1 = mixup(x, target)
    x_other, m_other = mixup(x, target)
    torch.set_rng_state(state)
    x2, m2 = mixup(x, target)
    assert m1.lam == m2.lam and torch.equal(m1.target_b, m2.target_b) and torch.equal(x1, x2)
    assert m_other.lam != m1.lam  # the state advances


@pytest.mark.parametrize('alpha', [0.0, -1.0, float('nan')])
def test_invalid_alpha(alpha):
    with pytest.raises(ValueError, match='alpha'):
        BatchMixup(alpha)


def test_bad_perm_shape():
    with pytest.raises(ValueError, match='perm'):
        BatchMixup()(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), perm=torch.arange(3))
